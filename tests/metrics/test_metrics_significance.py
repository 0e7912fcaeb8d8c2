"""Paired significance tests on synthetic per-query values."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fusionrank.errors import UnknownNameError
from fusionrank.metrics import (
    QuerySetMismatchError,
    SignificanceResult,
    bootstrap_ci,
    compare,
    evaluate,
    paired_t_test,
    permutation_test,
)

TESTS = [paired_t_test, permutation_test, bootstrap_ci]


def _series(values, prefix="q"):
    return pd.Series(values, index=pd.Index([f"{prefix}{i}" for i in range(len(values))], name="query_id"))


@pytest.fixture(scope="module")
def base():
    return _series(np.random.default_rng(0).uniform(0, 1, 300))


@pytest.mark.parametrize("test", TESTS)
def test_identical_runs(test, base):
    r = test(base, base.copy())
    assert isinstance(r, SignificanceResult)
    assert r.diff == 0.0 and r.p_value == 1.0 and r.ci == (0.0, 0.0)
    assert r.n == 300 and r.mean_a == r.mean_b == pytest.approx(base.mean())


@pytest.mark.parametrize("test", TESTS)
def test_clearly_better_run(test, base):
    rng = np.random.default_rng(1)
    better = base + 0.1 + rng.normal(0, 0.05, len(base))
    r = test(base, better)
    assert r.p_value < 0.001
    assert r.diff == pytest.approx(better.mean() - base.mean())
    assert r.ci[0] < r.diff < r.ci[1] and r.ci[0] > 0
    assert r.significant()


@pytest.mark.parametrize("test", TESTS)
def test_no_real_difference_is_not_significant(test, base):
    rng = np.random.default_rng(2)
    noisy = base + rng.normal(0, 0.05, len(base))
    noisy = noisy - (noisy.mean() - base.mean())  # exactly equal means
    r = test(base, noisy)
    assert r.p_value > 0.5
    assert r.ci[0] < 0 < r.ci[1]


def test_t_test_matches_scipy_and_permutation_agrees(base):
    rng = np.random.default_rng(3)
    b = base + 0.01 + rng.normal(0, 0.1, len(base))
    r = paired_t_test(base, b)
    assert r.p_value == pytest.approx(stats.ttest_rel(b, base).pvalue)
    perm = permutation_test(base, b, n_permutations=10_000, seed=0)
    assert perm.p_value == pytest.approx(r.p_value, abs=0.03)  # both approximate the same null
    boot = bootstrap_ci(base, b)
    assert boot.ci == pytest.approx(r.ci, abs=0.005)


def test_seeded_and_reproducible(base):
    b = base + np.random.default_rng(4).normal(0, 0.1, len(base))
    assert permutation_test(base, b, seed=7) == permutation_test(base, b, seed=7)
    assert bootstrap_ci(base, b, seed=7) == bootstrap_ci(base, b, seed=7)


def test_alignment_by_query_id_not_position(base):
    shuffled = base.sample(frac=1.0, random_state=0)
    r = paired_t_test(base, shuffled)
    assert r.diff == 0.0 and r.p_value == 1.0


def test_misaligned_query_sets_raise_clear_error(base):
    other = base.rename(index={"q0": "zzz"})
    with pytest.raises(QuerySetMismatchError) as ei:
        permutation_test(base, other)
    assert ei.value.only_a == ["q0"] and ei.value.only_b == ["zzz"]
    assert "only in a" in str(ei.value) and "q0" in str(ei.value)
    with pytest.raises(QuerySetMismatchError):
        paired_t_test(base, base.iloc[:-5])


def test_other_bad_inputs(base):
    with pytest.raises(ValueError, match="NaN"):
        paired_t_test(base, base.where(base > 0.5))
    dup = pd.concat([base, base.iloc[:1]])
    with pytest.raises(ValueError, match="duplicate"):
        paired_t_test(dup, dup)
    with pytest.raises(ValueError, match="at least 2"):
        paired_t_test(base.iloc[:1], base.iloc[:1])


def test_constant_nonzero_difference(base):
    r = paired_t_test(base, base + 0.25)
    assert r.p_value == 0.0 and r.ci == pytest.approx((0.25, 0.25))


def test_compare_dispatch_and_use_with_evaluate():
    rng = np.random.default_rng(9)
    qrels = {f"q{i}": {"a": 1, "b": 0} for i in range(50)}
    good = {f"q{i}": {"a": 2.0, "b": 1.0} for i in range(50)}
    bad = {f"q{i}": {"a": float(rng.integers(0, 2)), "b": 1.5} for i in range(50)}
    ea, eb = evaluate(qrels, bad, ["mrr"]), evaluate(qrels, good, ["mrr"])
    r = compare(ea.per_query["mrr"], eb.per_query["mrr"], test="permutation")
    assert r.test == "permutation" and r.diff > 0 and r.p_value < 0.01
    assert compare(ea.per_query["mrr"], eb.per_query["mrr"], test="t").test == "paired_t"
    with pytest.raises(UnknownNameError, match="bootstrap"):
        compare(ea.per_query["mrr"], eb.per_query["mrr"], test="wilcoxon")


def test_mean_ci_is_the_one_sample_form_of_bootstrap_ci():
    from fusionrank.metrics.significance import bootstrap_ci, mean_ci

    d = np.random.default_rng(5).choice([-1.0, 0.0, 1.0], size=300, p=[0.3, 0.2, 0.5])
    idx = [f"q{i}" for i in range(len(d))]
    paired = bootstrap_ci(pd.Series(np.zeros(len(d)), idx), pd.Series(d, idx), n_resamples=3000, seed=7)
    mean, ci, p = mean_ci(d, n_resamples=3000, seed=7)
    assert mean == pytest.approx(d.mean()) and ci == pytest.approx(paired.ci) and p == pytest.approx(paired.p_value)
    with pytest.raises(ValueError, match="at least one value"):
        mean_ci([])


def test_cs_radius_matches_the_formula_worked_by_hand():
    """n = 10,000, sigma = 1, alpha = 0.05, tuned for n: rho^2 = (5.99146 + log 6.99146) / 1e4, half-width 0.030352."""
    import math

    from fusionrank.metrics.significance import cs_radius

    a = 0.05
    rho2 = (-2 * math.log(a) + math.log(-2 * math.log(a) + 1)) / 10_000
    want = math.sqrt(2 * (10_000 * rho2 + 1) / (10_000 ** 2 * rho2) * math.log(math.sqrt(10_000 * rho2 + 1) / a))
    assert want == pytest.approx(0.030352, abs=2e-6)
    assert cs_radius(10_000, 1.0, confidence=0.95, optimal_n=10_000) == pytest.approx(want, rel=1e-12)
    assert cs_radius(10_000, 2.0, confidence=0.95, optimal_n=10_000) == pytest.approx(2 * want, rel=1e-12)
    with pytest.raises(ValueError):
        cs_radius(0, 1.0)


def test_a_confidence_sequence_survives_peeking_where_fixed_intervals_do_not():
    """Outcomes with mean 0, looked at after every 500 of 10,000: fixed 95% intervals exclude 0 at some look in far
    more than 5% of the runs; the confidence sequence about 5% at most."""
    from fusionrank.metrics.significance import confidence_sequence

    rng = np.random.default_rng(7)
    runs, looks = 300, np.arange(500, 10_001, 500)
    fixed = sequential = 0
    for _ in range(runs):
        d = rng.choice([-1.0, 0.0, 1.0], size=looks[-1], p=[0.44, 0.12, 0.44])
        c = np.cumsum(d)
        c2 = np.cumsum(d * d)
        f_hit = s_hit = False
        for n in looks:
            m = c[n - 1] / n
            sd = np.sqrt((c2[n - 1] - n * m * m) / (n - 1))
            f_hit |= abs(m) > stats.norm.ppf(0.975) * sd / np.sqrt(n)
            lo, hi = confidence_sequence(d[:n], optimal_n=5_000)[1]
            s_hit |= lo > 0 or hi < 0
        fixed += f_hit
        sequential += s_hit
    assert fixed / runs > 0.15  # 20 looks at a 95% interval: about a quarter of the runs
    assert sequential / runs <= 0.05
