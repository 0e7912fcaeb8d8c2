"""``fusionrank retrain``: a new candidate version from the event store, on top of the promoted version's config.

Steps (:func:`retrain`):

1. the promoted version's experiment config, with an ``[events]`` block
   (:class:`~fusionrank.feedback.source.EventsConfig`) reading the searches logged in
   ``[since, until)`` (interleaved searches left out), click labels with position-bias correction
   (``ips`` with propensities from the randomised swaps of every search logged before ``until`` by
   default: the service must randomise a share of its traffic, ``fusionrank serve --randomise-share``;
   ``harvest`` uses two or more logged model versions instead) and, optionally, the judged training
   queries with their grades scaled by ``judgments_weight``;
2. :func:`fusionrank.experiment.train` into ``REGISTRY/versions/vN`` (no serving index: the
   service keeps its own);
3. :func:`~fusionrank.models.gate.offline_comparison`: the new version and the promoted one on the
   same evaluation queries;
4. registration as a candidate whose parent is the promoted version, with the training data
   reference (store, time range, searches, labels) and the offline metrics.
"""
from __future__ import annotations

import shutil
import time
from typing import Any

from pydantic import ValidationError

from ..errors import FusionrankError
from .registry import ModelRegistry, ModelVersion, RegistryError

__all__ = ["retrain", "redact_url"]


def redact_url(url: str) -> str:
    """A store URL without its password (kept in the registry as a training data reference)."""
    import re

    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", str(url))


def retrain(registry: ModelRegistry, store: str, *, since: float | None = None, until: float | None = None,
            labels: str = "ips", propensity: str = "swaps", propensity_searches: str = "all", loss: str | None = "ips_listwise",
            judgments_weight: float = 0.0, logging_model: str | None = None, dm_regressor: str = "ridge",
            key_file: str | None = None, epochs: int | None = None, seed: int | None = None, actor: str = "cli",
            note: str | None = None, index: str | None = None, log=print) -> ModelVersion:
    """Train a candidate from ``store``'s searches in ``[since, until)`` on top of the promoted version; register it.

    ``loss``: the loss of the new version (``None`` keeps the parent's); the default ``ips_listwise``
    is linear in the labels, so bias-corrected labels stay unbiased. ``propensity_searches``: which
    searches the position-bias estimator reads (``all`` or ``training``; :class:`~fusionrank.feedback.source.EventsConfig`).
    ``logging_model`` (a model directory) and ``dm_regressor``: the direct method of ``labels="dr"``.
    ``index``: the serving index the searches were served from, whose candidate and vector-search settings
    rebuild the slates the shoppers saw (default: the promoted version's own index when it has one, else its
    config's settings).
    """
    from ..experiment import Block, train
    from ..feedback.source import EventsConfig
    from ..modeldir import ModelDir
    from .gate import offline_comparison

    idx = registry.read()
    parent = idx.promoted()
    if parent is None:
        raise RegistryError(f"{registry.root}: no promoted version to retrain from; register one with "
                            f"`fusionrank models add {registry.root} MODEL_DIR`")
    pmd = ModelDir.open(registry.model_path(parent))
    cfg = pmd.config().model_copy(deep=True)
    cfg.data.source = pmd.workspace().source  # absolute: the saved config may name it relative to its own file
    until = until if until is not None else time.time()
    if index is None and (pmd.index_dir / "index.json").exists():
        index = str(pmd.index_dir)
    try:
        cfg.events = EventsConfig(store=store, key_file=key_file, labels=labels, propensity=propensity, index=index,
                                  propensity_searches=propensity_searches, since=since, until=until,
                                  judgments_weight=judgments_weight, logging_model=logging_model, dm_regressor=dm_regressor)
        if loss is not None:
            cfg.loss = Block(name=loss)
        if epochs is not None:
            cfg.training.epochs = epochs
        if seed is not None:
            cfg.seed = seed
        cfg = type(cfg).model_validate(cfg.model_dump())  # the blocks checked again (a misspelt loss lists the valid ones)
    except ValidationError as e:
        raise FusionrankError(f"retrain: {e}") from None
    vid, out = registry.allocate()
    log(f"retrain {vid} from {parent.id}: events {redact_url(store)}"
        + (f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else "")
        + f", labels {labels} ({propensity}), loss {cfg.loss.name}"
        + (f", judgments weight {judgments_weight}" if judgments_weight else ""))
    try:
        metrics = train(cfg, out, log=lambda m: log("  " + m), progress=False, build_index=False)
        offline = offline_comparison(out, registry.model_path(parent), baseline_id=parent.id, log=log)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # the id is free again
        raise
    clicks = metrics.get("clicks", {})
    data: dict[str, Any] = {"events": {"store": redact_url(store), "since": since, "until": until, "index": index,
                                       **{k: clicks.get(k) for k in ("searches", "impressions", "impressions_left_out",
                                                                      "queries", "first_search", "last_search", "labels",
                                                                      "propensity", "propensity_log", "theta",
                                                                      "logging_model", "skew")}}}
    if judgments_weight > 0:
        data["judgments"] = {"source": cfg.data.source, "split": cfg.data.train_split, "weight": judgments_weight,
                             "queries": clicks.get("judged_queries")}
    try:
        return registry.register(out, vid=vid, parent=parent.id, training_data=data, offline=offline, actor=actor,
                                 reason=f"retrained from {parent.id} on {clicks.get('searches', 0):,} logged searches",
                                 note=note)
    except RegistryError:
        shutil.rmtree(out, ignore_errors=True)
        raise


def judgments_reference(model_dir) -> dict[str, Any]:
    """The training data reference of a model trained on judgments (for ``fusionrank models add``)."""
    from ..modeldir import ModelDir

    md = ModelDir.open(model_dir)
    cfg = md.config()
    m = md.metrics()
    out: dict[str, Any] = {}
    try:
        src = md.workspace().source
    except FusionrankError:
        src = cfg.data.source
    if cfg.events is not None:
        out["events"] = {"store": redact_url(cfg.events.store), "since": cfg.events.since, "until": cfg.events.until,
                         **{k: (m.get("clicks") or {}).get(k) for k in ("searches", "first_search", "last_search")}}
    if cfg.events is None or cfg.events.judgments_weight > 0:
        out["judgments"] = {"source": src, "split": cfg.data.train_split, "queries": m.get("train_queries")}
    return out
