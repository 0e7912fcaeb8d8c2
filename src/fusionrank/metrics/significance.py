"""Paired significance tests on per-query metric values of two systems.

Inputs are two per-query Series (e.g. ``evaluate(...).per_query["ndcg@10"]`` of a
baseline ``a`` and a candidate ``b``), aligned on their index (``query_id``). Both must
cover exactly the same queries, without duplicates or NaN; otherwise
:class:`QuerySetMismatchError` / ``ValueError`` is raised instead of silently dropping
queries.

Every test works on the paired differences ``d_i = b_i - a_i`` and returns a
:class:`SignificanceResult` with ``diff = mean(b) - mean(a)`` (positive: ``b`` is better),
a two-sided ``p_value`` and a ``confidence`` interval ``ci`` for the mean difference.

* :func:`paired_t_test` -- Student's paired t-test (``scipy.stats.ttest_rel``), t-based CI.
* :func:`permutation_test` -- paired randomization test: random sign flips of ``d``
  (seeded), ``p = (1 + #{|mean(s*d)| >= |mean(d)|}) / (1 + n_permutations)``; CI from the
  bootstrap below with the same seed.
* :func:`bootstrap_ci` -- percentile bootstrap of ``mean(d)`` over resampled queries;
  ``p_value = min(1, 2 * min(P*(mean <= 0), P*(mean >= 0)))`` with the same +1 smoothing.

* :func:`confidence_sequence` -- an interval for the mean that stays valid however often it is looked at
  (an asymptotic confidence sequence), for decisions taken while the data keep coming.

Degenerate case: if every ``d_i == 0`` all tests return ``diff = 0``, ``p_value = 1`` and
``ci = (0, 0)``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import FusionrankError

__all__ = [
    "confidence_sequence",
    "cs_radius",
    "SignificanceResult",
    "QuerySetMismatchError",
    "align",
    "paired_t_test",
    "permutation_test",
    "bootstrap_ci",
    "mean_ci",
    "compare",
]

_CHUNK_ELEMS = 2_000_000  # max elements of a resampling matrix held in memory at once


class QuerySetMismatchError(FusionrankError, ValueError):
    """The two per-query Series do not cover the same queries.

    Attributes: ``only_a`` and ``only_b`` (sorted query ids present in one Series only).
    """

    def __init__(self, only_a: list, only_b: list):
        self.only_a, self.only_b = list(only_a), list(only_b)

        def _show(x: list) -> str:
            return f"{len(x)} (e.g. {x[:5]})" if x else "0"

        super().__init__(
            "per-query values must cover the same queries: "
            f"only in a: {_show(self.only_a)}; only in b: {_show(self.only_b)}. "
            "Evaluate both runs on the same qrels (evaluate() scores missing queries as 0)."
        )


@dataclass(frozen=True)
class SignificanceResult:
    """Outcome of a paired test. ``diff = mean_b - mean_a``; ``ci`` bounds ``mean(b - a)``."""

    test: str
    mean_a: float
    mean_b: float
    diff: float
    p_value: float
    ci: tuple[float, float]
    n: int
    confidence: float = 0.95

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def align(a: pd.Series | Mapping, b: pd.Series | Mapping) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """Align two per-query Series on their index: returns ``(query_ids, a[float64], b[float64])``.

    Raises :class:`QuerySetMismatchError` if the query sets differ, ``ValueError`` on
    duplicate query ids, NaN values or fewer than 2 queries.
    """
    a = pd.Series(a) if not isinstance(a, pd.Series) else a
    b = pd.Series(b) if not isinstance(b, pd.Series) else b
    for name, s in (("a", a), ("b", b)):
        if s.index.has_duplicates:
            dups = s.index[s.index.duplicated()].unique().tolist()
            raise ValueError(f"{name} has duplicate query ids, e.g. {dups[:5]}")
    ia, ib = a.index.astype(str), b.index.astype(str)
    if not ia.equals(ib) and set(ia) != set(ib):
        raise QuerySetMismatchError(sorted(set(ia) - set(ib)), sorted(set(ib) - set(ia)))
    a = pd.Series(a.to_numpy(), index=ia)
    b = pd.Series(b.to_numpy(), index=ib).reindex(ia)
    va, vb = a.to_numpy(dtype=np.float64), b.to_numpy(dtype=np.float64)
    for name, v in (("a", va), ("b", vb)):
        if np.isnan(v).any():
            bad = ia[np.isnan(v)].tolist()
            raise ValueError(f"{name} has NaN values for {len(bad)} queries (e.g. {bad[:5]}); drop them from both sides first")
    if len(va) < 2:
        raise ValueError(f"need at least 2 paired queries, got {len(va)}")
    return ia, va, vb


def _base(test: str, va: np.ndarray, vb: np.ndarray, p: float, ci, confidence: float) -> SignificanceResult:
    return SignificanceResult(
        test=test,
        mean_a=float(va.mean()),
        mean_b=float(vb.mean()),
        diff=float(vb.mean() - va.mean()),
        p_value=float(min(1.0, max(0.0, p))),
        ci=(float(ci[0]), float(ci[1])),
        n=len(va),
        confidence=confidence,
    )


def _check_conf(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def paired_t_test(a, b, *, confidence: float = 0.95) -> SignificanceResult:
    """Two-sided paired t-test of ``mean(b - a) = 0`` with a t-based CI of the mean difference.

    If all differences are equal (zero variance, up to 1e-12 relative rounding noise) the t
    statistic is undefined: p = 1 when they are all exactly 0, else p = 0; the CI is then
    the single point ``(mean(d), mean(d))``.
    """
    _check_conf(confidence)
    _, va, vb = align(a, b)
    d = vb - va
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):  # (numerically) constant differences
        m = float(d.mean())
        p = 1.0 if np.all(d == 0) else 0.0
        return _base("paired_t", va, vb, p, (m, m), confidence)
    res = stats.ttest_rel(vb, va)
    ci = res.confidence_interval(confidence_level=confidence)
    return _base("paired_t", va, vb, float(res.pvalue), (ci.low, ci.high), confidence)


def _bootstrap_means(d: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = len(d)
    out = np.empty(n_resamples)
    step = max(1, _CHUNK_ELEMS // n)
    for start in range(0, n_resamples, step):
        stop = min(n_resamples, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = d[idx].mean(axis=1)
    return out


def _bootstrap(d: np.ndarray, n_resamples: int, confidence: float, seed) -> tuple[tuple[float, float], float]:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if np.all(d == 0):
        return (0.0, 0.0), 1.0
    means = _bootstrap_means(d, n_resamples, np.random.default_rng(seed))
    alpha = 1.0 - confidence
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    le = (np.count_nonzero(means <= 0) + 1) / (n_resamples + 1)
    ge = (np.count_nonzero(means >= 0) + 1) / (n_resamples + 1)
    return (float(lo), float(hi)), min(1.0, 2.0 * min(le, ge))


def mean_ci(d, *, n_resamples: int = 10_000, confidence: float = 0.95, seed: int | None = 0) -> tuple[float, tuple[float, float], float]:
    """``(mean, (lo, hi), p)``: the mean of the values ``d``, its percentile-bootstrap CI and two-sided bootstrap p-value.

    The one-sample form of :func:`bootstrap_ci` (whose ``d`` is ``b - a``), e.g. for per-search
    interleaving outcomes in {-1, 0, +1}. An empty ``d`` is a ValueError.
    """
    _check_conf(confidence)
    d = np.asarray(d, np.float64).reshape(-1)
    if not len(d):
        raise ValueError("mean_ci needs at least one value")
    ci, p = _bootstrap(d, n_resamples, confidence, seed)
    return float(d.mean()), ci, p


def cs_radius(n: int, sigma: float, *, confidence: float = 0.95, optimal_n: int = 10_000) -> float:
    """Half-width of the asymptotic confidence sequence after ``n`` values of standard deviation ``sigma``.

    Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas (2024), "Time-uniform central limit theory and asymptotic
    confidence sequences", Theorem 2.2 (Robbins' normal mixture with the empirical variance)::

        sigma * sqrt( 2 (n rho^2 + 1) / (n^2 rho^2) * log( sqrt(n rho^2 + 1) / alpha ) ),   alpha = 1 - confidence

    with ``rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / optimal_n``, the mixture that makes the sequence
    tightest at ``optimal_n`` values (it is valid at every ``n`` whatever ``optimal_n`` is).
    """
    _check_conf(confidence)
    if n < 1 or optimal_n < 1:
        raise ValueError(f"n and optimal_n must be >= 1, got {n} and {optimal_n}")
    alpha = 1.0 - confidence
    rho2 = (-2.0 * np.log(alpha) + np.log(-2.0 * np.log(alpha) + 1.0)) / optimal_n
    v = n * rho2 + 1.0
    return float(sigma * np.sqrt(2.0 * v / (n * n * rho2) * np.log(np.sqrt(v) / alpha)))


def confidence_sequence(d, *, confidence: float = 0.95, optimal_n: int = 10_000) -> tuple[float, tuple[float, float]]:
    """``(mean, (lo, hi))`` of the values ``d`` with an interval that holds at every sample size at once.

    A fixed-sample interval checked again after every new batch excludes a true mean of 0 far more often than
    ``1 - confidence`` (checked 12 times, 95% intervals do so about a fifth of the time); the confidence
    sequence (:func:`cs_radius`, with the sample standard deviation) covers the mean at all sizes
    simultaneously with probability about ``confidence``, so it may be checked as often as one likes and
    acted on when it excludes 0. It is wider than the fixed interval (about 1.5x at ``optimal_n``).
    An empty ``d`` is a ValueError.
    """
    d = np.asarray(d, np.float64).reshape(-1)
    if not len(d):
        raise ValueError("confidence_sequence needs at least one value")
    m = float(d.mean())
    r = cs_radius(len(d), float(d.std(ddof=1)) if len(d) > 1 else 0.0, confidence=confidence, optimal_n=optimal_n)
    return m, (m - r, m + r)


def permutation_test(
    a, b, *, n_permutations: int = 10_000, seed: int | None = 0, confidence: float = 0.95, n_resamples: int = 10_000
) -> SignificanceResult:
    """Two-sided paired randomization (sign-flip permutation) test.

    Under H0 the labels a/b of each query are exchangeable, so each ``d_i`` keeps or flips
    its sign with probability 1/2. ``p = (1 + #{|mean(s * d)| >= |mean(d)|}) / (1 +
    n_permutations)`` over ``n_permutations`` seeded random sign vectors ``s`` (vectorised
    in chunks). ``ci`` is the percentile-bootstrap CI (:func:`bootstrap_ci`, same seed).
    """
    _check_conf(confidence)
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    _, va, vb = align(a, b)
    d = vb - va
    n = len(d)
    if np.all(d == 0):
        return _base("permutation", va, vb, 1.0, (0.0, 0.0), confidence)
    obs = abs(d.mean())
    tol = 1e-9 * np.abs(d).mean()  # summation-order noise; |mean(s*d)| <= mean(|d|)
    rng = np.random.default_rng(seed)
    count = 0
    step = max(1, _CHUNK_ELEMS // n)
    for start in range(0, n_permutations, step):
        m = min(step, n_permutations - start)
        signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
        perm = np.abs(signs @ d) / n
        count += int(np.count_nonzero(perm >= obs - tol))
    p = (count + 1) / (n_permutations + 1)
    ci, _ = _bootstrap(d, n_resamples, confidence, seed)
    return _base("permutation", va, vb, p, ci, confidence)


def bootstrap_ci(a, b, *, n_resamples: int = 10_000, confidence: float = 0.95, seed: int | None = 0) -> SignificanceResult:
    """Percentile bootstrap CI of ``mean(b - a)`` (queries resampled with replacement, seeded).

    ``p_value`` is the two-sided bootstrap p-value
    ``min(1, 2 * min((1 + #{m* <= 0}) / (1 + B), (1 + #{m* >= 0}) / (1 + B)))`` over the
    ``B = n_resamples`` bootstrap means ``m*``.
    """
    _check_conf(confidence)
    _, va, vb = align(a, b)
    ci, p = _bootstrap(vb - va, n_resamples, confidence, seed)
    return _base("bootstrap", va, vb, p, ci, confidence)


_TESTS = {"t": paired_t_test, "paired_t": paired_t_test, "permutation": permutation_test, "bootstrap": bootstrap_ci}


def compare(a, b, test: str = "permutation", **kwargs) -> SignificanceResult:
    """Dispatch to a test by name: ``"t"``/``"paired_t"``, ``"permutation"`` or ``"bootstrap"``."""
    try:
        fn = _TESTS[test]
    except KeyError:
        from ..errors import UnknownNameError

        raise UnknownNameError("significance test", test, sorted(_TESTS)) from None
    return fn(a, b, **kwargs)
