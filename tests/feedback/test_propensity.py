"""Position-bias estimators recover known propensities from simulated logs of 10^5 sessions."""
from __future__ import annotations

import numpy as np
import pytest

from fusionrank.errors import SchemaError, UnknownNameError
from fusionrank.feedback.bias import PositionBias
from fusionrank.feedback.clickmodels import GridPositionBased, PositionBased, TableExamination, simulate_log
from fusionrank.feedback.propensity import (
    ESTIMATORS, InsufficientInterventionsError, estimate_from_swaps, intervention_harvesting, regression_em)

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
    assert ESTIMATORS.names() == ["em", "harvest", "swaps"]
    assert ESTIMATORS.get("harvest") is intervention_harvesting
    with pytest.raises(UnknownNameError, match="valid names: em, harvest, swaps"):
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
