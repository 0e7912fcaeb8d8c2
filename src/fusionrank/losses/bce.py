"""Pointwise binary cross-entropy between sigmoid(score) and the scaled grade."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ._common import LOSSES, PADDED_Y_VALUE, mask_padding, mean_over_items, mean_over_queries


@LOSSES.register("bce")
def bce(
    y_pred: Tensor,
    y_true: Tensor,
    padded_value_indicator: float = PADDED_Y_VALUE,
    *,
    max_grade: float = 4.0,
) -> Tensor:
    """Pointwise sigmoid cross-entropy with soft targets ``grade / max_grade``.

    Shapes: ``y_pred`` (logits) and ``y_true`` are ``[B, S]``; returns a scalar.

    Formula, per query q with valid items V_q (padding excluded)::

        t_i  = clamp(y_i / max_grade, 0, 1)
        l_q  = 1/|V_q| * sum_{i in V_q} -[t_i log sigmoid(s_i) + (1 - t_i) log(1 - sigmoid(s_i))]
        loss = mean of l_q over queries with at least one valid item

    Computed with :func:`torch.nn.functional.binary_cross_entropy_with_logits`
    (log-sum-exp stable for any logit).

    Args:
        y_pred: predicted logits ``s``.
        y_true: graded relevance 0..max_grade; ``padded_value_indicator`` marks padding.
        padded_value_indicator: y_true value of padded positions.
        max_grade: highest grade, mapped to target 1.0.

    Pointwise classification for ranking; see e.g. Li, Burges & Wu, "McRank: Learning to
    Rank Using Multiple Classification and Gradient Boosting", NIPS 2007.
    """
    if max_grade <= 0:
        raise ValueError(f"max_grade must be > 0, got {max_grade}")
    valid, s, y = mask_padding(y_pred, y_true, padded_value_indicator)
    target = (y / max_grade).clamp(0.0, 1.0)
    per_item = F.binary_cross_entropy_with_logits(s, target, reduction="none")
    return mean_over_queries(mean_over_items(per_item, valid), valid)
