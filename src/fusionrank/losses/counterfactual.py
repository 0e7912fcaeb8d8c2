"""Counterfactual (click-based) losses: linear in the labels, so debiased labels keep the estimate unbiased.

Labels estimated from clicks with inverse propensity scoring (``c / theta_k``), the affine
trust-bias correction (``(c - beta_k) / alpha_k``) or the doubly robust estimator are
unbiased estimates of relevance, but they can be large, fractional and even negative. A
loss that is an expectation over items *linear* in ``y`` keeps the risk estimate unbiased:
``E[loss(s, y_hat)] = loss(s, E[y_hat]) = loss(s, r)``. Losses that transform the labels
first (a softmax of the grades, gains ``2^y - 1``, pairs ``y_i > y_j``) do not.

Because labels may be negative, -1 cannot mark padding: these losses are declared with
``signed_labels = True`` and pad with :data:`SIGNED_PADDED_Y_VALUE` (``-inf``; unlike NaN it
compares equal to itself, so :func:`~._common.mask_padding` recognises it). The trainer
asks :func:`fusionrank.losses.label_padding` which value to use.

Both losses are unbounded below when some ``y_i < 0`` (pushing a negatively labelled item's
score down always lowers them); weight decay and gradient clipping keep training stable,
and aggregated labels (one per query-product pair) are rarely negative.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import LOSSES, mask_padding, mean_over_queries

#: y_true value that marks a padded position for losses that take signed labels.
SIGNED_PADDED_Y_VALUE: float = float("-inf")


def _signed(fn):
    fn.signed_labels = True
    return fn


@LOSSES.register("ips_listwise")
@_signed
def ips_listwise(
    y_pred: Tensor,
    y_true: Tensor,
    padded_value_indicator: float = SIGNED_PADDED_Y_VALUE,
    *,
    normalize: bool = False,
) -> Tensor:
    """Propensity-weighted listwise softmax loss: label-weighted negative log-likelihood of each item.

    Shapes: ``y_pred`` and ``y_true`` are ``[B, S]``; returns a scalar.

    Formula, per query q with valid items V_q (softmax taken over V_q only)::

        l_q  = -sum_{i in V_q} y_i * log_softmax(s)_i
        l_q /= sum_{i in V_q} |y_i|          (normalize=True; 0-label queries give 0)
        loss = mean of l_q over queries with at least one valid item

    ``y_i`` are debiased per-item labels, e.g. ``c_i / theta_{k_i}``. Without
    normalisation the loss is linear in ``y`` (an unbiased estimate of the loss on true
    relevance when ``y`` is unbiased); ``normalize=True`` trades that for a per-query
    scale that does not grow with the number of clicks. Unlike ``listnet`` a slate whose
    labels are all equal and nonzero still contributes (pushing its scores together), as
    linearity requires.

    Args:
        y_pred: predicted scores ``s``.
        y_true: debiased labels (any sign); ``padded_value_indicator`` marks padding.
        padded_value_indicator: y_true value of padded positions (``-inf`` by default).
        normalize: divide each query's loss by ``sum |y_i|``.

    Ai et al., "Unbiased Learning to Rank with Unbiased Propensity Estimation", SIGIR 2018
    (the IPS-weighted softmax cross-entropy of their DLA ranker).
    """
    valid, s, y = mask_padding(y_pred, y_true, padded_value_indicator)
    neg_inf = torch.tensor(float("-inf"), dtype=s.dtype, device=s.device)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    query_valid = valid.any(dim=-1, keepdim=True)
    # -inf excludes padding from the softmax; all-padding rows fall back to 0 to avoid NaN.
    logits = torch.where(query_valid, torch.where(valid, s, neg_inf), zero)
    log_p = torch.where(valid, torch.log_softmax(logits, dim=-1), zero)
    per_query = -(y * log_p).sum(dim=-1)
    if normalize:
        norm = y.abs().sum(dim=-1)
        per_query = torch.where(norm > 0, per_query / norm.clamp(min=torch.finfo(norm.dtype).tiny), zero)
    return mean_over_queries(per_query, valid)


@LOSSES.register("ips_pairwise")
@_signed
def ips_pairwise(
    y_pred: Tensor,
    y_true: Tensor,
    padded_value_indicator: float = SIGNED_PADDED_Y_VALUE,
    *,
    sigma: float = 1.0,
) -> Tensor:
    """Propensity-weighted pairwise logistic loss: each labelled item against every other item.

    Shapes: ``y_pred`` and ``y_true`` are ``[B, S]``; returns a scalar.

    Formula, per query q with n_q valid items V_q::

        l_q  = 1/n_q * sum_{i in V_q} y_i * sum_{j in V_q, j != i} log(1 + exp(-sigma * (s_i - s_j)))
        loss = mean of l_q over queries with at least one valid item

    The inner sum is a smooth upper bound of the rank of item i, so ``l_q`` estimates the
    average rank of relevant items when ``y_i = c_i / theta_{k_i}``. Linear in ``y``; pairs
    are not restricted to ``y_i > y_j``, which is what makes the estimate unbiased.

    Args:
        y_pred: predicted scores ``s``.
        y_true: debiased labels (any sign); ``padded_value_indicator`` marks padding.
        padded_value_indicator: y_true value of padded positions (``-inf`` by default).
        sigma: steepness of the pairwise sigmoid.

    Joachims, Swaminathan & Schnabel, "Unbiased Learning-to-Rank with Biased Feedback",
    WSDM 2017 (Propensity SVM-Rank; here with the logistic surrogate instead of the hinge).
    """
    valid, s, y = mask_padding(y_pred, y_true, padded_value_indicator)
    n = s.shape[-1]
    pairs = valid[:, :, None] & valid[:, None, :] & ~torch.eye(n, dtype=torch.bool, device=s.device)
    per_pair = F.softplus(-sigma * (s[:, :, None] - s[:, None, :]))
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    rank_bound = torch.where(pairs, per_pair, zero).sum(dim=-1)  # [B, S]
    per_query = (y * rank_bound).sum(dim=-1) / valid.sum(dim=-1).clamp(min=1).to(s.dtype)
    return mean_over_queries(per_query, valid)
