"""Correct orderings score lower than reversed ones, and every loss trains a ranker."""
from __future__ import annotations

import torch

from fusionrank.losses import get_loss


def test_correct_ordering_beats_reversed(loss_config):
    fn = get_loss(loss_config[0], **loss_config[1])
    y = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0], [0.0, 2.0, 1.0, -1.0, -1.0]])
    correct = y.clone()
    reversed_ = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0], [2.0, 0.0, 1.0, 9.0, 9.0]])
    assert fn(correct, y) < fn(reversed_, y)


def _synthetic(pad, seed=0, n_queries=24, width=8, dim=5):
    """Linearly separable grades: grade = bucket of <x, w_true>; slates of random length."""
    g = torch.Generator().manual_seed(seed)
    w_true = torch.randn(dim, generator=g)
    x = torch.randn(n_queries, width, dim, generator=g)
    latent = x @ w_true
    edges = torch.quantile(latent.flatten(), torch.tensor([0.4, 0.65, 0.85, 0.95]))
    grades = torch.bucketize(latent, edges).float()  # 0..4
    lengths = torch.randint(3, width + 1, (n_queries,), generator=g)
    y, _ = pad([grades[q, : int(n)].tolist() for q, n in enumerate(lengths)], width)
    return x, y, w_true


def test_adam_on_linear_scorer_increases_ndcg(loss_config, pad, ndcg_fn):
    fn = get_loss(loss_config[0], **loss_config[1])
    x, y, w_true = _synthetic(pad)
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[-1], 1, bias=False)
    with torch.no_grad():  # start from a badly wrong ranker
        model.weight.copy_(-0.5 * w_true + 0.1 * torch.randn_like(w_true))
    before = ndcg_fn(model(x).squeeze(-1).detach(), y)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(40):
        opt.zero_grad()
        loss = fn(model(x).squeeze(-1), y)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    after = ndcg_fn(model(x).squeeze(-1).detach(), y)
    assert after > before + 0.2, (before, after)
    assert after > 0.9, (before, after)
