"""Shared fixtures for the loss tests (helpers are fixtures, so no test imports conftest)."""
from __future__ import annotations

import pytest
import torch

from fusionrank.losses import PADDED_Y_VALUE

# (name, args) pairs covering every registered loss and its main options.
LOSS_CONFIGS = [
    ("mse", {}),
    ("mse", {"max_grade": 4.0}),
    ("bce", {}),
    ("ranknet", {}),
    ("ranknet", {"weighting": "label_diff"}),
    ("ranknet", {"weighting": "gain_diff", "sigma": 2.0}),
    ("listnet", {}),
    ("listnet", {"target": "gains"}),
    ("lambdaloss", {}),
    ("lambdaloss", {"weighing_scheme": "lambdaRank"}),
    ("lambdaloss", {"weighing_scheme": "ndcgLoss2"}),
    ("lambdaloss", {"weighing_scheme": None}),
    ("lambdaloss", {"k": 2}),
    ("lambdaloss", {"weighing_scheme": "lambdaRank", "k": 3}),
]
RANKING_LOSSES = {"ranknet", "listnet", "lambdaloss"}


def config_id(cfg) -> str:
    name, args = cfg
    return name + "".join(f"-{k}={v}" for k, v in args.items())


@pytest.fixture(params=LOSS_CONFIGS, ids=config_id)
def loss_config(request):
    return request.param


def pad_slates(slates: list[list[float]], width: int, fill_pred: float = 0.0):
    """Pad a list of grade lists to ``[B, width]`` with PADDED_Y_VALUE; returns (y_true, valid)."""
    y = torch.full((len(slates), width), PADDED_Y_VALUE)
    for b, s in enumerate(slates):
        y[b, : len(s)] = torch.tensor(s)
    return y, y != PADDED_Y_VALUE


def ndcg(scores: torch.Tensor, y_true: torch.Tensor, pad: float = PADDED_Y_VALUE) -> float:
    """Mean NDCG over queries with at least one relevant item (independent of the losses)."""
    valid = y_true != pad
    total, n = 0.0, 0
    for b in range(y_true.shape[0]):
        y, s = y_true[b][valid[b]], scores[b][valid[b]]
        g = 2.0 ** y - 1
        disc = 1.0 / torch.log2(torch.arange(2, len(y) + 2, dtype=torch.float64))
        ideal = (g.sort(descending=True).values.double() * disc).sum()
        if ideal <= 0:
            continue
        dcg = (g[s.argsort(descending=True, stable=True)].double() * disc).sum()
        total += float(dcg / ideal)
        n += 1
    return total / n


@pytest.fixture
def pad():
    """``pad(slates, width)`` -> (y_true, valid), see :func:`pad_slates`."""
    return pad_slates


@pytest.fixture
def ndcg_fn():
    """``ndcg_fn(scores, y_true)`` -> mean NDCG, see :func:`ndcg`."""
    return ndcg


@pytest.fixture
def is_ranking_loss():
    """``is_ranking_loss(name)``: pairwise/listwise losses give 0 on slates without ranking information."""
    return lambda name: name in RANKING_LOSSES
