"""Shared pieces of the loss functions: the registry, the padding convention and masking helpers.

Every loss takes padded slates: ``y_pred`` and ``y_true`` of shape ``[B, S]`` (B queries,
S = longest slate in the batch). Positions where ``y_true == padded_value_indicator`` are
padding. The helpers here replace padded entries with neutral values through
:func:`torch.where`, so padding has no influence on the loss value and its gradient is
exactly 0, whatever ``y_pred`` holds there (even inf or NaN).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..registry import Registry

#: y_true value that marks a padded position (allRank's convention).
PADDED_Y_VALUE: float = -1.0

#: Small constant guarding divisions (e.g. by an ideal DCG of 0).
DEFAULT_EPS: float = 1e-10

#: name -> loss function. Every loss is ``fn(y_pred, y_true, padded_value_indicator=PADDED_Y_VALUE, **args)``.
LOSSES: Registry = Registry("loss")


def check_inputs(y_pred: Tensor, y_true: Tensor) -> None:
    """Raise ``ValueError`` unless ``y_pred`` and ``y_true`` are ``[B, S]`` tensors of equal shape."""
    if y_pred.dim() != 2 or y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_pred and y_true must both have shape [batch, slate]; got {tuple(y_pred.shape)} and {tuple(y_true.shape)}"
        )


def mask_padding(y_pred: Tensor, y_true: Tensor, padded_value_indicator: float) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(valid, y_pred, y_true)`` with padded entries of both tensors set to 0.

    ``valid`` is the bool ``[B, S]`` mask of real (non-padded) items. Zeroing goes through
    :func:`torch.where`, whose backward pass sends exactly 0 gradient to the padded entries.
    """
    check_inputs(y_pred, y_true)
    valid = y_true != padded_value_indicator
    y_true = y_true.to(y_pred.dtype)
    zero = torch.zeros((), dtype=y_pred.dtype, device=y_pred.device)
    return valid, torch.where(valid, y_pred, zero), torch.where(valid, y_true, zero)


def mean_over_items(values: Tensor, valid: Tensor) -> Tensor:
    """Per-query mean of ``values`` ``[B, S]`` over valid items -> ``[B]`` (0 for all-padding slates)."""
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    total = torch.where(valid, values, zero).sum(dim=-1)
    return total / valid.sum(dim=-1).clamp(min=1).to(values.dtype)


def mean_over_queries(per_query: Tensor, valid: Tensor) -> Tensor:
    """Mean of per-query losses ``[B]`` over queries with at least one valid item -> scalar.

    Slates made only of padding are left out of the mean; if there is no valid query at
    all the result is 0 (still attached to the graph, with zero gradients).
    """
    query_valid = valid.any(dim=-1)
    zero = torch.zeros((), dtype=per_query.dtype, device=per_query.device)
    total = torch.where(query_valid, per_query, zero).sum()
    return total / query_valid.sum().clamp(min=1).to(per_query.dtype)


def pair_mask(valid: Tensor, y_true: Tensor) -> Tensor:
    """Bool ``[B, S, S]`` mask of pairs ``(i, j)`` of valid items with ``y_true[i] > y_true[j]``."""
    both_valid = valid[:, :, None] & valid[:, None, :]
    return both_valid & (y_true[:, :, None] > y_true[:, None, :])


def gains(y_true: Tensor) -> Tensor:
    """Exponential NDCG gains ``2**y - 1`` (Jarvelin & Kekalainen 2002; Burges et al. 2005)."""
    return torch.pow(2.0, y_true) - 1.0
