"""Neural fusion ranker: per-modality encoders ``A_k``, a fusion module and a scoring head.

For modality ``k`` the input is its scalar features (standardised with training
statistics) concatenated with the learned interaction ``q * e_k`` (element-wise
product of the query and the modality embedding, optionally L2-normalised).
``A_k`` is linear (``scorer="linear"``/``"logistic"``) or a one-hidden-layer tanh MLP
(``scorer="mlp"``); the head is linear, logistic (sigmoid output) or a tanh MLP.

With one modality and no embeddings this is a plain linear/logistic/MLP scorer over a
flat feature vector, which is how the LETOR benchmarks use it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..errors import FusionrankError
from ..fusion import build_fusion

SCORERS = ("linear", "logistic", "mlp")


class FusionRankerNet(nn.Module):
    def __init__(self, scalar_dims: Sequence[int], emb_dims: Sequence[int], query_dim: int, fusion: str = "weighted_sum",
                 scorer: str = "mlp", hidden: int = 64, dropout: float = 0.1, normalize: str = "l2",
                 modality_dropout: float = 0.0, fusion_args: dict | None = None):
        super().__init__()
        if scorer not in SCORERS:
            raise FusionrankError(f"unknown scorer {scorer!r}; valid: {', '.join(SCORERS)}")
        if normalize not in ("l2", "none"):
            raise FusionrankError(f"unknown normalisation {normalize!r}; valid: l2, none")
        self.K = len(scalar_dims)
        self.scalar_dims, self.emb_dims = list(scalar_dims), list(emb_dims)
        self.scorer, self.normalize, self.modality_dropout = scorer, normalize, modality_dropout
        self.register_buffer("x_mean", torch.zeros(sum(scalar_dims)))
        self.register_buffer("x_std", torch.ones(sum(scalar_dims)))
        enc = []
        for s, e in zip(scalar_dims, emb_dims):
            d_in = s + e
            if scorer == "mlp":
                enc.append(nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, hidden)))
            else:
                enc.append(nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, hidden)))
        self.encoders = nn.ModuleList(enc)
        self.fusion = build_fusion(fusion, self.K, hidden, query_dim, **(fusion_args or {}))
        d = self.fusion.out_dim
        if scorer == "mlp":
            self.head = nn.Sequential(nn.Tanh(), nn.Dropout(dropout), nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        else:
            self.head = nn.Linear(d, 1)

    def set_standardisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.x_mean.copy_(mean)
        self.x_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def modality_inputs(self, x: torch.Tensor, embs: Sequence[torch.Tensor | None], q: torch.Tensor | None) -> list[torch.Tensor]:
        x = (x - self.x_mean) / self.x_std
        parts = torch.split(x, self.scalar_dims, dim=-1)
        out = []
        for k, (p, e) in enumerate(zip(parts, embs)):
            if self.emb_dims[k]:
                inter = e * q.unsqueeze(-2)
                if self.normalize == "l2":  # unit length, rescaled so each element has RMS 1
                    inter = inter * (inter.shape[-1] ** 0.5) / inter.norm(dim=-1, keepdim=True).clamp_min(1e-6)
                else:  # q, e unit vectors: elements are O(1/D); scale to O(1)
                    inter = inter * inter.shape[-1]
                p = torch.cat([p, inter], -1)
            out.append(p)
        return out

    def forward(self, x: torch.Tensor, mask: torch.Tensor, embs: Sequence[torch.Tensor | None] = (), q: torch.Tensor | None = None,
                return_weights: bool = False):
        """x [B,N,F], mask [B,N,K] bool, embs: per modality [B,N,D] or None, q [B,D] -> scores [B,N]."""
        if not embs:
            embs = [None] * self.K
        ins = self.modality_inputs(x, embs, q)
        A = torch.stack([enc(i) for enc, i in zip(self.encoders, ins)], -2)  # [B,N,K,H]
        if self.training and self.modality_dropout > 0 and self.K > 1:
            drop = torch.rand(mask.shape, device=mask.device) < self.modality_dropout
            keep = mask & ~drop
            # never drop every present modality of an item
            keep = torch.where(keep.any(-1, keepdim=True), keep, mask)
            mask = keep
        qq = q.unsqueeze(-2).expand(*A.shape[:-2], q.shape[-1]) if q is not None else torch.zeros(*A.shape[:-2], self.fusion.D)
        z, w = self.fusion(A, mask, qq)
        s = self.head(z).squeeze(-1)
        if self.scorer == "logistic" and not self.training:
            s = torch.sigmoid(s)
        return (s, w) if return_weights else s
