"""Per-query ranking metrics as pure functions, registered by name in :data:`METRICS`.

Every metric has the signature ``metric(qrels, run, k=None, **opts) -> pandas.Series``:
one float per query, indexed by ``query_id`` (sorted), named after the metric. ``qrels``
and ``run`` are DataFrames or dict-of-dicts (see :mod:`fusionrank.metrics.inputs`), or
``qrels`` is a :class:`~fusionrank.metrics.inputs.Prepared` object and ``run`` is None.

Conventions (all identical to trec_eval 9 / pytrec_eval / ir_measures, and checked
against ir_measures in ``tests/metrics/test_oracle.py``):

* **Ranking / ties.** Products are ranked by ``score`` descending; equal scores are
  broken by ``product_id`` descending in string order (trec_eval's ``strcmp`` rule).
  Ranks start at 1. ``k`` (cutoff) keeps ranks ``1..k``; ``k=None`` uses the whole run.
* **Unjudged products** count as grade 0 (not relevant).
* **Which queries.** The evaluated queries are the qrels queries. Run queries that are
  not in the qrels are ignored. A qrels query absent from the run scores 0 and *is*
  included (so missing results are never silently rewarded).
* **Queries without relevant products** (no judged product with ``grade >= rel_level``,
  or for (n)DCG no judged product with ``grade > 0``) score 0 and are included in the
  mean, like trec_eval / ir_measures. Pass ``no_relevant="skip"`` to drop them from the
  returned Series instead.
* **Discount** is ``1 / log2(rank + 1)``. **Gain** is ``2**grade - 1`` (``gain="exp"``,
  default) or ``grade`` (``gain="linear"``, trec_eval's own ``ndcg``).
* **Ideal DCG** is computed from *all* judged products of the query (sorted by gain),
  not only from the retrieved ones, cut at ``k``.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from ..registry import Registry
from .inputs import Prepared, prepare

__all__ = [
    "METRICS",
    "Gain",
    "gain_values",
    "ndcg",
    "dcg",
    "average_precision",
    "reciprocal_rank",
    "precision",
    "recall",
    "ideal_dcg_by_query",
]

METRICS: Registry = Registry("metric")

Gain = Literal["exp", "linear"]
NoRelevant = Literal["zero", "skip"]
GAINS: tuple[str, ...] = ("exp", "linear")


# --------------------------------------------------------------------------- helpers
def gain_values(grades: np.ndarray, gain: Gain = "exp") -> np.ndarray:
    """Gain of each grade: ``2**g - 1`` for ``"exp"``, ``g`` for ``"linear"`` (float64)."""
    g = np.asarray(grades, dtype=np.float64)
    if gain == "exp":
        return np.exp2(g) - 1.0
    if gain == "linear":
        return g
    raise ValueError(f"gain must be one of {GAINS}, got {gain!r}")


def _check_k(k: int | None) -> int | None:
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"cutoff k must be a positive integer or None, got {k!r}")
    return int(k)


def _check_rel_level(rel_level: int) -> int:
    if isinstance(rel_level, bool) or not isinstance(rel_level, (int, np.integer)) or rel_level < 1:
        raise ValueError(f"rel_level must be an integer >= 1, got {rel_level!r}")
    return int(rel_level)


def _wsum(idx: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """Per-query sum of ``weights`` (float64[n]); sequential, i.e. in rank order within a query."""
    return np.bincount(idx, weights=weights, minlength=n).astype(np.float64, copy=False)


def _top(p: Prepared, k: int | None) -> np.ndarray | slice:
    return slice(None) if k is None else p.rank <= k


def _dcg_values(p: Prepared, k: int | None, gain: Gain) -> np.ndarray:
    m = _top(p, k)
    q, rank, grade = p.q[m], p.rank[m], p.grade[m]
    nz = grade > 0
    w = gain_values(grade[nz], gain) / np.log2(rank[nz] + 1.0)
    return _wsum(q[nz], w, p.n_queries)


def _ideal_dcg_values(p: Prepared, k: int | None, gain: Gain) -> np.ndarray:
    jq, jg = p.judged_q, p.judged_grade
    keep = jg > 0
    jq, jg = jq[keep], jg[keep]
    order = np.lexsort((-jg, jq))
    jq, jg = jq[order], jg[order]
    n = len(jq)
    starts = np.flatnonzero(np.r_[True, jq[1:] != jq[:-1]]) if n else np.zeros(0, np.int64)
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n])) + 1
    if k is not None:
        m = rank <= k
        jq, jg, rank = jq[m], jg[m], rank[m]
    w = gain_values(jg, gain) / np.log2(rank + 1.0)
    return _wsum(jq, w, p.n_queries)


def _within_query_cumsum(q: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Running count of ``flags`` inside each query block of sorted ``q`` (inclusive)."""
    c = np.cumsum(flags, dtype=np.int64)
    n = len(q)
    if n == 0:
        return c
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
    before = np.r_[0, c][starts]  # count accumulated before each block
    return c - np.repeat(before, np.diff(np.r_[starts, n]))


def _finish(p: Prepared, values: np.ndarray, has_rel: np.ndarray, no_relevant: NoRelevant, name: str) -> pd.Series:
    if no_relevant not in ("zero", "skip"):
        raise ValueError(f"no_relevant must be 'zero' or 'skip', got {no_relevant!r}")
    values = np.where(has_rel, values, 0.0)
    s = p.series(values.astype(np.float64), name=name)
    if no_relevant == "skip":
        s = s[has_rel]
    return s


def _label(name: str, k: int | None) -> str:
    return name if k is None else f"{name}@{k}"


# --------------------------------------------------------------------------- metrics
@METRICS.register("ndcg")
def ndcg(qrels, run, k: int | None = None, *, gain: Gain = "exp", no_relevant: NoRelevant = "zero") -> pd.Series:
    """Normalised discounted cumulative gain per query.

    ``NDCG@k = DCG@k / IDCG@k`` with ``DCG@k = sum_{r=1..k} gain(grade_r) / log2(r + 1)``
    over the ranked run, and ``IDCG@k`` the same sum over *all judged products of the
    query* sorted by grade (trec_eval ``ndcg_cut``), so a relevant product that was not
    retrieved lowers NDCG. ``gain="exp"`` (default): ``2**g - 1``; ``gain="linear"``: ``g``.
    Ties: score desc, then product_id desc. Queries with ``IDCG = 0`` score 0
    (``no_relevant="zero"``) or are dropped (``"skip"``). Values in ``[0, 1]``.
    """
    p = prepare(qrels, run)
    k = _check_k(k)
    dcg_v = _dcg_values(p, k, gain)
    idcg = _ideal_dcg_values(p, k, gain)
    has_rel = idcg > 0
    vals = np.divide(dcg_v, idcg, out=np.zeros_like(dcg_v), where=has_rel)
    return _finish(p, vals, has_rel, no_relevant, _label("ndcg" if gain == "exp" else "ndcg_lin", k))


@METRICS.register("dcg")
def dcg(qrels, run, k: int | None = None, *, gain: Gain = "exp", no_relevant: NoRelevant = "zero") -> pd.Series:
    """Discounted cumulative gain per query (unnormalised).

    ``DCG@k = sum_{r=1..k} gain(grade_r) / log2(r + 1)``, gain ``2**g - 1`` (``"exp"``) or
    ``g`` (``"linear"``); unjudged products have grade 0. Ties: score desc, then
    product_id desc. ``no_relevant="skip"`` drops queries without any judged grade > 0.
    """
    p = prepare(qrels, run)
    k = _check_k(k)
    vals = _dcg_values(p, k, gain)
    has_rel = p.num_rel(1) > 0
    return _finish(p, vals, has_rel, no_relevant, _label("dcg" if gain == "exp" else "dcg_lin", k))


@METRICS.register("map")
def average_precision(qrels, run, k: int | None = None, *, rel_level: int = 1, no_relevant: NoRelevant = "zero") -> pd.Series:
    """Average precision per query (its mean over queries is MAP).

    ``AP@k = (1 / R) * sum_{r <= k, rel_r} P@r`` where ``rel_r`` means ``grade >= rel_level``
    (default 1), ``P@r`` is precision at rank ``r`` and ``R`` is the number of relevant
    *judged* products of the query (retrieved or not), as trec_eval ``map`` / ``map_cut_k``.
    Ties: score desc, then product_id desc. ``R = 0`` -> 0 (or dropped with ``"skip"``).
    """
    p = prepare(qrels, run)
    k = _check_k(k)
    rel_level = _check_rel_level(rel_level)
    m = _top(p, k)
    q, rank = p.q[m], p.rank[m]
    rel = p.grade[m] >= rel_level
    hits = _within_query_cumsum(q, rel)
    prec = hits[rel] / rank[rel]
    sums = _wsum(q[rel], prec, p.n_queries)
    n_rel = p.num_rel(rel_level)
    has_rel = n_rel > 0
    vals = np.divide(sums, n_rel, out=np.zeros_like(sums), where=has_rel)
    return _finish(p, vals, has_rel, no_relevant, _label("map", k))


@METRICS.register("mrr")
def reciprocal_rank(qrels, run, k: int | None = None, *, rel_level: int = 1, no_relevant: NoRelevant = "zero") -> pd.Series:
    """Reciprocal rank of the first relevant product per query (its mean is MRR).

    ``RR@k = 1 / r*`` where ``r*`` is the rank of the first product with
    ``grade >= rel_level``, or 0 if there is none within ranks ``1..k`` (trec_eval
    ``recip_rank`` for ``k=None``). Ties: score desc, then product_id desc.
    """
    p = prepare(qrels, run)
    k = _check_k(k)
    rel_level = _check_rel_level(rel_level)
    m = _top(p, k)
    q, rank = p.q[m], p.rank[m]
    rel = p.grade[m] >= rel_level
    vals = np.zeros(p.n_queries)
    rq, rr = q[rel], rank[rel]
    if len(rq):
        uq, first = np.unique(rq, return_index=True)  # rows are sorted by (q, rank)
        vals[uq] = 1.0 / rr[first]
    has_rel = p.num_rel(rel_level) > 0
    return _finish(p, vals, has_rel, no_relevant, _label("mrr", k))


@METRICS.register("p")
def precision(qrels, run, k: int | None = None, *, rel_level: int = 1, no_relevant: NoRelevant = "zero") -> pd.Series:
    """Precision per query.

    ``P@k = |{r <= k : grade_r >= rel_level}| / k`` -- the denominator is ``k`` even when
    fewer than ``k`` products were retrieved (trec_eval ``P_k``). With ``k=None`` it is
    precision of the whole retrieved list, ``rel_ret / n_ret`` (trec_eval ``set_P``;
    0 when nothing was retrieved). Ties: score desc, then product_id desc.
    """
    p = prepare(qrels, run)
    k = _check_k(k)
    rel_level = _check_rel_level(rel_level)
    m = _top(p, k)
    rel = p.grade[m] >= rel_level
    n_hit = np.bincount(p.q[m][rel], minlength=p.n_queries).astype(np.float64)
    if k is None:
        vals = np.divide(n_hit, p.n_ret, out=np.zeros_like(n_hit), where=p.n_ret > 0)
    else:
        vals = n_hit / k
    has_rel = p.num_rel(rel_level) > 0
    return _finish(p, vals, has_rel, no_relevant, _label("p", k))


@METRICS.register("recall")
def recall(qrels, run, k: int | None = None, *, rel_level: int = 1, no_relevant: NoRelevant = "zero") -> pd.Series:
    """Recall per query.

    ``R@k = |{r <= k : grade_r >= rel_level}| / R`` with ``R`` the number of judged products
    with ``grade >= rel_level`` (trec_eval ``recall_k``; ``k=None``: ``set_recall``).
    ``R = 0`` -> 0 (or dropped with ``"skip"``). Ties: score desc, then product_id desc.
    """
    p = prepare(qrels, run)
    k = _check_k(k)
    rel_level = _check_rel_level(rel_level)
    m = _top(p, k)
    rel = p.grade[m] >= rel_level
    n_hit = np.bincount(p.q[m][rel], minlength=p.n_queries).astype(np.float64)
    n_rel = p.num_rel(rel_level)
    has_rel = n_rel > 0
    vals = np.divide(n_hit, n_rel, out=np.zeros_like(n_hit), where=has_rel)
    return _finish(p, vals, has_rel, no_relevant, _label("recall", k))


def ideal_dcg_by_query(qrels, k: int | None = None, *, gain: Gain = "exp") -> pd.Series:
    """Ideal DCG@k of every qrels query, from all its judged products (Series by query_id).

    This is exactly the denominator :func:`ndcg` uses; pass ``.loc[batch_query_ids].to_numpy()``
    as ``ideal_dcg`` to :func:`fusionrank.metrics.ndcg_at_k_padded` during training.
    """
    p = prepare(qrels, {})
    k = _check_k(k)
    return p.series(_ideal_dcg_values(p, k, gain), name=_label("idcg", k))
