"""Click models: marginals against hand-computed values and brute-force enumeration, sampling against marginals."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from fusionrank.errors import UnknownNameError
from fusionrank.feedback.clickmodels import (
    CLICK_MODELS, DBN, ULTRA_THETA, Cascade, ClickNoise, Conversion, GradeRelevance, GridExamination,
    GridPositionBased, PositionBased, PowerLawExamination, TableExamination, TrustBias, simulate_log)

SLATE = np.array([4, 0, 2, 3, 1, 0, 2, 4, 1, 0])


def test_grade_relevance_is_the_ultra_ladder():
    r = GradeRelevance(4)([0, 1, 2, 3, 4, 7, -1])
    np.testing.assert_allclose(r, [0, 1 / 15, 3 / 15, 7 / 15, 1, 1, 0])
    # ClickNoise(0.1, 1.0) reproduces ULTRA's pbm_0.1_1.0_4_1.0 click_prob table
    np.testing.assert_allclose(ClickNoise(0.1, 1.0)(np.arange(5)), [0.1, 0.16, 0.28, 0.52, 1.0])


def test_pbm_eta1_by_hand():
    p = PositionBased(PowerLawExamination(1.0), ClickNoise(0.1, 1.0)).click_probs([4, 0, 2])
    np.testing.assert_allclose(p, [1.0, 0.5 * 0.1, (1 / 3) * 0.28])
    p2 = PositionBased(PowerLawExamination(2.0), ClickNoise(0.0, 1.0)).click_probs([4, 4, 4])
    np.testing.assert_allclose(p2, [1.0, 0.25, 1 / 9])


def test_table_examination_extends_with_last_value():
    theta = TableExamination().theta(12)
    np.testing.assert_allclose(theta[:10], ULTRA_THETA)
    assert theta[10] == theta[11] == ULTRA_THETA[-1]
    b = PositionBased(TableExamination()).bias()
    np.testing.assert_allclose(b.relative().theta, np.array(ULTRA_THETA) / 0.68)


def test_trust_bias_by_hand():
    m = TrustBias()
    p = m.click_probs([4, 0, 2])
    # rank 1: 0.68 * 0.98 (r=1); rank 2: 0.61 * 0.65/2 (r=0); rank 3: 0.48 * (0.65/3 + (0.96 - 0.65/3) * 3/15)
    np.testing.assert_allclose(p, [0.68 * 0.98, 0.61 * 0.325, 0.48 * (0.65 / 3 + (0.96 - 0.65 / 3) * 0.2)])
    b = m.bias()
    np.testing.assert_allclose(b.eps_plus[[0, 9]], [0.98, 0.89])
    np.testing.assert_allclose(b.eps_minus[[0, 9]], [0.65, 0.065])
    # PositionBias's affine form gives back the same click probabilities
    r = GradeRelevance()(np.array([4, 0, 2]))
    np.testing.assert_allclose(b.alpha([1, 2, 3]) * r + b.beta([1, 2, 3]), p)


def test_cascade_by_hand():
    a = [0.28, 0.1, 1.0]                      # grades 2, 0, 4 with ClickNoise(0.1, 1.0)
    p = Cascade(ClickNoise(0.1, 1.0)).click_probs([2, 0, 4])
    np.testing.assert_allclose(p, [a[0], (1 - a[0]) * a[1], (1 - a[0]) * (1 - a[1]) * a[2]])


def _dbn_brute_force(a, s, gamma):
    """P(click) per rank by enumerating every outcome of (attracted, satisfied, continues) at each rank."""
    n = len(a)
    marg = np.zeros(n)
    for outcome in itertools.product([0, 1], repeat=3 * n):
        prob, examining, clicks = 1.0, True, np.zeros(n)
        for k in range(n):
            att, sat, cont = outcome[3 * k: 3 * k + 3]
            prob *= (a[k] if att else 1 - a[k]) * (s[k] if sat else 1 - s[k]) * (gamma if cont else 1 - gamma)
            if examining:
                clicked = bool(att)
                clicks[k] = clicked
                examining = not (clicked and sat) and bool(cont)
        marg += prob * clicks
    return marg


@pytest.mark.parametrize("grades", [[4, 0, 2], [1, 3, 3, 0], [0, 0, 4]])
def test_dbn_marginals_match_enumeration(grades):
    noise = ClickNoise(0.1, 0.9)
    sat = [0.0, 0.2, 0.4, 0.6, 0.9]
    m = DBN(noise, satisfaction=sat, gamma=0.8)
    g = np.array(grades)
    expected = _dbn_brute_force(noise(g), np.array(sat)[g], 0.8)
    np.testing.assert_allclose(m.click_probs(g), expected, rtol=1e-12)


def test_cascade_is_dbn_limit_and_matches_enumeration():
    g = np.array([1, 3, 0, 2])
    a = ClickNoise()(g)
    np.testing.assert_allclose(Cascade().click_probs(g), _dbn_brute_force(a, np.ones(4), 1.0), rtol=1e-12)


def test_grid_examination_and_bias():
    m = GridPositionBased(GridExamination(row_eta=1.0, col_weights=(1.0, 0.9, 0.8, 0.7)), ClickNoise(0.0, 1.0))
    theta = m.examination.theta(6)            # ranks 1-4 on row 1, 5-6 on row 2
    np.testing.assert_allclose(theta, [1.0, 0.9, 0.8, 0.7, 0.5, 0.45])
    b = m.bias(10)
    assert b.theta_grid.shape == (3, 4)
    assert b.theta_grid[2, 1] == pytest.approx(0.3)
    np.testing.assert_allclose(m.click_probs([4] * 6), theta)
    with pytest.raises(ValueError, match="3 column"):
        GridPositionBased(GridExamination(col_weights=(1, 1, 1)), columns=4)


def test_cascade_and_dbn_have_no_rank_only_bias():
    with pytest.raises(NotImplementedError, match="rank alone"):
        DBN().bias()


def test_registry_lists_names_on_typo():
    assert set(CLICK_MODELS.names()) == {"pbm", "trust_bias", "cascade", "dbn", "grid_pbm"}
    assert isinstance(CLICK_MODELS.get("pbm")(), PositionBased)
    with pytest.raises(UnknownNameError) as e:
        CLICK_MODELS.get("pbn")
    assert "pbm" in e.value.valid and "pbm" in str(e.value)


@pytest.mark.parametrize("name", ["pbm", "trust_bias", "cascade", "dbn", "grid_pbm"])
def test_sample_frequencies_match_click_probs(name):
    m = CLICK_MODELS.get(name)()
    S = 200_000
    clicks = m.sample(SLATE, S, rng=np.random.default_rng(7))
    assert clicks.shape == (S, len(SLATE)) and clicks.dtype == bool
    p = m.click_probs(SLATE)
    se = np.sqrt(p * (1 - p) / S)
    assert np.all(np.abs(clicks.mean(0) - p) < 5 * se + 1e-4), (clicks.mean(0), p)


def test_cascade_samples_at_most_one_click():
    clicks = Cascade().sample(SLATE, 20_000, rng=0)
    assert clicks.sum(1).max() == 1


def test_sample_takes_one_row_per_session():
    g = np.array([[4, 0, 0], [0, 0, 4]])
    c = PositionBased(noise=ClickNoise(0.0, 1.0)).sample(g, rng=0)
    np.testing.assert_array_equal(c, [[True, False, False], [False, False, c[1, 2]]])
    with pytest.raises(ValueError, match="one per session"):
        PositionBased().sample(g, n_sessions=5)


def test_sample_actions_nest_and_are_rarer():
    acts = PositionBased().sample_actions(SLATE, 100_000, rng=1, conversion=Conversion(0.3, 0.5))
    click, cart, buy = acts["click"], acts["add_to_cart"], acts["purchase"]
    assert not (cart & ~click).any() and not (buy & ~cart).any()
    assert click.mean() > cart.mean() > buy.mean() > 0
    # P(cart at rank 1) = P(click) * 0.3 * r = 1 * 0.3 * 1 for grade 4 at rank 1
    assert cart[:, 0].mean() == pytest.approx(0.3, abs=0.01)


def test_simulated_log_swaps_only_rank_one():
    log = simulate_log(PositionBased(), 2_000, swap_share=0.4, ranks=10, rng=3)
    assert len(log) == 20_000
    rand = log[log["randomised"]]
    moved = rand[rand["rank"] != rand["logged_rank"]]
    assert 0.3 < log.groupby("query_id")["randomised"].first().mean() < 0.5
    assert (moved.groupby("query_id").size() == 2).all()
    assert set(moved.loc[moved["rank"] == 1, "logged_rank"]) <= set(range(2, 11))
    assert (log.loc[~log["randomised"], "rank"] == log.loc[~log["randomised"], "logged_rank"]).all()
    assert list(log.loc[log["rank"] == 5, ["grid_row", "grid_col"]].iloc[0]) == [2, 1]
