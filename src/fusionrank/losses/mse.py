"""Pointwise mean squared error between scores and relevance grades."""
from __future__ import annotations

from torch import Tensor

from ._common import LOSSES, PADDED_Y_VALUE, mask_padding, mean_over_items, mean_over_queries


@LOSSES.register("mse")
def mse(
    y_pred: Tensor,
    y_true: Tensor,
    padded_value_indicator: float = PADDED_Y_VALUE,
    *,
    max_grade: float | None = None,
) -> Tensor:
    """Pointwise regression loss: squared error between each score and its grade.

    Shapes: ``y_pred`` and ``y_true`` are ``[B, S]``; returns a scalar.

    Formula, per query q with valid items V_q (padding excluded)::

        t_i    = y_i / max_grade   (or y_i when max_grade is None)
        l_q    = 1/|V_q| * sum_{i in V_q} (s_i - t_i)^2
        loss   = mean of l_q over queries with at least one valid item

    Args:
        y_pred: predicted scores ``s``.
        y_true: graded relevance (e.g. 0..4); ``padded_value_indicator`` marks padding.
        padded_value_indicator: y_true value of padded positions.
        max_grade: if given, targets are scaled to [0, 1] by dividing by it.

    Pointwise regression for ranking; see e.g. Cossock & Zhang, "Subset Ranking Using
    Regression", COLT 2006.
    """
    valid, s, y = mask_padding(y_pred, y_true, padded_value_indicator)
    if max_grade is not None:
        if max_grade <= 0:
            raise ValueError(f"max_grade must be > 0, got {max_grade}")
        y = y / max_grade
    return mean_over_queries(mean_over_items((s - y) ** 2, valid), valid)
