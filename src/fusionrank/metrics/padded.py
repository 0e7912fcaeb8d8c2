"""Fast NDCG@k on padded ``[B, S]`` candidate slates (training-time validation).

Training code scores a slate of ``S`` candidates for each of ``B`` queries; slates are
padded to a common width and a boolean ``mask`` marks the real candidates. To get the
same NDCG as :func:`fusionrank.metrics.ndcg` (trec_eval convention), the ideal DCG must
come from **all** judged products of each query, not only from those in the slate:
precompute it once with :func:`ideal_dcg` or
:func:`fusionrank.metrics.ideal_dcg_by_query` and pass it as ``ideal_dcg``.

Tie rule: candidates are sorted by score descending; equal scores are broken by
``tie_break`` **descending** when given (pass the rank of each product_id in string
order, e.g. from ``pd.factorize(ids, sort=True)``, to reproduce trec_eval's
product_id-descending rule exactly), otherwise by slate position ascending (the
candidate in the lower column index ranks first). Masked entries always rank last and
contribute nothing.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .ranking import Gain, _check_k, gain_values

__all__ = ["ideal_dcg", "dcg_at_k_padded", "ndcg_at_k_padded"]


def _dcg_sorted_desc(gains: np.ndarray, k: int | None) -> float:
    g = np.sort(gains)[::-1]
    if k is not None:
        g = g[:k]
    g = g[g > 0]
    return float(np.sum(g / np.log2(np.arange(2, len(g) + 2))))


def ideal_dcg(judged_grades, k: int | None = None, gain: Gain = "exp"):
    """Ideal DCG@k from the grades of *all* judged products of a query.

    ``IDCG@k = sum_{r=1..k} gain(g_(r)) / log2(r + 1)`` with ``g_(1) >= g_(2) >= ...`` the
    judged grades sorted descending; gain ``2**g - 1`` (``"exp"``) or ``g`` (``"linear"``).

    ``judged_grades`` may be one query's grades (1-D array / list of numbers) -> ``float``,
    or one entry per query (ragged list of arrays, or a 2-D array whose rows may be
    zero-padded, since grade-0 entries add nothing) -> ``float64[B]``.
    """
    k = _check_k(k)
    gain_values(np.zeros(0), gain)  # validate
    if isinstance(judged_grades, np.ndarray) and judged_grades.ndim == 2:
        return np.array([_dcg_sorted_desc(gain_values(row, gain), k) for row in judged_grades])
    if isinstance(judged_grades, np.ndarray) and judged_grades.ndim <= 1:
        return _dcg_sorted_desc(gain_values(np.atleast_1d(judged_grades), gain), k)
    if isinstance(judged_grades, Sequence) and not isinstance(judged_grades, (str, bytes)):
        if len(judged_grades) == 0 or np.ndim(judged_grades[0]) == 0:
            return _dcg_sorted_desc(gain_values(np.asarray(judged_grades, dtype=np.float64), gain), k)
        return np.array([_dcg_sorted_desc(gain_values(np.asarray(g, dtype=np.float64), gain), k) for g in judged_grades])
    raise TypeError(f"judged_grades must be an array or a (ragged) sequence, got {type(judged_grades).__name__}")


def _rank_slates(scores, grades, k, mask, tie_break, gain):
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(grades, dtype=np.float64)
    if s.ndim != 2 or g.shape != s.shape:
        raise ValueError(f"scores and grades must both be 2-D [B, S] with equal shapes, got {s.shape} and {g.shape}")
    B, S = s.shape
    m = np.ones((B, S), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != s.shape:
        raise ValueError(f"mask must have shape {s.shape}, got {m.shape}")
    if np.isnan(s[m]).any():
        raise ValueError("scores contain NaN for unmasked candidates")
    if tie_break is None:
        secondary = np.broadcast_to(np.arange(S, dtype=np.float64), (B, S))  # lower position first
    else:
        tb = np.asarray(tie_break, dtype=np.float64)
        if tb.shape != s.shape:
            raise ValueError(f"tie_break must have shape {s.shape}, got {tb.shape}")
        secondary = -tb  # larger key first
    neg = np.where(m, -s, 0.0)
    # np.lexsort: last key is primary -> masked last, then score desc, then secondary asc.
    order = np.lexsort((secondary, neg, ~m), axis=-1)
    kk = S if k is None else min(k, S)
    top = order[:, :kk]
    gains = np.where(m, gain_values(g, gain), 0.0)
    top_gains = np.take_along_axis(gains, top, axis=1)
    return top_gains, kk


def dcg_at_k_padded(scores, grades, k: int | None = 10, *, mask=None, tie_break=None, gain: Gain = "exp") -> np.ndarray:
    """DCG@k of each padded slate: ``float64[B]`` (see :func:`ndcg_at_k_padded`)."""
    k = _check_k(k)
    top_gains, kk = _rank_slates(scores, grades, k, mask, tie_break, gain)
    disc = np.log2(np.arange(2, kk + 2, dtype=np.float64))
    return (top_gains / disc).sum(axis=1)


def ndcg_at_k_padded(
    scores,
    grades,
    k: int | None = 10,
    *,
    mask=None,
    ideal_dcg=None,
    tie_break=None,
    gain: Gain = "exp",
) -> np.ndarray:
    """NDCG@k for ``B`` padded slates at once.

    Parameters
    ----------
    scores: ``float[B, S]`` model scores (array-like; a CPU torch tensor works).
    grades: ``int/float[B, S]`` judged grade of each candidate (0 if unjudged).
    k: cutoff (``None`` = whole slate).
    mask: ``bool[B, S]``, True for real candidates (default: all True). Masked entries
        rank last and have zero gain.
    ideal_dcg: ``float[B]`` ideal DCG@k of each query computed from *all* its judged
        products (:func:`ideal_dcg`, :func:`fusionrank.metrics.ideal_dcg_by_query`).
        If None, the ideal is computed from the slate's own masked grades, which equals
        the trec_eval value only when the slate contains every judged relevant product.
    tie_break: optional ``float/int[B, S]`` secondary key: equal scores rank by larger
        ``tie_break`` first. Default: by slate position (smaller column index first).
    gain: ``"exp"`` (``2**g - 1``, default) or ``"linear"`` (``g``).

    Returns
    -------
    ``float64[B]``: ``DCG@k / ideal_dcg``, with discount ``1 / log2(rank + 1)``; 0 for
    rows whose ideal DCG is 0 (trec_eval convention).
    """
    k = _check_k(k)
    top_gains, kk = _rank_slates(scores, grades, k, mask, tie_break, gain)
    disc = np.log2(np.arange(2, kk + 2, dtype=np.float64))
    dcg = (top_gains / disc).sum(axis=1)
    if ideal_dcg is None:
        g = np.asarray(grades, dtype=np.float64)
        m = np.ones(g.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
        ideal_gains = -np.sort(-np.where(m, gain_values(g, gain), 0.0), axis=1)[:, :kk]
        idcg = (ideal_gains / disc[: ideal_gains.shape[1]]).sum(axis=1)
    else:
        idcg = np.asarray(ideal_dcg, dtype=np.float64).reshape(-1)
        if idcg.shape[0] != dcg.shape[0]:
            raise ValueError(f"ideal_dcg must have shape [{dcg.shape[0]}], got {np.shape(ideal_dcg)}")
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)
