"""LambdaLoss: NDCG-weighted pairwise logistic loss (Wang et al. 2018)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import DEFAULT_EPS, LOSSES, PADDED_Y_VALUE, gains, mask_padding, mean_over_queries, pair_mask

WEIGHING_SCHEMES = (None, "lambdaRank", "ndcgLoss2", "ndcgLoss2++")


def _inverse_discount(positions: Tensor) -> Tensor:
    """``1 / log2(1 + r)`` for 1-based ranks ``r``."""
    return 1.0 / torch.log2(1.0 + positions)


def _ranks(scores: Tensor, valid: Tensor) -> Tensor:
    """1-based rank of every item under the current scores, padding ranked last.

    Ties are broken by position in the slate (stable sort); ranks are constants (no grad).
    """
    keys = torch.where(valid, scores.detach(), torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device))
    order = torch.argsort(keys, dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(1, scores.shape[1] + 1, device=scores.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return ranks.to(scores.dtype)


@LOSSES.register("lambdaloss")
def lambdaloss(
    y_pred: Tensor,
    y_true: Tensor,
    padded_value_indicator: float = PADDED_Y_VALUE,
    *,
    weighing_scheme: str | None = "ndcgLoss2++",
    k: int | None = None,
    sigma: float = 1.0,
    mu: float = 10.0,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """LambdaLoss with NDCG-Loss2, NDCG-Loss2++ or LambdaRank pair weights.

    Shapes: ``y_pred`` and ``y_true`` are ``[B, S]``; returns a scalar.

    Items are ranked by the current scores (rank ``r_i``, 1-based, no gradient). With
    gains ``G_i = (2^y_i - 1) / maxDCG`` (maxDCG = ideal DCG@k, clamped to >= eps) and
    inverse discounts ``1/D_r = 1/log2(1 + r)``, per query q::

        l_q = sum_{(i,j): y_i > y_j} w_ij * log2(1 + exp(-sigma * (s_i - s_j)))
            = -sum log2(sigmoid(sigma * (s_i - s_j)) ** w_ij)
        loss = mean of l_q over queries with at least one valid item

    Weighing schemes (``|.|`` absolute value)::

        "lambdaRank":  w_ij = |1/D_{r_i} - 1/D_{r_j}| * |G_i - G_j|   (|Delta NDCG| of swapping i, j)
        "ndcgLoss2":   w_ij = |1/D_{|r_i-r_j|} - 1/D_{|r_i-r_j|+1}| * |G_i - G_j|
        "ndcgLoss2++": w_ij = mu * ndcgLoss2_ij + lambdaRank_ij
        None:          w_ij = 1 (RankNet with base-2 log)

    Top-k (``k`` not None): only pairs with at least one item ranked in the top k count,
    maxDCG is the ideal DCG@k and the discounts of ranks beyond k are 0 in "lambdaRank"
    (the truncated-metric fix of Jagerman et al., "On Optimizing Top-K Metrics for
    Neural Ranking Models", SIGIR 2022).

    Numerics: the pair term is ``softplus(-x) / ln 2`` (no log(0) or overflow), maxDCG is
    clamped to ``eps``. Slates with no relevant item, with all grades equal or made only of
    padding have no weighted pair and contribute 0.

    Args:
        y_pred: predicted scores ``s``.
        y_true: graded relevance (0..4); ``padded_value_indicator`` marks padding.
        padded_value_indicator: y_true value of padded positions.
        weighing_scheme: None, "lambdaRank", "ndcgLoss2" or "ndcgLoss2++".
        k: rank cutoff of the NDCG being optimised; None = whole slate.
        sigma: steepness of the pairwise sigmoid.
        mu: weight of the ndcgLoss2 term in "ndcgLoss2++".
        eps: lower clamp of maxDCG.

    Wang, Li, Golbandi, Bendersky, Najork, "The LambdaLoss Framework for Ranking Metric
    Optimization", CIKM 2018; follows allRank's ``lambdaLoss`` (reduction: sum over pairs).
    """
    if weighing_scheme not in WEIGHING_SCHEMES:
        raise ValueError(
            f"unknown lambdaloss weighing_scheme {weighing_scheme!r}; valid: {', '.join(map(str, WEIGHING_SCHEMES))}"
        )
    if k is not None and k < 1:
        raise ValueError(f"k must be a positive integer or None, got {k}")
    valid, s, y = mask_padding(y_pred, y_true, padded_value_indicator)
    n = s.shape[1]
    kk = n if k is None else min(k, n)

    ranks = _ranks(s, valid)  # [B, S]
    pairs = pair_mask(valid, y)
    if kk < n:
        in_top = ranks <= kk
        pairs = pairs & (in_top[:, :, None] | in_top[:, None, :])

    with torch.no_grad():  # weights depend only on labels and (discrete) ranks
        g = torch.where(valid, gains(y), torch.zeros((), dtype=s.dtype, device=s.device))
        ideal = torch.sort(g, dim=-1, descending=True).values[:, :kk]
        positions = torch.arange(1, kk + 1, dtype=s.dtype, device=s.device)
        max_dcg = (ideal * _inverse_discount(positions)).sum(dim=-1).clamp(min=eps)
        G = g / max_dcg[:, None]
        gain_diff = (G[:, :, None] - G[:, None, :]).abs()

        def lambda_rank() -> Tensor:
            inv_d = _inverse_discount(ranks)
            if kk < n:
                inv_d = torch.where(ranks <= kk, inv_d, torch.zeros_like(inv_d))
            return (inv_d[:, :, None] - inv_d[:, None, :]).abs() * gain_diff

        def ndcg_loss2() -> Tensor:
            delta = (ranks[:, :, None] - ranks[:, None, :]).abs()
            # delta == 0 only on the diagonal, never a counted pair; clamp avoids 1/log2(1).
            d = (_inverse_discount(delta.clamp(min=1)) - _inverse_discount(delta + 1)).abs()
            return d * gain_diff

        if weighing_scheme is None:
            weights = torch.ones_like(gain_diff)
        elif weighing_scheme == "lambdaRank":
            weights = lambda_rank()
        elif weighing_scheme == "ndcgLoss2":
            weights = ndcg_loss2()
        else:
            weights = mu * ndcg_loss2() + lambda_rank()

    diffs = s[:, :, None] - s[:, None, :]
    per_pair = weights * F.softplus(-sigma * diffs) / math.log(2.0)
    zero = torch.zeros((), dtype=per_pair.dtype, device=per_pair.device)
    per_query = torch.where(pairs, per_pair, zero).sum(dim=(1, 2))
    return mean_over_queries(per_query, valid)
