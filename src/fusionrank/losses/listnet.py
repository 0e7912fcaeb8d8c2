"""ListNet top-one softmax cross-entropy (Cao et al. 2007)."""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import LOSSES, PADDED_Y_VALUE, gains, mask_padding, mean_over_queries

TARGETS = ("softmax", "gains")


@LOSSES.register("listnet")
def listnet(
    y_pred: Tensor,
    y_true: Tensor,
    padded_value_indicator: float = PADDED_Y_VALUE,
    *,
    target: str = "softmax",
) -> Tensor:
    """ListNet: cross-entropy between top-one probabilities of the grades and of the scores.

    Shapes: ``y_pred`` and ``y_true`` are ``[B, S]``; returns a scalar.

    Formula, per query q with valid items V_q (softmax taken over V_q only)::

        P_y(i) = softmax(y)_i                 (target="softmax")
               = (2^y_i - 1) / sum_j (2^y_j - 1)   (target="gains")
        l_q    = -sum_{i in V_q} P_y(i) * log_softmax(s)_i
        loss   = mean of l_q over queries with at least one valid item

    A slate whose valid items all share one grade (including single-item and all-zero
    slates) carries no ranking information and contributes 0, so every loss in this
    package gives 0 there. Uses ``log_softmax`` (no log(0)).

    Args:
        y_pred: predicted scores ``s``.
        y_true: graded relevance; ``padded_value_indicator`` marks padding.
        padded_value_indicator: y_true value of padded positions.
        target: how grades become the target distribution, "softmax" or "gains".

    Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach", ICML 2007.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown listnet target {target!r}; valid: {', '.join(TARGETS)}")
    valid, s, y = mask_padding(y_pred, y_true, padded_value_indicator)
    neg_inf = torch.tensor(float("-inf"), dtype=s.dtype, device=s.device)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    query_valid = valid.any(dim=-1, keepdim=True)
    # -inf excludes padding from the softmax; all-padding rows fall back to 0 to avoid NaN.
    logits = torch.where(valid, s, neg_inf)
    logits = torch.where(query_valid, logits, zero)
    log_p = torch.where(valid, torch.log_softmax(logits, dim=-1), zero)

    if target == "softmax":
        true_logits = torch.where(query_valid, torch.where(valid, y, neg_inf), zero)
        p_true = torch.where(valid, torch.softmax(true_logits, dim=-1), zero)
    else:
        g = torch.where(valid, gains(y), zero)
        p_true = g / g.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(g.dtype).tiny)

    big = torch.finfo(y.dtype).max
    y_max = torch.where(valid, y, torch.full_like(y, -big)).amax(dim=-1)
    y_min = torch.where(valid, y, torch.full_like(y, big)).amin(dim=-1)
    informative = y_max > y_min
    per_query = -(p_true * log_p).sum(dim=-1)
    per_query = torch.where(informative, per_query, zero)
    return mean_over_queries(per_query, valid)
