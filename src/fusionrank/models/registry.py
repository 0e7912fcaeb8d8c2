"""The model registry: every model version, where it came from, how it measured, and every decision about it.

A registry is a directory::

    REGISTRY/registry.json    the index (:class:`RegistryIndex`): policy, versions, decisions
    REGISTRY/registry.lock    taken (``flock``) by writers; readers never wait
    REGISTRY/versions/vN/     model directories written by ``fusionrank retrain`` (a registered
                              version may also live elsewhere: its ``path`` is then absolute)

Each version (:class:`ModelVersion`) keeps its experiment config, the data it was trained on
(judgments and/or an event-store time range), its offline metrics beside its parent's measured
on the same evaluation queries, its parent, and its state, one of :data:`STATES`:

``candidate``    trained, not shown to shoppers
``interleaving`` shown to a share of searches, team-draft interleaved with the promoted version
``promoted``     the version the service ranks with (exactly one once the registry has a version)
``retired``      no longer used (a retired version may be promoted again: a rollback)

Every change of state is a :class:`Decision` with its evidence, appended to the history; so is a
refused promotion. The index is rewritten whole on each change: a temporary file, fsync, rename
over ``registry.json``, fsync of the folder. A crash (kill -9) at any byte leaves either the old
or the new index, never a torn one. ``generation`` grows by one per write, so a reader (the
service polling for promotions) can tell whether anything changed.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import FusionrankError
from .gate import PromotionPolicy

__all__ = ["ModelRegistry", "ModelVersion", "Decision", "RegistryIndex", "STATES", "TRANSITIONS", "RegistryError",
           "INDEX_FILE"]

INDEX_FILE, LOCK_FILE, VERSIONS_DIR = "registry.json", "registry.lock", "versions"
FORMAT = 1

State = Literal["candidate", "interleaving", "promoted", "retired"]
STATES: tuple[str, ...] = get_args(State)
#: state -> the states a version in it may move to. The promoted version leaves its state only when another
#: one is promoted (it is retired then), so the service always has a version to serve.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "candidate": ("interleaving", "promoted", "retired"),
    "interleaving": ("candidate", "promoted", "retired"),
    "promoted": (),
    "retired": ("candidate", "interleaving", "promoted"),
}
#: What a decision did: one per state it can lead to, plus ``register`` and ``refuse`` (a promotion the gate refused).
Action = Literal["register", "interleave", "promote", "retire", "candidate", "refuse"]
ACTIONS: tuple[str, ...] = get_args(Action)
_ACTION_OF = {"interleaving": "interleave", "promoted": "promote", "retired": "retire", "candidate": "candidate"}


class RegistryError(FusionrankError):
    """A registry that cannot be opened, or a change it does not allow (the message says which and why)."""


class ModelVersion(BaseModel):
    """One model version in the registry."""

    model_config = ConfigDict(extra="forbid")
    id: str                                   # "v1", "v2", ... in order of registration
    path: str                                 # model directory: relative to the registry, or absolute
    model_version: str                        # ModelDir.version(): what the service reports and logs with each search
    state: State
    parent: str | None = None                 # the version whose config it was trained on top of
    created: float
    config: dict[str, Any]                    # the experiment config it was trained with
    training_data: dict[str, Any] = Field(default_factory=dict)  # {"judgments": {...}, "events": {"since", "until", ...}}
    offline: dict[str, Any] | None = None     # {"queries", "metrics", "baseline", "baseline_metrics", ...} (see gate.offline_comparison)
    note: str | None = None


class Decision(BaseModel):
    """One decision about a version, with the evidence it was taken on."""

    model_config = ConfigDict(extra="forbid")
    time: float
    version: str
    action: Action
    from_state: State | None = None
    to_state: State | None = None
    actor: str                                # "cli", "auto (service)", "loop", ...
    reason: str = ""
    evidence: dict[str, Any] = Field(default_factory=dict)


class RegistryIndex(BaseModel):
    """The content of ``registry.json``."""

    model_config = ConfigDict(extra="forbid")
    format: int = FORMAT
    generation: int = 0
    policy: PromotionPolicy = Field(default_factory=PromotionPolicy)
    versions: list[ModelVersion] = Field(default_factory=list)
    decisions: list[Decision] = Field(default_factory=list)

    def find(self, vid: str) -> ModelVersion:
        for v in self.versions:
            if v.id == vid:
                return v
        raise RegistryError(f"no model version {vid!r} in the registry; versions: {', '.join(v.id for v in self.versions) or '(none)'}")

    def promoted(self) -> ModelVersion | None:
        return next((v for v in self.versions if v.state == "promoted"), None)

    def in_state(self, state: str) -> list[ModelVersion]:
        _check_state(state)
        return [v for v in self.versions if v.state == state]

    def by_model_version(self, model_version: str) -> ModelVersion | None:
        return next((v for v in self.versions if v.model_version == model_version), None)


def _check_state(state: str) -> None:
    if state not in STATES:
        raise RegistryError(f"unknown state {state!r}; valid states: {', '.join(STATES)}")


class ModelRegistry:
    """A registry directory (see the module docstring). Every method reads the index afresh from disk."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.index_path = self.root / INDEX_FILE

    # opening -----------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, policy: PromotionPolicy | None = None) -> "ModelRegistry":
        """A new, empty registry at ``root`` (an error if one is there already)."""
        reg = cls(root)
        if reg.index_path.exists():
            raise RegistryError(f"{reg.root}: a model registry exists here already")
        (reg.root / VERSIONS_DIR).mkdir(parents=True, exist_ok=True)
        with reg._locked():
            reg._write(RegistryIndex(policy=policy or PromotionPolicy()))
        return reg

    @classmethod
    def open(cls, root: str | Path) -> "ModelRegistry":
        """An existing registry (an error naming ``fusionrank models init`` otherwise)."""
        reg = cls(root)
        if not reg.index_path.is_file():
            raise RegistryError(f"{reg.root}: not a model registry (no {INDEX_FILE}); create one with "
                                f"`fusionrank models init {reg.root}`")
        reg.read()
        return reg

    def read(self) -> RegistryIndex:
        """The index as it is on disk now."""
        try:
            raw = self.index_path.read_bytes()
        except FileNotFoundError:
            raise RegistryError(f"{self.root}: not a model registry (no {INDEX_FILE})") from None
        try:
            idx = RegistryIndex.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as e:
            raise RegistryError(f"{self.index_path}: not a readable registry index ({str(e).splitlines()[0]})") from None
        if idx.format > FORMAT:
            raise RegistryError(f"{self.index_path} has format {idx.format}; this fusionrank reads format {FORMAT} (upgrade it)")
        return idx

    def stamp(self) -> tuple[int, int, int]:
        """A cheap change marker (inode, size, mtime): every write renames a new file into place."""
        st = os.stat(self.index_path)
        return st.st_ino, st.st_size, st.st_mtime_ns

    # paths -------------------------------------------------------------------
    def model_path(self, v: ModelVersion) -> Path:
        p = Path(v.path)
        return p if p.is_absolute() else self.root / p

    # writing -----------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _write(self, idx: RegistryIndex) -> None:
        from ..serving.wal import write_atomic

        for stale in self.root.glob(f".{INDEX_FILE}.tmp-*"):  # under the lock, any is a killed writer's: never read
            stale.unlink(missing_ok=True)
        idx.generation += 1
        write_atomic(self.index_path, json.dumps(idx.model_dump(mode="json"), indent=1).encode("utf-8"))

    @contextlib.contextmanager
    def edit(self) -> Iterator[RegistryIndex]:
        """Read, change and write the index under the writers' lock (nothing is written if the block raises)."""
        with self._locked():
            idx = self.read()
            yield idx
            self._write(idx)

    def allocate(self) -> tuple[str, Path]:
        """A new version id and its (created, empty) directory under ``versions/``."""
        with self._locked():
            taken = {v.id for v in self.read().versions}
            d = self.root / VERSIONS_DIR
            d.mkdir(exist_ok=True)
            taken |= {p.name for p in d.iterdir()}
            n = 1 + max((int(t[1:]) for t in taken if t[:1] == "v" and t[1:].isdigit()), default=0)
            (d / f"v{n}").mkdir()
            return f"v{n}", d / f"v{n}"

    def register(self, model_dir: str | Path, *, vid: str | None = None, parent: str | None = None,
                 training_data: dict | None = None, offline: dict | None = None, actor: str = "cli",
                 reason: str = "", note: str | None = None) -> ModelVersion:
        """Add a trained model directory as a new version.

        The first version of a registry is promoted at once (there is nothing to compare it with);
        later ones start as candidates. ``vid`` is an id from :meth:`allocate` (else a new one).
        """
        from ..modeldir import ModelDir

        md = ModelDir.open(model_dir)
        mv = md.version()
        path = Path(model_dir).resolve()
        try:
            rel = str(path.relative_to(self.root.resolve()))
        except ValueError:
            rel = str(path)
        with self.edit() as idx:
            if vid is None:
                n = 1 + max((int(v.id[1:]) for v in idx.versions if v.id[1:].isdigit()), default=0)
                vid = f"v{n}"
            if any(v.id == vid for v in idx.versions):
                raise RegistryError(f"version id {vid!r} is taken")
            same = idx.by_model_version(mv)
            if same is not None:
                raise RegistryError(f"{model_dir} is registered already, as version {same.id} ({mv})")
            if parent is not None:
                idx.find(parent)
            state = "candidate" if idx.versions else "promoted"
            v = ModelVersion(id=vid, path=rel, model_version=mv, state=state, parent=parent, created=time.time(),
                             config=json.loads((md.path / "config.json").read_text()), training_data=training_data or {},
                             offline=offline, note=note)
            idx.versions.append(v)
            idx.decisions.append(Decision(time=v.created, version=vid, action="register", to_state=state, actor=actor,
                                          reason=reason or ("the registry's first version is promoted" if state == "promoted"
                                                            else "new candidate"),
                                          evidence={"model_version": mv, "offline": offline} if offline else {"model_version": mv}))
        return v

    def set_state(self, vid: str, to: str, *, actor: str = "cli", reason: str = "", evidence: dict | None = None) -> Decision:
        """Move version ``vid`` to state ``to`` (see :data:`TRANSITIONS`) and record the decision.

        Promoting retires the version promoted before (recorded too). The promoted version itself cannot
        be moved: promote another one instead, so the service always has a version to serve.
        """
        _check_state(to)
        with self.edit() as idx:
            v = idx.find(vid)
            if v.state == "promoted":
                raise RegistryError(f"version {vid} is promoted; promote another version to replace it")
            if to not in TRANSITIONS[v.state]:
                raise RegistryError(f"version {vid} is {v.state}; it can move to {', '.join(TRANSITIONS[v.state])}, not {to}")
            now = time.time()
            if to == "promoted":
                old = idx.promoted()
                if old is not None:
                    old.state = "retired"
                    idx.decisions.append(Decision(time=now, version=old.id, action="retire", from_state="promoted",
                                                  to_state="retired", actor=actor, reason=f"replaced by {vid}"))
            d = Decision(time=now, version=vid, action=_ACTION_OF[to], from_state=v.state, to_state=to, actor=actor,
                         reason=reason, evidence=evidence or {})
            v.state = to
            idx.decisions.append(d)
        return d

    def record(self, decision: Decision) -> None:
        """Append a decision that changes no state (a refused promotion)."""
        with self.edit() as idx:
            idx.find(decision.version)
            idx.decisions.append(decision)

    def set_policy(self, policy: PromotionPolicy) -> None:
        with self.edit() as idx:
            idx.policy = policy
