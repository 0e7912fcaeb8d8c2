"""Position-bias estimators recover known propensities from simulated logs of 10^5 sessions."""
from __future__ import annotations

import numpy as np
import pytest

from fusionrank.errors import SchemaError, UnknownNameError
from fusionrank.feedback.bias import PositionBias
from fusionrank.feedback.clickmodels import GridPositionBased, PositionBased, TableExamination, TrustBias, simulate_log
from fusionrank.feedback.propensity import (
    ESTIMATORS, InsufficientInterventionsError, estimate_from_swaps, intervention_harvesting, regression_em,
    trust_bias_em)

SESSIONS = 100_000
# A catalogue where relevant products are common enough that deep ranks still collect clicks.
SIM = dict(n_queries=100, n_candidates=20, grade_probs=(0.3, 0.25, 0.2, 0.15, 0.1))


def _rel_err(est: PositionBias, true: PositionBias) -> np.ndarray:
    return np.abs(est.theta / true.relative().theta - 1)


@pytest.fixture(scope="module")
def pbm():
    return PositionBased()                                    # theta_k = 1/k, ClickNoise(0.1, 1.0)


@pytest.fixture(scope="module")
def swap_log(pbm):
    return simulate_log(pbm, SESSIONS, swap_share=0.5, rng=10, **SIM)


@pytest.fixture(scope="module")
def two_ranker_log(pbm):
    return simulate_log(pbm, SESSIONS, versions=("old", "new"), ranker_noise=1.0, rng=21, **SIM)


def test_registry():
    assert ESTIMATORS.names() == ["em", "harvest", "swaps", "trust_em"]
    assert ESTIMATORS.get("harvest") is intervention_harvesting
    assert ESTIMATORS.get("trust_em") is trust_bias_em
    with pytest.raises(UnknownNameError, match="valid names: em, harvest, swaps, trust_em"):
        ESTIMATORS.get("swap")


def test_swaps_recover_pbm(pbm, swap_log):
    est = estimate_from_swaps(swap_log, ranks=10)
    assert est.theta[0] == 1.0 and est.method == "swaps"
    assert _rel_err(est, pbm.bias()).max() < 0.10, est.theta


def test_swaps_grid_variant_recovers_cells():
    m = GridPositionBased()
    log = simulate_log(m, SESSIONS, swap_share=0.5, rng=12, **SIM)
    est = estimate_from_swaps(log, ranks=10, grid=True)
    true = m.bias(10).relative()
    assert est.theta_grid.shape == (3, 4)
    assert np.isnan(est.theta_grid[2, 2:]).all()              # ranks 11 and 12 are not estimated
    np.testing.assert_allclose(est.theta_grid[:2], true.theta_grid[:2], rtol=0.10)
    np.testing.assert_allclose(est.theta_grid[2, :2], true.theta_grid[2, :2], rtol=0.10)


def test_swaps_need_randomised_traffic(two_ranker_log):
    with pytest.raises(InsufficientInterventionsError) as e:
        estimate_from_swaps(two_ranker_log)
    assert e.value.missing_ranks == list(range(2, 11))


def test_harvest_recovers_pbm_from_two_rankers(pbm, two_ranker_log):
    est = intervention_harvesting(two_ranker_log, ranks=10)
    assert est.theta[0] == pytest.approx(1.0)
    assert _rel_err(est, pbm.bias()).max() < 0.10, est.theta


def test_harvest_recovers_a_table(two_ranker_log):
    m = PositionBased(TableExamination())
    log = simulate_log(m, SESSIONS, versions=("a", "b", "c"), rng=5, **SIM)
    assert _rel_err(intervention_harvesting(log), m.bias()).max() < 0.10


def test_harvest_refuses_one_ranker(swap_log):
    with pytest.raises(InsufficientInterventionsError, match="at least two model versions") as e:
        intervention_harvesting(swap_log.assign(model_version="v1"))
    assert e.value.found["model_versions"] == ["v1"]


def test_harvest_refuses_rankers_that_agree(pbm):
    log = simulate_log(pbm, 5_000, versions=("a", "b"), ranker_noise=0.0, rng=1, **SIM)   # identical rankings
    with pytest.raises(InsufficientInterventionsError, match="share no") as e:
        intervention_harvesting(log)
    assert e.value.missing_ranks == list(range(2, 11))


def test_em_recovers_pbm_per_pair(pbm, two_ranker_log):
    est = regression_em(two_ranker_log, ranks=10)
    assert _rel_err(est, pbm.bias()).max() < 0.10, est.theta


def test_em_per_pair_refuses_one_ranker_without_randomisation(pbm):
    log = simulate_log(pbm, 5_000, rng=3, **SIM)                  # one deterministic ranker: one rank per pair
    with pytest.raises(InsufficientInterventionsError, match=r"rank\(s\) \[2, 3, .*10\] share no user_query / product_id "
                       "group with rank 1.*randomise a share of traffic") as e:
        regression_em(log, ranks=10)
    assert e.value.method == "em" and e.value.missing_ranks == list(range(2, 11))
    assert e.value.found["groups_at_several_ranks"] == 0


def test_em_per_pair_is_identified_by_swaps(pbm, swap_log):
    est = regression_em(swap_log.assign(model_version="v1"), ranks=10)   # one ranker, half its searches randomised
    assert _rel_err(est, pbm.bias()).max() < 0.10, est.theta


def test_em_with_features_needs_only_one_ranker(pbm):
    log = simulate_log(pbm, SESSIONS, rng=33, **SIM)
    est = regression_em(log, ranks=10, features=["grade"])
    assert _rel_err(est, pbm.bias()).max() < 0.10, est.theta


def test_missing_columns_are_named(swap_log):
    with pytest.raises(SchemaError) as e:
        estimate_from_swaps(swap_log.drop(columns=["logged_rank"]))
    assert e.value.missing == ["logged_rank"]


def test_too_few_ranks_shown(swap_log):
    with pytest.raises(InsufficientInterventionsError, match="down to rank 10"):
        regression_em(swap_log, ranks=12)


# ---------------------------------------------------------------------------------------------- trust bias

RANKS = np.arange(1, 11)


@pytest.fixture(scope="module")
def trust():
    return TrustBias()                                        # ULTRA theta, eps+_k = 1 - (k+1)/100, eps-_k = 0.65/k


@pytest.fixture(scope="module")
def trust_log(trust):
    return simulate_log(trust, SESSIONS, versions=("old", "new"), ranker_noise=1.0, rng=21, **SIM)


@pytest.fixture(scope="module")
def trust_est(trust_log):
    return trust_bias_em(trust_log, ranks=10)


def test_trust_em_convention(trust_est):
    # theta_k holds P(click | k, relevant) = alpha_k + beta_k, eps+ = 1, eps-_k = beta_k / (alpha_k + beta_k)
    assert trust_est.method == "trust_em"
    np.testing.assert_array_equal(trust_est.eps_plus, np.ones(10))
    np.testing.assert_allclose(trust_est.alpha(RANKS) + trust_est.beta(RANKS), trust_est.theta)
    again = PositionBias.from_dict(trust_est.to_dict())
    np.testing.assert_allclose(again.alpha(RANKS), trust_est.alpha(RANKS))
    np.testing.assert_allclose(again.beta(RANKS), trust_est.beta(RANKS))


def test_trust_em_recovers_alpha_and_beta_per_pair(trust, trust_est):
    true = trust.bias(10)
    alpha, beta = true.alpha(RANKS), true.beta(RANKS)
    a_err = np.abs(trust_est.alpha(RANKS) / alpha - 1)
    # 10% on alpha at ranks 1-9; rank 10 (a few hundred relevant clicks) reaches only about 25%
    assert a_err[:9].max() < 0.10 and a_err[9] < 0.30, a_err
    # beta: the lowest latent level mixes grade 0 (r = 0) with grade 1 (r = 1/15), so beta comes out
    # shifted up by a few hundredths of alpha (a label offset below 0.08 in relevance units); 5% at rank 1
    assert np.max(np.abs(trust_est.beta(RANKS) - beta) / alpha) < 0.08
    assert abs(trust_est.beta(1) / beta[0] - 1) < 0.05


def test_trust_em_with_features(trust, trust_log):
    est = trust_bias_em(trust_log, ranks=10, features=["grade"])
    true = trust.bias(10)
    alpha, beta = true.alpha(RANKS), true.beta(RANKS)
    assert np.max(np.abs(est.alpha(RANKS) / alpha - 1)) < 0.10, est.alpha(RANKS)
    assert np.max(np.abs(est.beta(RANKS) - beta) / alpha) < 0.05, est.beta(RANKS)


def test_trust_em_on_pbm_splits_the_click_noise(pbm, two_ranker_log):
    # PBM with ClickNoise(0.1, 1.0): P(click at k) = theta_k (0.1 + 0.9 r), so alpha_k = 0.9/k, beta_k = 0.1/k
    est = trust_bias_em(two_ranker_log, ranks=10)
    theta = 1.0 / RANKS
    a_err = np.abs(est.alpha(RANKS) / (0.9 * theta) - 1)
    assert a_err[:9].max() < 0.10 and a_err[9] < 0.30, a_err
    assert np.max(np.abs(est.beta(RANKS) - 0.1 * theta) / (0.9 * theta)) < 0.08, est.beta(RANKS)


def _ndcg_and_tau(frame, label):
    from scipy.stats import kendalltau

    nd, tau = [], []
    disc = 1 / np.log2(np.arange(2, 12))
    for _, d in frame.groupby(level=0):
        g = d["grade"].to_numpy()
        order = np.argsort(-d[label].to_numpy(), kind="stable")[:10]
        ideal = (2.0 ** np.sort(g)[::-1][:10] - 1) @ disc[:min(10, len(g))]
        if ideal > 0:
            nd.append((2.0 ** g[order] - 1) @ disc[:len(order)] / ideal)
        if len(set(g)) > 1:
            tau.append(kendalltau(d[label], g)[0])
    return float(np.mean(nd)), float(np.mean(tau))


def test_affine_labels_rank_better_than_ips_labels(trust, trust_log, trust_est):
    # Labels for a new log from a weak production ranker (grade + 3 N(0, 1)), each pair at one fixed rank:
    # affine labels (c - beta_k) / alpha_k with the trust_em estimate vs IPS labels c / theta_k with the
    # PBM (regression EM) estimate, both fitted on the two-ranker log; each pair's label is its mean.
    pbm_est = regression_em(trust_log, ranks=10)
    new = simulate_log(trust, 50_000, versions=("weak",), ranker_noise=3.0, rng=22, **SIM)
    k, c = new["rank"].to_numpy(), new["click"].to_numpy()
    new = new.assign(affine=(c - trust_est.beta(k)) / trust_est.alpha(k), ips=c / pbm_est.theta[k - 1])
    per_pair = new.groupby(["user_query", "product_id"]).agg(grade=("grade", "first"), affine=("affine", "mean"),
                                                             ips=("ips", "mean"))
    nd_aff, tau_aff = _ndcg_and_tau(per_pair, "affine")
    nd_ips, tau_ips = _ndcg_and_tau(per_pair, "ips")
    assert nd_aff > nd_ips + 0.01 and tau_aff > tau_ips + 0.04, (nd_aff, nd_ips, tau_aff, tau_ips)
    # and the affine labels estimate relevance on its absolute scale: mean label per grade ~ (2^g - 1) / 15
    by_grade = per_pair.groupby("grade")["affine"].mean()
    np.testing.assert_allclose(by_grade.to_numpy(), (2.0 ** by_grade.index.to_numpy() - 1) / 15, atol=0.06)


def test_trust_em_needs_pairs_at_several_ranks(trust):
    log = simulate_log(trust, 5_000, rng=3, **SIM)                # one deterministic ranker: one rank per pair
    with pytest.raises(InsufficientInterventionsError, match="more than one rank") as e:
        trust_bias_em(log)
    assert e.value.missing_ranks == list(range(2, 11))
    with pytest.raises(ValueError, match="levels must be at least 2"):
        trust_bias_em(log, levels=1)
