"""RankNet pairwise logistic loss (Burges et al. 2005)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import LOSSES, PADDED_Y_VALUE, gains, mask_padding, mean_over_queries, pair_mask

WEIGHTINGS = (None, "label_diff", "gain_diff")


@LOSSES.register("ranknet")
def ranknet(
    y_pred: Tensor,
    y_true: Tensor,
    padded_value_indicator: float = PADDED_Y_VALUE,
    *,
    sigma: float = 1.0,
    weighting: str | None = None,
) -> Tensor:
    """RankNet: logistic loss on every ordered pair of items with different grades.

    Shapes: ``y_pred`` and ``y_true`` are ``[B, S]``; returns a scalar.

    Formula, per query q with P_q = {(i, j) valid, y_i > y_j}::

        l_ij = log(1 + exp(-sigma * (s_i - s_j)))          (softplus, stable)
        l_q  = 1/|P_q| * sum_{(i,j) in P_q} w_ij * l_ij     (0 when P_q is empty)
        loss = mean of l_q over queries with at least one valid item

    Weights ``w_ij``: 1 (``weighting=None``), ``|y_i - y_j|`` (``"label_diff"``) or
    ``|(2^y_i - 1) - (2^y_j - 1)|`` (``"gain_diff"``). Slates whose valid items all share
    one grade (or are all padding) have no pairs and contribute 0.

    Args:
        y_pred: predicted scores ``s``.
        y_true: graded relevance; ``padded_value_indicator`` marks padding.
        padded_value_indicator: y_true value of padded positions.
        sigma: steepness of the pairwise sigmoid.
        weighting: one of None, "label_diff", "gain_diff".

    Burges et al., "Learning to Rank using Gradient Descent", ICML 2005.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown ranknet weighting {weighting!r}; valid: {', '.join(map(str, WEIGHTINGS))}")
    valid, s, y = mask_padding(y_pred, y_true, padded_value_indicator)
    pairs = pair_mask(valid, y)
    diffs = s[:, :, None] - s[:, None, :]
    per_pair = F.softplus(-sigma * diffs)
    if weighting == "label_diff":
        per_pair = per_pair * (y[:, :, None] - y[:, None, :]).abs()
    elif weighting == "gain_diff":
        g = gains(y)
        per_pair = per_pair * (g[:, :, None] - g[:, None, :]).abs()
    zero = torch.zeros((), dtype=per_pair.dtype, device=per_pair.device)
    total = torch.where(pairs, per_pair, zero).sum(dim=(1, 2))
    per_query = total / pairs.sum(dim=(1, 2)).clamp(min=1).to(total.dtype)
    return mean_over_queries(per_query, valid)
