"""Fusion modules: combine per-modality representations ``A_k(x)`` into one vector.

Every module takes ``A`` of shape ``[..., K, H]`` (one ``H``-vector per modality),
a presence ``mask`` ``[..., K]`` (bool) and the query embedding ``q`` ``[..., D]``,
and returns ``(z, weights)``: the fused vector ``[..., H_out]`` and the modality
weights actually applied ``[..., K]`` (zero for absent modalities) for reporting.

A missing modality is never read as zeros: weighted sums renormalise over the
present modalities, pooling ignores absent ones, and ``concat`` zeroes them and
appends the mask so the head knows which parts are missing.

Registered: ``concat``, ``weighted_sum`` (learned ``z = sum_k alpha_k A_k`` with
``alpha = softmax(theta)``), ``max_pool``, ``mean_pool`` and ``gated``
(query-conditioned attention over modalities).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import Registry

FUSIONS: Registry[type["Fusion"]] = Registry("fusion method")


def _renorm(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = w * mask
    return w / w.sum(-1, keepdim=True).clamp_min(1e-12)


class Fusion(nn.Module):
    def __init__(self, n_modalities: int, hidden: int, query_dim: int):
        super().__init__()
        self.K, self.H, self.D = n_modalities, hidden, query_dim

    @property
    def out_dim(self) -> int:
        return self.H

    def forward(self, A: torch.Tensor, mask: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@FUSIONS.register("concat")
class Concat(Fusion):
    @property
    def out_dim(self) -> int:
        return self.K * self.H + self.K

    def forward(self, A, mask, q):
        m = mask.to(A.dtype)
        z = torch.cat([(A * m.unsqueeze(-1)).flatten(-2), m], -1)
        return z, m / m.sum(-1, keepdim=True).clamp_min(1.0)


@FUSIONS.register("weighted_sum")
class WeightedSum(Fusion):
    """``z = sum_k alpha_k A_k`` with ``alpha = softmax(theta)`` renormalised over present modalities."""

    def __init__(self, n_modalities, hidden, query_dim):
        super().__init__(n_modalities, hidden, query_dim)
        self.theta = nn.Parameter(torch.zeros(n_modalities))

    @property
    def alpha(self) -> torch.Tensor:
        return torch.softmax(self.theta, 0)

    def forward(self, A, mask, q):
        w = _renorm(self.alpha.expand(mask.shape), mask.to(A.dtype))
        return (w.unsqueeze(-1) * A).sum(-2), w


@FUSIONS.register("mean_pool")
class MeanPool(Fusion):
    def forward(self, A, mask, q):
        w = _renorm(torch.ones_like(mask, dtype=A.dtype), mask.to(A.dtype))
        return (w.unsqueeze(-1) * A).sum(-2), w


@FUSIONS.register("max_pool")
class MaxPool(Fusion):
    def forward(self, A, mask, q):
        neg = torch.finfo(A.dtype).min
        masked = A.masked_fill(~mask.unsqueeze(-1), neg)
        z = masked.max(-2).values
        any_present = mask.any(-1, keepdim=True)
        z = torch.where(any_present, z, torch.zeros_like(z))
        # weight = share of the H dimensions where modality k was the max
        arg = masked.argmax(-2)
        w = torch.nn.functional.one_hot(arg, self.K).to(A.dtype).mean(-2) * any_present
        return z, w


@FUSIONS.register("gated")
class Gated(Fusion):
    """Attention over modalities conditioned on the query (Arevalo et al. 2017, gated multimodal units):
    ``e_k = v^T tanh(W_q q + W_a A_k)``, ``alpha = softmax(e)`` over present modalities, ``z = sum_k alpha_k A_k``."""

    def __init__(self, n_modalities, hidden, query_dim, attn_dim: int = 32):
        super().__init__(n_modalities, hidden, query_dim)
        self.wq = nn.Linear(query_dim, attn_dim)
        self.wa = nn.Linear(hidden, attn_dim, bias=False)
        self.prior = nn.Parameter(torch.zeros(n_modalities))
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def forward(self, A, mask, q):
        e = self.v(torch.tanh(self.wq(q).unsqueeze(-2) + self.wa(A))).squeeze(-1) + self.prior
        e = e.masked_fill(~mask, float("-inf"))
        w = torch.softmax(e, -1)
        w = torch.nan_to_num(w, nan=0.0) * mask
        return (w.unsqueeze(-1) * A).sum(-2), w


def build_fusion(name: str, n_modalities: int, hidden: int, query_dim: int, **args) -> Fusion:
    return FUSIONS.get(name)(n_modalities, hidden, query_dim, **args)
