"""Click labels: hand-made logs for every labeler, onto slates, and IPS against naive on a simulated PBM log."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fusionrank.errors import FusionrankError, SchemaError, UnknownNameError
from fusionrank.feedback.bias import PositionBias
from fusionrank.feedback.labels import (LABEL_COLUMNS, LABELERS, LOG_COLUMNS, action_signal, attach_click_labels,
                                        click_labels, fit_direct_method, relative_logging_scores)
from fusionrank.ranking import Slates

THETA = [1.0, 0.5, 0.25, 0.2]


def _log(rows) -> pd.DataFrame:
    """rows: (user_query, product_id, rank, click, add_to_cart, purchase); the other columns are filled in."""
    recs = []
    for i, (uq, pid, rank, c, a, p) in enumerate(rows):
        recs.append({"query_id": f"s{i}", "user_query": uq, "product_id": pid, "rank": rank, "logged_rank": rank,
                     "grid_row": (rank - 1) // 2 + 1, "grid_col": (rank - 1) % 2 + 1, "model_version": "m1",
                     "click": c, "add_to_cart": a, "purchase": p})
    return pd.DataFrame(recs, columns=list(LOG_COLUMNS))


def _by_pair(labels: pd.DataFrame) -> dict:
    assert list(labels.columns) == list(LABEL_COLUMNS)
    return {(r.user_query, r.product_id): (r.label, r.impressions, r.signal_sum) for r in labels.itertuples()}


LOG = _log([
    ("shoes", "A", 1, 1, 0, 0),
    ("shoes", "A", 2, 1, 0, 0),
    ("shoes", "B", 2, 1, 0, 0),
    ("shoes", "B", 1, 0, 0, 0),
    ("shoes", "C", 3, 0, 0, 0),
    ("bags", "A", 4, 1, 1, 0),
])


def test_labelers_registered():
    assert LABELERS.names() == ["affine", "dr", "ips", "naive"]
    with pytest.raises(UnknownNameError) as info:
        click_labels(LOG, "ipw")
    assert info.value.valid == ["affine", "dr", "ips", "naive"]


def test_action_signal_weights():
    log = _log([("q", "A", 1, 1, 0, 0), ("q", "B", 1, 0, 1, 0), ("q", "C", 1, 1, 1, 1), ("q", "D", 1, 0, 0, 0),
                ("q", "E", 1, 2, 0, 0)])
    assert action_signal(log).tolist() == [1.0, 2.0, 7.0, 0.0, 2.0]  # a cart without a click still counts
    assert action_signal(log, {"click": 1.0}).tolist() == [1.0, 0.0, 1.0, 0.0, 2.0]
    assert action_signal(log, {"click": 0.5, "purchase": 10.0}).tolist() == [0.5, 0.0, 10.5, 0.0, 1.0]
    with pytest.raises(SchemaError) as info:
        action_signal(log.drop(columns=["purchase"]))
    assert info.value.missing == ["purchase"]


def test_naive_ignores_position():
    got = _by_pair(click_labels(LOG, "naive", PositionBias(THETA)))
    assert got[("shoes", "A")] == (1.0, 2, 2.0)
    assert got[("shoes", "B")] == (0.5, 2, 1.0)
    assert got[("shoes", "C")] == (0.0, 1, 0.0)
    assert got[("bags", "A")] == (3.0, 1, 3.0)
    assert _by_pair(click_labels(LOG, "naive")) == got  # no bias needed


def test_ips_weights_exact():
    got = _by_pair(click_labels(LOG, "ips", PositionBias(THETA)))
    assert got[("shoes", "A")][0] == pytest.approx((1 / 1.0 + 1 / 0.5) / 2)  # a click at rank 2 (theta 0.5) counts 2
    assert got[("shoes", "B")][0] == pytest.approx((1 / 0.5 + 0) / 2)
    assert got[("shoes", "C")][0] == 0.0
    assert got[("bags", "A")] == pytest.approx((3 / 0.2, 1, 3.0))  # click + cart = 3, at rank 4
    # ranks past the table take the last propensity; clipping bounds it from below
    far = _log([("q", "A", 9, 1, 0, 0)])
    assert click_labels(far, "ips", PositionBias(THETA))["label"].item() == pytest.approx(5.0)
    assert click_labels(far, "ips", PositionBias(THETA), clip=0.5)["label"].item() == pytest.approx(2.0)
    assert click_labels(far, "ips", PositionBias(THETA), weights={"click": 3.0})["label"].item() == pytest.approx(15.0)
    with pytest.raises(FusionrankError, match="PositionBias"):
        click_labels(LOG, "ips")


def test_ips_by_grid_cell():
    bias = PositionBias(THETA, theta_grid=[[1.0, 0.8], [0.4, 0.1]])
    got = _by_pair(click_labels(LOG, "ips", bias, position="grid"))
    # rank 1 -> cell (1,1), rank 2 -> (1,2), rank 4 -> (2,2)
    assert got[("shoes", "A")][0] == pytest.approx((1 / 1.0 + 1 / 0.8) / 2)
    assert got[("bags", "A")][0] == pytest.approx(3 / 0.1)
    with pytest.raises(FusionrankError, match="theta_grid"):
        click_labels(LOG, "ips", PositionBias(THETA), position="grid")


def test_affine_with_click_noise():
    ep, em = [0.9, 0.8, 0.8, 0.7], [0.1, 0.2, 0.2, 0.3]
    bias = PositionBias(THETA, ep, em)
    alpha = [t * (p - m) for t, p, m in zip(THETA, ep, em)]
    beta = [t * m for t, m in zip(THETA, em)]
    got = _by_pair(click_labels(LOG, "affine", bias))
    assert got[("shoes", "A")][0] == pytest.approx(((1 - beta[0]) / alpha[0] + (1 - beta[1]) / alpha[1]) / 2)
    assert got[("shoes", "B")][0] == pytest.approx(((1 - beta[1]) / alpha[1] + (0 - beta[0]) / alpha[0]) / 2)
    assert got[("shoes", "C")][0] == pytest.approx(-beta[2] / alpha[2])  # a non-click at a noisy rank is negative
    assert got[("shoes", "C")][0] < 0


def test_affine_without_noise_is_ips():
    a = click_labels(LOG, "affine", PositionBias(THETA))
    b = click_labels(LOG, "ips", PositionBias(THETA))
    pd.testing.assert_frame_equal(a, b)


def test_dr_with_zero_r_hat_is_ips_for_pairs_shown_at_one_rank():
    log = LOG.assign(r_hat=0.0)
    dr = _by_pair(click_labels(log, "dr", PositionBias(THETA)))
    ips = _by_pair(click_labels(log, "ips", PositionBias(THETA)))
    for pair in [("shoes", "C"), ("bags", "A")]:
        assert dr[pair] == pytest.approx(ips[pair])
    # shown at two ranks: the ratio estimator sum(c) / sum(theta), not the mean of c / theta
    assert dr[("shoes", "A")][0] == pytest.approx(2 / 1.5)


def test_dr_by_hand_and_unseen_candidates():
    ep, em = [0.9, 0.8, 0.8, 0.7], [0.1, 0.2, 0.2, 0.3]
    bias = PositionBias(THETA, ep, em)
    alpha = [t * (p - m) for t, p, m in zip(THETA, ep, em)]
    beta = [t * m for t, m in zip(THETA, em)]
    r_hat = pd.DataFrame({"user_query": ["shoes", "shoes", "shoes", "bags", "shoes"],
                          "product_id": ["A", "B", "C", "A", "Z"], "r_hat": [0.6, 0.3, 0.1, 0.5, 0.7]})
    got = _by_pair(click_labels(LOG, "dr", bias, r_hat=r_hat))
    expected_a = 0.6 + ((1 - beta[0] - alpha[0] * 0.6) + (1 - beta[1] - alpha[1] * 0.6)) / (alpha[0] + alpha[1])
    assert got[("shoes", "A")][0] == pytest.approx(expected_a)
    expected_c = 0.1 + (0 - beta[2] - alpha[2] * 0.1) / alpha[2]
    assert got[("shoes", "C")][0] == pytest.approx(expected_c)
    assert got[("shoes", "Z")] == (0.7, 0, 0.0)  # never shown: the direct-method estimate
    # the same r_hat as a log column or an array gives the same labels for the logged pairs
    col = LOG.merge(r_hat, on=["user_query", "product_id"])
    by_col = click_labels(col, "dr", bias, r_hat="r_hat")
    by_arr = click_labels(col, "dr", bias, r_hat=col["r_hat"].to_numpy())
    pd.testing.assert_frame_equal(by_col, by_arr)
    assert _by_pair(by_col)[("shoes", "A")][0] == pytest.approx(expected_a)
    with pytest.raises(FusionrankError, match="r_hat has no value"):
        click_labels(LOG, "dr", bias, r_hat=r_hat.iloc[:2])


def test_dr_with_exact_r_hat_and_expected_clicks_is_r_hat():
    """Clicks equal to their expectation alpha r + beta: the correction term vanishes."""
    bias = PositionBias(THETA, [0.9, 0.8, 0.8, 0.7], [0.1, 0.2, 0.2, 0.3])
    log = _log([("q", "A", 1, 0, 0, 0), ("q", "A", 3, 0, 0, 0)])
    r = 0.4
    log["click"] = bias.alpha(log["rank"]) * r + bias.beta(log["rank"])
    got = click_labels(log, "dr", bias, r_hat=np.full(2, r), weights={"click": 1.0})
    assert got["label"].item() == pytest.approx(r)


def _slates():
    rows = np.array([[0, 1, 2, -1], [3, 0, -1, -1]], np.int64)
    x = np.zeros((2, 4, 2), np.float32)
    x[..., 0] = [[1, 2, 3, 0], [4, 5, 0, 0]]
    y = np.array([[2, 0, 1, -1], [3, 0, -1, -1]], np.float32)
    return Slates(["j1", "j2"], ["shoes", "bags"], rows, x, np.ones((2, 4, 1), bool), np.zeros((2, 1), np.float32), y)


IDS = np.array(["A", "B", "C", "D"], dtype=object)


def test_attach_click_labels():
    sl = _slates()
    labels = click_labels(LOG, "ips", PositionBias(THETA))
    out = attach_click_labels(sl, labels, IDS)
    assert out.y.tolist() == [[1.5, 1.0, 0.0, -1.0], [0.0, 15.0, -1.0, -1.0]]
    assert sl.y[0, 0] == 2  # the input is not changed
    assert out.rows is sl.rows
    fill = np.full(sl.rows.shape, 0.25)
    assert attach_click_labels(sl, labels, IDS, fill=fill).y.tolist() == [[1.5, 1.0, 0.0, -1.0], [0.25, 15.0, -1.0, -1.0]]
    mixed = attach_click_labels(sl, labels, IDS, mix={"judgments": 1.0, "clicks": 0.5})
    assert mixed.y.tolist() == [[2.75, 0.5, 1.0, -1.0], [3.0, 7.5, -1.0, -1.0]]
    with pytest.raises(FusionrankError, match="mix key"):
        attach_click_labels(sl, labels, IDS, mix={"grades": 1.0})


def test_direct_method_fits_and_feeds_dr():
    sl = _slates()
    labels = pd.DataFrame({"user_query": ["shoes", "shoes", "shoes", "bags"], "product_id": ["A", "B", "C", "D"],
                           "label": [1.0, 2.0, 3.0, 4.0], "impressions": [1, 1, 1, 1], "signal_sum": 0.0})
    dm = fit_direct_method(sl, labels, IDS, ridge_alpha=1e-6)  # label == feature 0 on the labelled candidates
    pred = dm.predict(sl)
    assert pred[sl.rows >= 0] == pytest.approx([1, 2, 3, 4, 5], abs=1e-3)
    assert np.all(pred[sl.rows < 0] == 0)
    frame = dm.frame(sl, IDS)
    assert list(frame.columns) == ["user_query", "product_id", "r_hat"] and len(frame) == 5
    assert frame.set_index(["user_query", "product_id"]).loc[("bags", "A"), "r_hat"] == pytest.approx(5, abs=1e-3)


def test_relative_logging_scores_by_hand():
    sl = _slates()
    s = np.array([[3.0, 1.0, 2.5, np.nan], [-1.0, -4.0, 7.0, 9.0]])  # padding may hold anything
    got = relative_logging_scores(sl, s)
    assert got.tolist() == [[0.0, -2.0, -0.5, 0.0], [0.0, -3.0, 0.0, 0.0]]
    assert relative_logging_scores(sl, s + 100.0).tolist() == got.tolist()  # a shift per query changes nothing
    with pytest.raises(FusionrankError, match="shape"):
        relative_logging_scores(sl, s[:, :3])
    with pytest.raises(FusionrankError, match="not finite"):
        relative_logging_scores(sl, np.where(sl.rows == 1, np.inf, s))


def test_direct_method_with_logging_scores_needs_them_at_predict():
    sl = _slates()
    labels = pd.DataFrame({"user_query": ["shoes", "shoes", "bags"], "product_id": ["A", "B", "D"],
                           "label": [2.0, 1.0, 2.0], "impressions": [1, 1, 1], "signal_sum": 0.0})
    s = np.array([[2.0, 1.0, 0.0, 0.0], [5.0, 4.0, 0.0, 0.0]])
    dm = fit_direct_method(sl, labels, IDS, columns=[1], ridge_alpha=1e-6, logging_scores=s)  # feature 1 is constant
    # label = 2 + (s - best) on the labelled; never labelled: ("shoes", "C") two below its best, ("bags", "A") one below
    assert dm.predict(sl, s)[sl.rows >= 0] == pytest.approx([2, 1, 0, 2, 1], abs=1e-3)
    with pytest.raises(FusionrankError, match="pass logging_scores"):
        dm.predict(sl)
    with pytest.raises(FusionrankError, match="without logging scores"):
        fit_direct_method(sl, labels, IDS).predict(sl, s)


def _strong_logger():
    """300 queries of 20 candidates; a logger that nearly knows the relevance shows its top 10; expected clicks (PBM 1/k)."""
    rng = np.random.default_rng(0)
    sl, ids = _problem(300, rng, "s")
    logger = 1.5 * sl.x[..., 0] + sl.x[..., 1] + 0.3 * rng.normal(size=sl.rows.shape)
    top = np.argsort(-logger, axis=1)[:, :TOP]
    shown = np.zeros(sl.rows.shape, bool)
    np.put_along_axis(shown, top, True, 1)
    theta = 1.0 / np.arange(1, TOP + 1)
    b = np.repeat(np.arange(len(sl)), TOP)
    log = pd.DataFrame({"user_query": np.asarray(sl.queries, dtype=object)[b], "product_id": ids[sl.rows[b, top.ravel()]],
                        "rank": np.tile(np.arange(1, TOP + 1), len(sl))})
    log["click"] = theta[log["rank"] - 1] * np.take_along_axis(sl.y, top, 1).ravel() / 3.0  # expected clicks: no noise
    log["add_to_cart"] = log["purchase"] = 0
    return sl, ids, logger, top, shown, theta, log


def test_dr_with_logging_scores_does_not_lift_what_a_strong_logger_left_out():
    """A logger that knows the relevance shows its top 10 of 20; the direct method sees only an irrelevant feature.

    Fitted on the shown (mostly relevant) candidates alone, it labels the 10 never shown about as
    high as the shown; given the logger's scores it learns that relevance falls with them.
    """
    sl, ids, logger, top, shown, theta, log = _strong_logger()
    bias, w = PositionBias(theta), {"click": 1.0}
    affine = click_labels(log, "affine", bias, weights=w)

    def dr_labels(scores):
        dm = fit_direct_method(sl, affine, ids, columns=[2], logging_scores=scores)
        lab = click_labels(log, "dr", bias, r_hat=dm.frame(sl, ids, scores), weights=w)
        return attach_click_labels(sl, lab, ids, fill=dm.predict(sl, scores)).y

    plain, with_scores = dr_labels(None), dr_labels(logger)
    true = sl.y / 3.0
    assert with_scores[shown] == pytest.approx(true[shown], abs=1e-6)  # exact clicks: dr recovers the shown exactly
    assert plain[~shown].mean() > 0.8 * true[shown].mean() > 2 * true[~shown].mean()
    assert with_scores[~shown].mean() < plain[~shown].mean() / 2
    naive = attach_click_labels(sl, click_labels(log, "naive", weights=w), ids).y
    ndcg = {k: _true_ndcg_of_scores(v, sl) for k, v in {"plain": plain, "with_scores": with_scores, "naive": naive}.items()}
    # as rankings of the candidates: near the logger's own (naive) and far above the regression on features alone
    assert ndcg["with_scores"] > ndcg["naive"] - 0.01 and ndcg["with_scores"] > ndcg["plain"] + 0.05, ndcg


def test_which_direct_methods_carry_the_logging_score_below_the_shown():
    """The strong logger of the test above: how low each regression puts the candidates it never showed.

    A ridge (and the partially linear model, linear in the logging score) continues the score's slope
    below the shown range; trees with linear leaves continue part of it; plain boosted trees are
    nearly flat there and label the never shown almost like the lowest shown (on fashion44k that cost
    a strong logger's dr 0.05 NDCG@10: ``benchmarks/results/learning_from_clicks.md``).
    """
    sl, ids, logger, top, shown, theta, log = _strong_logger()
    affine = click_labels(log, "affine", PositionBias(theta), weights={"click": 1.0})
    ratio = {}
    for regressor in ("ridge", "partially_linear", "trees_plus_slope", "lightgbm_linear", "lightgbm"):
        dm = fit_direct_method(sl, affine, ids, columns=[2], logging_scores=logger, regressor=regressor, seed=0)
        r = dm.predict(sl, logger)
        ratio[regressor] = r[~shown].mean() / np.take_along_axis(r, top[:, -1:], 1).mean()  # never shown / lowest shown
    assert max(ratio["ridge"], ratio["partially_linear"], ratio["trees_plus_slope"]) < 0.5 < ratio["lightgbm_linear"] < ratio["lightgbm"], ratio
    assert ratio["lightgbm"] > 0.7, ratio


def test_trees_plus_slope_is_trees_on_the_features_when_the_logging_score_is_a_feature():
    """A weak logger ranks by feature 1 alone (as BM25 ranks by the title's BM25, itself a feature).

    Its score adds nothing beyond the features, so the trees-plus-slope direct method is boosted trees
    on the features (slope 0): its estimate for the candidates the logger never showed equals theirs, flat in
    the logging score, and it finds the relevance (a step in feature 0) among them as among the shown.
    """
    from fusionrank.feedback.labels import TreesPlusSlope

    rng = np.random.default_rng(0)
    B, N, K = 300, 20, 10
    x = rng.uniform(-1, 1, size=(B, N, 3)).astype(np.float32)
    rel = (x[..., 0] > 0.3).astype(np.float32)
    rows = np.arange(B * N).reshape(B, N)
    ids = np.array([f"p{i}" for i in range(B * N)])
    queries = [f"q{b}" for b in range(B)]
    sl = Slates([f"j{b}" for b in range(B)], queries, rows, x, np.ones((B, N, 1), bool), np.zeros((B, 1), np.float32), rel)
    logger = 3.0 * x[..., 1]
    top = np.argsort(-logger, axis=1)[:, :K]
    shown = np.zeros((B, N), bool)
    np.put_along_axis(shown, top, True, 1)
    labels = pd.DataFrame({"user_query": np.repeat(queries, K), "product_id": ids[np.take_along_axis(rows, top, 1).ravel()],
                           "label": np.take_along_axis(rel, top, 1).ravel(), "impressions": 50, "signal_sum": 0.0})
    dm = fit_direct_method(sl, labels, ids, logging_scores=logger, regressor="trees_plus_slope", seed=0)
    assert isinstance(dm.model, TreesPlusSlope) and dm.model.beta < 0.02
    r = dm.predict(sl, logger)
    trees = fit_direct_method(sl, labels, ids, regressor="lightgbm", seed=0).predict(sl)
    assert np.abs(r - trees)[~shown].mean() < 0.05
    assert np.mean((r[~shown] > 0.5) == (rel[~shown] > 0.5)) > 0.9  # the step in feature 0 holds below the shown too
    with pytest.raises(FusionrankError, match="logging_scores"):
        fit_direct_method(sl, labels, ids, regressor="trees_plus_slope")


def _true_ndcg_of_scores(scores, sl):
    from fusionrank.metrics import ndcg_at_k_padded

    tie = 1e-9 * np.random.default_rng(1).random(scores.shape)  # naive labels tie at 0 among the unshown
    return float(ndcg_at_k_padded(scores + tie, sl.y, 10, mask=sl.rows >= 0).mean())


# --- end to end: a simulated position-biased click log -------------------------------------------

N_CAND, TOP, N_FEAT = 20, 10, 3


@pytest.fixture
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _problem(n_queries, rng, prefix):
    """Grades 0..3 from 1.5 x0 + x1 (x2 is irrelevant); slates of N_CAND candidates, no padding."""
    x = rng.normal(size=(n_queries, N_CAND, N_FEAT)).astype(np.float32)
    latent = 1.5 * x[..., 0] + 1.0 * x[..., 1]
    grades = np.digitize(latent, [0.5, 1.5, 2.5]).astype(np.float32)
    rows = np.arange(n_queries * N_CAND).reshape(n_queries, N_CAND)
    texts = [f"{prefix}{b}" for b in range(n_queries)]
    sl = Slates(texts, texts, rows, x, np.ones((n_queries, N_CAND, 1), bool), np.zeros((n_queries, 1), np.float32), grades)
    ids = np.array([f"{prefix}p{r}" for r in range(rows.size)], dtype=object)
    return sl, ids


def _simulate_pbm_log(sl, ids, rng, sessions=10):
    """A weak logger that mostly follows the irrelevant x2 shows the top 10; clicks ~ Bernoulli(theta_k * grade / 3)."""
    B = len(sl)
    theta = 1.0 / np.arange(1, TOP + 1)
    recs = []
    for _ in range(sessions):
        score = 1.5 * sl.x[..., 2] + 0.5 * sl.x[..., 0] + rng.gumbel(size=(B, N_CAND))
        shown = np.argsort(-score, axis=1)[:, :TOP]  # [B, TOP] candidate slots in shown order
        rel = np.take_along_axis(sl.y, shown, 1) / 3.0
        clicks = (rng.random((B, TOP)) < theta * rel).astype(int)
        b = np.repeat(np.arange(B), TOP)
        recs.append(pd.DataFrame({"user_query": np.asarray(sl.queries, dtype=object)[b],
                                  "product_id": ids[sl.rows[b, shown.ravel()]],
                                  "rank": np.tile(np.arange(1, TOP + 1), B), "click": clicks.ravel()}))
    log = pd.concat(recs, ignore_index=True)
    log["add_to_cart"] = 0
    log["purchase"] = 0
    return log, PositionBias(theta)


def _true_ndcg(ranker, sl):
    from fusionrank.metrics import ndcg_at_k_padded

    return float(ndcg_at_k_padded(ranker.predict(sl), sl.y, 10, mask=sl.rows >= 0).mean())


def test_ips_beats_naive_on_simulated_clicks(one_torch_thread):
    from fusionrank.rankers import FeatureGroup, NeuralRanker

    rng = np.random.default_rng(0)
    train, ids = _problem(200, rng, "tr")
    test, _ = _problem(100, rng, "te")
    log, bias = _simulate_pbm_log(train, ids, rng)
    groups = [FeatureGroup("f", list(range(N_FEAT)), 0)]
    scores = {}
    for method in ("naive", "ips"):
        sl = attach_click_labels(train, click_labels(log, method, bias, weights={"click": 1.0}), ids)
        r = NeuralRanker(scorer="linear", use_embeddings=False, loss={"name": "ips_listwise", "args": {}}, hidden=4,
                         dropout=0.0, modality_dropout=0.0, lr=0.02, epochs=25, batch_size=16, seed=0)
        r.fit(sl, groups, log=None)
        scores[method] = _true_ndcg(r, test)
    assert scores["ips"] > scores["naive"] + 0.03, scores


def test_attach_matches_keys_as_strings():
    sl = _slates()
    sl.queries = ["7", "bags"]
    ids = np.array([10, 11, 12, 13], dtype=object)
    labels = pd.DataFrame({"user_query": [7, "bags"], "product_id": ["10", 13], "label": [0.5, 2.0]})
    assert attach_click_labels(sl, labels, ids).y.tolist() == [[0.5, 0.0, 0.0, -1.0], [2.0, 0.0, -1.0, -1.0]]


def test_direct_method_regressors_by_name():
    """Relevance that is a step in a feature: boosted trees find the step, a line cannot; unknown names list the valid ones."""
    from fusionrank.errors import UnknownNameError
    from fusionrank.feedback.labels import DM_REGRESSORS
    rng = np.random.default_rng(0)
    B, N = 200, 10
    x = rng.uniform(-1, 1, size=(B, N, 2)).astype(np.float32)
    rel = (np.abs(x[..., 0]) > 0.5).astype(float)  # relevant at both ends: not linear in the feature
    rows = np.arange(B * N).reshape(B, N)
    ids = np.array([f"p{i}" for i in range(B * N)])
    sl = Slates([f"j{b}" for b in range(B)], [f"q{b}" for b in range(B)], rows, x, np.ones((B, N, 1), bool),
                np.zeros((B, 1), np.float32), rel.astype(np.float32))
    labels = pd.DataFrame({"user_query": np.repeat([f"q{b}" for b in range(B)], N), "product_id": ids,
                           "label": rel.ravel(), "impressions": 1, "signal_sum": 0.0})
    err = {}
    for name in ("ridge", "lightgbm"):
        pred = fit_direct_method(sl, labels, ids, regressor=name, seed=0).predict(sl)
        err[name] = float(np.mean((pred - rel) ** 2))
    assert err["lightgbm"] < 0.05 < err["ridge"]
    assert set(DM_REGRESSORS.names()) >= {"ridge", "lightgbm"}
    with pytest.raises(UnknownNameError, match="lightgbm"):
        fit_direct_method(sl, labels, ids, regressor="forest")
