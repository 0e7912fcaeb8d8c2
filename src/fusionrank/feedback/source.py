"""An event store as a training source: logged searches and shopper actions -> labelled slates of the ranking path.

``fusionrank train`` reads this when its config has an ``[events]`` block::

    [events]
    store = "runs/shop/service-data/events.sqlite"   # or postgresql://...
    labels = "ips"            # naive | ips | affine | dr   (fusionrank.feedback.labels.LABELERS)
    propensity = "swaps"      # swaps | harvest | em | trust_em, or a saved PositionBias .json
    propensity_searches = "all"   # all: every non-interleaved search up to `until`; training: the ones trained on
    action_weights = { click = 1.0, add_to_cart = 2.0, purchase = 4.0 }
    judgments_weight = 0.0    # > 0: the judged training queries join, their grades scaled by this
    since = 1767225600.0      # optional: searches from this unix time on (`fusionrank retrain --since` sets it)
    logging_model = "runs/shop/model"   # dr: the model directory that served the searches (its scores join the regression)
    dm_regressor = "ridge"    # dr's direct method: ridge | lightgbm | lightgbm_linear | partially_linear | trees_plus_slope
                              # (trees_plus_slope needs logging_model; with it, dr reached 95% of full information
                              # from a weak logger and stayed above naive under a strong one in benchmarks/learning_from_clicks.py)

Interleaved searches (:mod:`fusionrank.feedback.interleave`) are left out: their lists mix two rankers.

Steps (:func:`click_training_slates`):

1. the click log (one row per product shown in a search, with its action counts);
2. position bias (``propensity``): estimated from the store's searches (``propensity_searches``), or
   loaded. The default ``swaps`` needs randomised searches (``fusionrank serve --randomise-share``);
   ``harvest`` needs two or more logged model versions. An estimator that the log does not identify
   raises :class:`~fusionrank.feedback.propensity.InsufficientInterventionsError` naming the ranks:
   there is no silent fallback to "no position bias";
3. each distinct logged query text becomes a training query; its candidates and features come from
   the ranking path (:meth:`~fusionrank.ranking.RankingPipeline.slates`), exactly as at serving time;
4. a skew check: the logged features of the products shown are compared with the recomputed ones,
   recomputed as ``logging_model`` served them (through its query understanding) when it is given;
   a mismatch means the catalogue or the candidate config changed since the searches were served;
5. labels by the configured labeler, put on the slates (:func:`~fusionrank.feedback.labels.attach_click_labels`);
   for ``dr`` the direct method is fitted first, on the features and, given ``logging_model``, that
   model's scores of every candidate (:func:`~fusionrank.feedback.labels.fit_direct_method`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import FusionrankError
from .bias import PositionBias
from .schema import DEFAULT_ACTION_WEIGHTS


class EventsConfig(BaseModel):
    """The ``[events]`` block of an experiment config: train from an event store's clicks."""

    model_config = ConfigDict(extra="forbid")
    store: str
    key_file: str | None = None
    labels: str = "ips"
    propensity: str = "swaps"
    # Which searches the estimator reads. "all": every non-interleaved search in the store before `until`,
    # whatever its model version or time (position bias belongs to the page and the shoppers, not to a
    # ranker: every randomised search and every logged version adds evidence). "training": only the
    # searches trained on (`since`, `until`, `model_versions`).
    propensity_searches: Literal["all", "training"] = "all"
    position: str = "rank"
    action_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_ACTION_WEIGHTS))
    since_days: float | None = Field(None, gt=0)
    since: float | None = None    # unix time: only searches from then on (with since_days, the later bound wins)
    until: float | None = None    # unix time: only searches before then
    model_versions: list[str] | None = None
    judgments_weight: float = Field(0.0, ge=0)
    min_impressions: int = Field(1, ge=1)
    logging_model: str | None = None
    dm_regressor: str = "ridge"   # dr's direct method: a name in fusionrank.feedback.labels.DM_REGRESSORS
    # The serving index the searches were served from: its candidate and vector-search settings (e.g. exact or
    # IVF vectors) rebuild the candidates and features the shoppers were shown. Default: the config's own settings.
    index: str | None = None

    @field_validator("dm_regressor")
    @classmethod
    def _known_regressor(cls, v: str) -> str:
        from .labels import DM_REGRESSORS

        DM_REGRESSORS.get(v)  # UnknownNameError lists the valid names
        return v

    @model_validator(mode="after")
    def _direct_method_has_its_inputs(self) -> "EventsConfig":
        from .labels import DM_REGRESSORS

        if self.labels == "dr" and self.logging_model is None:
            try:  # a direct method that needs the logging model's scores says so when made without them
                DM_REGRESSORS.get(self.dm_regressor)(linear_only=0)
            except FusionrankError as e:
                raise ValueError(f"[events] dm_regressor = {self.dm_regressor!r} needs [events] logging_model "
                                 f"(the model directory that served the searches): {e}") from None
        return self

    @field_validator("labels")
    @classmethod
    def _known_labeler(cls, v: str) -> str:
        from .labels import LABELERS

        LABELERS.get(v)  # UnknownNameError lists the valid names
        return v

    @field_validator("propensity")
    @classmethod
    def _known_estimator(cls, v: str) -> str:
        from .propensity import ESTIMATORS

        if v not in ESTIMATORS and not v.endswith(".json"):
            ESTIMATORS.get(v)  # the error lists the estimators; a saved bias is a .json path
        return v

    @field_validator("action_weights")
    @classmethod
    def _known_actions(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in DEFAULT_ACTION_WEIGHTS]
        if bad:
            raise ValueError(f"unknown action {bad[0]!r}; valid: {', '.join(DEFAULT_ACTION_WEIGHTS)}")
        return v


def position_bias(cfg: EventsConfig, log: pd.DataFrame, base: Path | None = None) -> PositionBias | None:
    if cfg.labels == "naive":
        return None
    if cfg.propensity.endswith(".json"):
        return PositionBias.load(config_relative(cfg.propensity, base))
    from .propensity import ESTIMATORS

    return ESTIMATORS.get(cfg.propensity)(log, ranks=int(log["rank"].max()))  # every rank the pages showed


def skew_check(log: pd.DataFrame, store, slates, ids, sample: int = 200, seed: int = 0) -> dict[str, Any]:
    """Largest difference between logged and recomputed features of shown products, over a sample of searches."""
    keys = log.drop_duplicates("slate_key")
    keys = keys.sample(n=min(sample, len(keys)), random_state=seed)
    served = store.slates(keys["slate_key"].tolist())
    pos = {(q, str(ids[r])): (b, n) for b, q in enumerate(slates.queries) for n, r in enumerate(slates.rows[b]) if r >= 0}
    worst, checked, missing = 0.0, 0, 0
    for _, row in keys.iterrows():
        s = served.get(row["slate_key"])
        if s is None or s.features.size == 0:
            continue
        for j, pid in enumerate(s.product_ids):
            at = pos.get((row["user_query"], str(pid)))
            if at is None:
                missing += 1
                continue
            worst = max(worst, float(np.max(np.abs(slates.x[at] - s.features[j]))))
            checked += 1
    return {"products_checked": checked, "not_in_candidates": missing, "max_abs_difference": worst}


def config_relative(path: str, base: Path | None) -> Path:
    """A path from the config, relative to the config's folder ``base`` unless absolute."""
    p = Path(path)
    return base / p if base is not None and not p.is_absolute() else p


def served_slates(model: str, slates, pipe, base: Path | None = None):
    """``slates``' queries as model directory ``model`` served them: its query understanding first, then the ranking path.

    A model with query understanding ranked the rewritten query (e.g. a word it had never seen mapped
    to the catalogue's term), so its candidates and features differ from the verbatim query's. The
    result keeps ``slates``' query texts (as typed, as logged), one slate per query in the same order;
    ``None`` when the model has no query understanding (it served the verbatim slates).
    """
    import dataclasses

    from ..modeldir import ModelDir
    from ..ranking import RankingPipeline

    u = ModelDir.open(config_relative(model, base)).understanding()
    if u is None:
        return None
    served = RankingPipeline.over(pipe.catalog, None, pipe.encoder, understanding=u).slates(list(slates.query_ids), list(slates.queries))
    return dataclasses.replace(served, queries=list(slates.queries))


def on_candidates(scores: np.ndarray, source, slates) -> np.ndarray:
    """``[B, N]`` scores of ``source``'s candidates carried onto ``slates``' candidates of the same query, by product.

    A candidate of ``slates`` that ``source`` did not have (the logger never retrieved it) gets the lowest
    score of its query's candidates in ``source``: it was never in contention.
    """
    out = np.zeros(slates.rows.shape, np.float64)
    for b in range(len(slates)):
        real = source.rows[b] >= 0
        by_row = dict(zip(source.rows[b][real].tolist(), np.asarray(scores[b])[real].tolist()))
        floor = min(by_row.values()) if by_row else 0.0
        for n, r in enumerate(slates.rows[b]):
            if r >= 0:
                out[b, n] = by_row.get(int(r), floor)
    return out


def logging_scores(model: str, cl: pd.DataFrame, slates, pipe, base: Path | None = None, served=None) -> tuple[np.ndarray, dict]:
    """``(scores [B, N], info)``: the ranker of model directory ``model`` scoring every candidate of ``slates``.

    ``served`` (:func:`served_slates`): the slates as that model served them, when its query
    understanding rewrote queries; it is scored there, as it ranked, and the scores are carried onto
    ``slates``' candidates (:func:`on_candidates`). ``info`` names the model's version and the share of the
    logged searches (``cl``) it served; a direct method conditioned on the scores of a model that served
    none of them learns nothing about the selection, so that is an error.
    """
    from ..modeldir import ModelDir

    md = ModelDir.open(config_relative(model, base))
    version = md.version()
    share = float((cl.drop_duplicates("query_id")["model_version"] == version).mean())
    if share == 0:
        served_by = ", ".join(sorted(cl["model_version"].astype(str).unique())[:5])
        raise FusionrankError(f"logging_model {model}: version {version} served none of the logged searches (served by: {served_by})")
    ranker = md.load_ranker()
    if served is None:
        return ranker.predict(slates, pipe.catalog.tables()), {"version": version, "share_of_searches": share, "rewritten": False}
    scores = on_candidates(ranker.predict(served, pipe.catalog.tables()), served, slates)
    return scores, {"version": version, "share_of_searches": share, "rewritten": True}


def click_training_slates(cfg: EventsConfig, pipe, log=print, base: Path | None = None):
    """``(slates with click labels, info)`` for training from ``cfg.store`` over ``pipe`` (a ranking pipeline)."""
    from .labels import among_candidates, attach_click_labels, click_labels, fit_direct_method
    from .store import open_existing

    t0 = time.perf_counter()
    store_url = cfg.store if "://" in cfg.store else str(config_relative(cfg.store, base))
    with open_existing(store_url, cfg.key_file) as store:
        bounds = [b for b in (cfg.since, time.time() - cfg.since_days * 86400 if cfg.since_days else None) if b is not None]
        since = max(bounds) if bounds else None
        cl = store.click_log(since=since, until=cfg.until, model_versions=cfg.model_versions)
        if cl.empty:
            raise FusionrankError(f"{cfg.store}: no logged searches to train from"
                                  + (f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else "")
                                  + (f" before {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(cfg.until))}" if cfg.until else "")
                                  + " (interleaved searches are not used for training)")
        log(f"  click log: {cl['query_id'].nunique():,} searches, {len(cl):,} impressions, "
            f"{int(cl['click'].sum()):,} clicks, {int(cl['add_to_cart'].sum()):,} carts, {int(cl['purchase'].sum()):,} purchases")
        estimated = cfg.labels != "naive" and not cfg.propensity.endswith(".json")
        # every search before --until: the same searches as the training log's when that has no other filter
        every = estimated and cfg.propensity_searches == "all" and (since is not None or cfg.model_versions is not None)
        bias_log = store.click_log(until=cfg.until) if every else cl
        bias = position_bias(cfg, bias_log, base)
        bias_info = None
        if bias is not None:
            bias_info = {"searches": int(bias_log["query_id"].nunique()),
                         "randomised": int(bias_log.loc[bias_log["randomised"], "query_id"].nunique()),
                         "model_versions": sorted(map(str, bias_log["model_version"].unique()))}
            src = "loaded" if not estimated else (
                f"from {bias_info['searches']:,} searches ({cfg.propensity_searches}), {bias_info['randomised']:,} "
                f"randomised, {len(bias_info['model_versions'])} model version(s)")
            log(f"  position bias ({cfg.propensity}, {src}): theta = " + ", ".join(f"{t:.3f}" for t in bias.relative().theta[:10]))
        texts = sorted(cl["user_query"].astype(str).unique())
        counts = cl.groupby(["user_query", "product_id"]).size()
        slates = pipe.slates([f"clicks-{i:06d}" for i in range(len(texts))], texts)
        ids = pipe.catalog.ids
        # what the logging model ranked: with query understanding, the rewritten queries' candidates and features
        served = served_slates(cfg.logging_model, slates, pipe, base) if cfg.logging_model is not None else None
        skew = skew_check(cl, store, slates if served is None else served, ids)
    log(f"  skew check (logged vs recomputed features of {skew['products_checked']:,} shown products): "
        f"max |difference| {skew['max_abs_difference']:.2e}")
    if skew["max_abs_difference"] > 1e-4:
        log("  warning: the features the service logged differ from the ranking path's now; the searches were served "
            "through a query understanding that logging_model does not name, or the catalogue, its index or "
            "the candidate settings changed since the searches were served")
    kw = {"weights": cfg.action_weights, **({"position": cfg.position} if cfg.labels != "naive" else {})}
    known = among_candidates(cl, slates, ids)
    if not known.all():  # shown then, not a candidate now (the catalogue or its index changed): no features to learn from
        log(f"  {int((~known).sum()):,} logged impressions are not among the ranking path's candidates now; left out")
        cl = cl[known]
    logging_info = None
    if cfg.labels == "dr":
        scores, logging_info = (None, None) if cfg.logging_model is None else \
            logging_scores(cfg.logging_model, cl, slates, pipe, base, served)
        if logging_info is not None:
            log(f"  logging model {logging_info['version']}: served {logging_info['share_of_searches']:.1%} of the searches")
        dm = fit_direct_method(slates, click_labels(cl, "affine", bias, **kw), ids, logging_scores=scores, regressor=cfg.dm_regressor)
        labels = click_labels(cl, "dr", bias, r_hat=dm.frame(slates, ids, scores), **kw)
        out = attach_click_labels(slates, labels, ids, fill=dm.predict(slates, scores))
    else:
        labels = click_labels(cl, cfg.labels, bias, **kw)
        if cfg.min_impressions > 1:
            labels = labels[labels["impressions"] >= cfg.min_impressions]
        out = attach_click_labels(slates, labels, ids)
    info = {"searches": int(cl["query_id"].nunique()), "impressions": int(len(cl)), "queries": len(texts),
            "impressions_left_out": int((~known).sum()), "since": since, "until": cfg.until,
            "first_search": float(cl["timestamp"].min()) if len(cl) else None,
            "last_search": float(cl["timestamp"].max()) if len(cl) else None,
            "pairs": int(len(counts)), "labels": cfg.labels, "propensity": cfg.propensity, "propensity_log": bias_info, "logging_model": logging_info,
            "theta": None if bias is None else bias.relative().theta.tolist(), "skew": skew,
            "seconds": round(time.perf_counter() - t0, 1)}
    return out, info
