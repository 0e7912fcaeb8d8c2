"""A running service follows a model registry: promotions are swapped in, interleaving candidates interleaved.

:class:`RegistryFollower` polls the registry index (a ``stat`` per poll; the index is read only when
a write renamed a new one into place) and brings the :class:`~fusionrank.serving.service.SearchService`
in line with it:

- the promoted version is swapped in with :meth:`SearchService.swap_model` (the model is loaded
  fully first, then installed in one assignment: in-flight searches finish on the old model and
  no request fails);
- the versions in state ``interleaving`` are interleaved with the promoted one on
  ``policy.interleave_share`` of the searches (:meth:`SearchService.set_interleaving`);
- with ``policy.mode = "auto"``, every ``policy.check_seconds`` the promotion gate runs on each
  interleaving version over the service's event store (:func:`fusionrank.models.gate.decide`): a
  version that passes is promoted (and served at the next poll), one refused is retired.

A version that cannot be loaded or does not fit the index is reported and skipped; the service
keeps serving what it served.
"""
from __future__ import annotations

import threading
import time

from ..errors import FusionrankError
from .service import ModelHandle, SearchService, load_handle

__all__ = ["RegistryFollower"]


class RegistryFollower:
    """Keeps ``service`` on ``registry``'s promoted version and interleaving candidates (:meth:`start` polls in a thread)."""

    def __init__(self, service: SearchService, registry, poll_seconds: float = 1.0, log=print, auto: bool = True):
        """``auto=False``: never run the gate, even under the auto policy (someone else decides, e.g. ``fusionrank loop``)."""
        self.service, self.registry, self.poll_seconds, self.log = service, registry, float(poll_seconds), log
        self.auto = auto
        self._stamp = None
        self._policy = None
        self._candidates: dict[str, ModelHandle] = {}  # model version -> loaded candidate
        self._last_check = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: set[tuple[str, str]] = set()  # (version id, error) already reported
        self.decisions = 0

    def sync(self) -> bool:
        """Apply the registry if its index changed, and run the auto gate when due; returns whether the index changed."""
        stamp = self.registry.stamp()
        changed = stamp != self._stamp
        if changed:
            idx = self.registry.read()
            self._apply(idx)
            self._stamp, self._policy = stamp, idx.policy
        if self.auto and self._policy is not None and self._policy.mode == "auto" and \
                time.monotonic() - self._last_check >= self._policy.check_seconds:
            self._last_check = time.monotonic()
            self._auto()
        return changed

    def _report(self, vid: str, e: Exception) -> None:
        key = (vid, str(e))
        if key not in self._failed:
            self._failed.add(key)
            self.log(f"registry: version {vid} cannot be served here: {e}")

    def _apply(self, idx) -> None:
        svc = self.service
        p = idx.promoted()
        if p is not None and p.model_version != svc.model.version:
            try:
                old, new = svc.swap_model(self.registry.model_path(p))
                self.log(f"registry: serving {p.id} ({new.version}) instead of {old.version}")
            except (FusionrankError, OSError) as e:
                self._report(p.id, e)
        handles = []
        for v in idx.in_state("interleaving"):
            h = self._candidates.get(v.model_version)
            if h is None:
                try:
                    h = load_handle(self.registry.model_path(v))
                    svc.check_model(h)
                except (FusionrankError, OSError) as e:
                    self._report(v.id, e)
                    continue
            if h.version != svc.model.version:
                handles.append(h)
        self._candidates = {h.version: h for h in handles}
        before = {h.version for h in svc.interleaving[0]}
        svc.set_interleaving(handles, idx.policy.interleave_share)
        if before != set(self._candidates):
            self.log(f"registry: interleaving {', '.join(sorted(self._candidates)) or 'nothing'} "
                     f"on {idx.policy.interleave_share:.0%} of searches")

    def _auto(self) -> None:
        from ..models.gate import decide

        if self.service.events is None:
            return
        for v in self.registry.read().in_state("interleaving"):
            res = decide(self.registry, v.id, self.service.events, actor="auto (service)", retire_refused=True)
            if res.verdict != "wait":
                self.decisions += 1
                self.log(f"registry: {v.id} {'promoted' if res.verdict == 'promote' else 'refused and retired'}: "
                         + "; ".join(res.reasons))
                break  # the index changed: the next poll applies it before anything else is decided

    # the polling thread ------------------------------------------------------
    def start(self) -> "RegistryFollower":
        self.sync()
        self._thread = threading.Thread(target=self._run, name="registry-follower", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.sync()
            except Exception as e:  # a torn read cannot happen (atomic renames); anything else is reported, not fatal
                self.log(f"registry: {type(e).__name__}: {e}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
