"""Hand-computed loss values on tiny slates."""
from __future__ import annotations

import math

import pytest
import torch

from fusionrank.losses import PADDED_Y_VALUE as P
from fusionrank.losses import bce, get_loss, lambdaloss, listnet, mse, ranknet

LN2 = math.log(2.0)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def softplus(x):
    return math.log1p(math.exp(x))


def close(value, expected):
    assert value.dim() == 0
    assert value.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


# ---- mse ---------------------------------------------------------------------------
def test_mse_three_items():
    close(mse(t([[1, 1, 1]]), t([[2, 1, 0]])), (1 + 0 + 1) / 3)


def test_mse_scaled_by_max_grade():
    # targets [1, .5, 0]
    close(mse(t([[1, 1, 1]]), t([[2, 1, 0]]), max_grade=2.0), (0 + 0.25 + 1) / 3)


def test_mse_is_mean_of_per_query_means():
    # q1: mean(0.25, 0.25) ... q2 has one valid item with error 2 -> 4
    close(mse(t([[0.5, 0.5], [0.0, 9.0]]), t([[1, 0], [2, P]])), (0.25 + 4.0) / 2)


# ---- bce ---------------------------------------------------------------------------
def test_bce_zero_logits_is_log2():
    close(bce(t([[0, 0, 0]]), t([[4, 2, 0]])), LN2)


def test_bce_confident_logits():
    # targets [1, 0]: each term is log(1 + e^-2)
    close(bce(t([[2, -2]]), t([[4, 0]])), softplus(-2))


def test_bce_soft_target():
    # target .5, logit 1: softplus(1) - .5 * 1
    close(bce(t([[1.0]]), t([[2.0]]), max_grade=4.0), softplus(1) - 0.5)


# ---- ranknet -----------------------------------------------------------------------
def test_ranknet_two_items_tied_scores():
    close(ranknet(t([[0, 0]]), t([[1, 0]])), LN2)


def test_ranknet_three_items_reversed():
    # pairs (0,1), (0,2), (1,2) with s_i - s_j = -1, -2, -1
    expected = (softplus(1) + softplus(2) + softplus(1)) / 3
    close(ranknet(t([[0, 1, 2]]), t([[2, 1, 0]])), expected)


def test_ranknet_sigma():
    close(ranknet(t([[0.5, 0]]), t([[1, 0]]), sigma=2.0), softplus(-1))


def test_ranknet_weightings():
    s, y = t([[0, 0, 0]]), t([[2, 1, 0]])
    # gains 3, 1, 0 -> |diffs| 2, 3, 1 ; labels -> 1, 2, 1
    close(ranknet(s, y, weighting="gain_diff"), (2 + 3 + 1) * LN2 / 3)
    close(ranknet(s, y, weighting="label_diff"), (1 + 2 + 1) * LN2 / 3)


def test_ranknet_equal_grades_pairs_ignored():
    # only the pair (0, 2) has different grades
    close(ranknet(t([[0, 5, 1]]), t([[1, 1, 0]])), (softplus(1) + softplus(-4)) / 2)


# ---- listnet -----------------------------------------------------------------------
def test_listnet_two_items_tied_scores():
    close(listnet(t([[0, 0]]), t([[1, 0]])), LN2)


def test_listnet_equals_entropy_when_scores_equal_grades():
    p = 1 / (1 + math.exp(-1))  # softmax([1, 0])[0]
    close(listnet(t([[1, 0]]), t([[1, 0]])), -(p * math.log(p) + (1 - p) * math.log(1 - p)))


def test_listnet_gain_target():
    # gains [3, 0, 0] -> target [1, 0, 0]; uniform prediction -> log 3
    close(listnet(t([[0, 0, 0]]), t([[2, 0, 0]]), target="gains"), math.log(3))
    # gains [3, 1] -> target [.75, .25]; log_softmax([1, 0])
    lse = math.log(math.e + 1)
    close(listnet(t([[1, 0]]), t([[2, 1]]), target="gains"), -(0.75 * (1 - lse) + 0.25 * (0 - lse)))


# ---- lambdaloss --------------------------------------------------------------------
D2 = 1 / math.log2(3)  # inverse discount at rank 2
D3 = 0.5  # rank 3


@pytest.mark.parametrize(
    "scheme, weight",
    [("lambdaRank", 1 - D2), ("ndcgLoss2", 1 - D2), ("ndcgLoss2++", 10 * (1 - D2) + (1 - D2)), (None, 1.0)],
)
def test_lambdaloss_two_items(scheme, weight):
    # maxDCG = 1, G = [1, 0], both schemes give |1/D1 - 1/D2|; pair term log2(1 + e^0) = 1
    close(lambdaloss(t([[0, 0]]), t([[1, 0]]), weighing_scheme=scheme), weight)


def test_lambdaloss_two_items_misordered_tie():
    # tie -> stable order, the relevant item is ranked 2nd; same weight
    close(lambdaloss(t([[0, 0]]), t([[0, 1]]), weighing_scheme="lambdaRank"), 1 - D2)


def _three_item_case():
    # ranks under s: item1 -> 1, item0 -> 2, item2 -> 3 (tie broken by position)
    s, y = t([[0, 1, 0]]), t([[2, 0, 1]])
    max_dcg = 3 + 1 * D2
    l_m1 = softplus(1) / LN2  # log2(1 + e^1): pairs with s_i - s_j = -1
    return s, y, max_dcg, l_m1


def test_lambdaloss_three_items_lambdarank():
    s, y, M, l_m1 = _three_item_case()
    # pairs (0,1), (0,2), (2,1); inverse discounts by rank: item0 D2, item1 1, item2 D3
    expected = (abs(D2 - 1) * 3 * l_m1 + abs(D2 - D3) * 2 * 1.0 + abs(D3 - 1) * 1 * l_m1) / M
    close(lambdaloss(s, y, weighing_scheme="lambdaRank"), expected)


def test_lambdaloss_three_items_ndcgloss2():
    s, y, M, l_m1 = _three_item_case()
    # |r_i - r_j|: (0,1) -> 1, (0,2) -> 1, (2,1) -> 2
    d1, d2 = 1 - D2, D2 - D3
    expected = (d1 * 3 * l_m1 + d1 * 2 * 1.0 + d2 * 1 * l_m1) / M
    close(lambdaloss(s, y, weighing_scheme="ndcgLoss2"), expected)
    plus = lambdaloss(s, y, weighing_scheme="ndcgLoss2++", mu=2.0)
    close(plus, 2 * expected + lambdaloss(s, y, weighing_scheme="lambdaRank").item())


def test_lambdaloss_three_items_top1():
    s, y, _, l_m1 = _three_item_case()
    # k=1: only pairs touching rank 1 (item1); maxDCG@1 = 3; discounts beyond rank 1 are 0
    expected = (1 * 3 / 3) * l_m1 + (1 * 1 / 3) * l_m1
    close(lambdaloss(s, y, weighing_scheme="lambdaRank", k=1), expected)


def test_lambdaloss_k_at_least_slate_length_is_untruncated():
    s, y, _, _ = _three_item_case()
    close(lambdaloss(s, y, k=3), lambdaloss(s, y).item())
    close(lambdaloss(s, y, k=50), lambdaloss(s, y).item())


def test_get_loss_binds_args():
    fn = get_loss("ranknet", sigma=2.0)
    close(fn(t([[0.5, 0]]), t([[1, 0]])), softplus(-1))
