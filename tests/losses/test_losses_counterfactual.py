"""The counterfactual losses: hand-computed values, linearity in the labels, padding with -inf, learning."""
from __future__ import annotations

import math

import pytest
import torch

from fusionrank.losses import LOSSES, PADDED_Y_VALUE, SIGNED_PADDED_Y_VALUE, get_loss, label_padding

NEG_INF = float("-inf")
CONFIGS = [("ips_listwise", {}), ("ips_listwise", {"normalize": True}), ("ips_pairwise", {}),
           ("ips_pairwise", {"sigma": 2.0})]
LINEAR = [c for c in CONFIGS if not c[1].get("normalize")]


def _id(cfg):
    return cfg[0] + "".join(f"-{k}={v}" for k, v in cfg[1].items())


def _log_softmax(s):
    m = max(s)
    lse = m + math.log(sum(math.exp(v - m) for v in s))
    return [v - lse for v in s]


def _listwise_by_hand(s, y, normalize=False):
    lp = _log_softmax(s)
    loss = -sum(yi * li for yi, li in zip(y, lp))
    if normalize:
        norm = sum(abs(v) for v in y)
        loss = loss / norm if norm > 0 else 0.0
    return loss


def _pairwise_by_hand(s, y, sigma=1.0):
    n = len(s)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += y[i] * math.log1p(math.exp(-sigma * (s[i] - s[j])))
    return total / n


# hand-made slates: scores, signed labels (padding added in _batch)
SLATES = [
    ([1.0, 2.0, 0.0], [2.0, 0.0, -0.5]),
    ([0.3, -1.2, 0.7, 2.5, 0.0], [0.0, 4.0, 1.0, 0.0, 1.5]),
    ([0.5], [3.0]),
    ([0.1, 0.2], [0.0, 0.0]),
]
WIDTH = 6


def _batch(slates=SLATES, width=WIDTH, fill=0.0):
    s = torch.full((len(slates), width), fill, dtype=torch.float64)
    y = torch.full((len(slates), width), NEG_INF, dtype=torch.float64)
    for b, (sb, yb) in enumerate(slates):
        s[b, : len(sb)] = torch.tensor(sb, dtype=torch.float64)
        y[b, : len(yb)] = torch.tensor(yb, dtype=torch.float64)
    return s, y


def _by_hand(name, args, s, y):
    if name == "ips_listwise":
        return _listwise_by_hand(s, y, **args)
    return _pairwise_by_hand(s, y, **args)


@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_values_match_hand_computation(cfg):
    name, args = cfg
    s, y = _batch()
    expected = sum(_by_hand(name, args, sb, yb) for sb, yb in SLATES) / len(SLATES)
    assert get_loss(name, **args)(s, y).item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_listwise_single_value():
    # s = (1, 2, 0), y = (2, 0, -0.5): log_softmax = s - log(e + e^2 + 1)
    lse = math.log(math.e + math.e ** 2 + 1)
    expected = -(2 * (1 - lse) - 0.5 * (0 - lse))
    s, y = _batch(SLATES[:1], 3)
    assert get_loss("ips_listwise")(s, y).item() == pytest.approx(expected, rel=1e-12)


def test_pairwise_single_value():
    # s = (1, 0), y = (2, 0): only item 0 counts, once against item 1: 2 * log(1 + e^-1) / 2
    s = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    assert get_loss("ips_pairwise")(s, y).item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-12)


@pytest.mark.parametrize("cfg", LINEAR, ids=_id)
def test_linear_in_labels(cfg):
    fn = get_loss(cfg[0], **cfg[1])
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 7, generator=g, dtype=torch.float64)
    y1 = torch.randn(5, 7, generator=g, dtype=torch.float64)
    y2 = torch.rand(5, 7, generator=g, dtype=torch.float64) * 3
    pad = torch.rand(5, 7, generator=g) < 0.3
    pad[:, 0] = False
    y1[pad], y2[pad] = NEG_INF, NEG_INF
    a, b = 1.7, -0.6
    mixed = a * y1 + b * y2
    mixed[pad] = NEG_INF  # -inf * negative would be +inf
    assert fn(s, mixed).item() == pytest.approx(a * fn(s, y1).item() + b * fn(s, y2).item(), rel=1e-10, abs=1e-12)
    assert fn(s, torch.where(pad, y1, 0 * y1)).item() == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
@pytest.mark.parametrize("fill", [0.0, 1e6, -1e6, float("inf"), float("-inf"), float("nan")])
def test_padding_changes_nothing_and_gets_zero_gradient(cfg, fill):
    fn = get_loss(cfg[0], **cfg[1])
    s, y = _batch()
    valid = y != NEG_INF
    ref = s.clone().requires_grad_(True)
    ref_value = fn(ref, y)
    ref_value.backward()
    s2 = s.clone()
    s2[~valid] = fill
    s2.requires_grad_(True)
    value = fn(s2, y)
    value.backward()
    assert torch.isfinite(value) and torch.equal(value.detach(), ref_value.detach())
    assert torch.equal(s2.grad[valid], ref.grad[valid])
    assert torch.all(s2.grad[~valid] == 0) and torch.all(ref.grad[~valid] == 0)


@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_padded_batch_is_mean_of_single_slates(cfg):
    fn = get_loss(cfg[0], **cfg[1])
    s, y = _batch()
    singles = [fn(torch.tensor([sb], dtype=torch.float64), torch.tensor([yb], dtype=torch.float64)).item()
               for sb, yb in SLATES]
    assert fn(s, y).item() == pytest.approx(sum(singles) / len(singles), rel=1e-12)


@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_all_padding_batch_is_zero_with_zero_gradient(cfg):
    s = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    y = torch.full((2, 4), NEG_INF, dtype=torch.float64)
    value = get_loss(cfg[0], **cfg[1])(s, y)
    value.backward()
    assert value.item() == 0.0 and torch.all(s.grad == 0)


def test_minus_one_is_a_label_not_padding():
    s = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    assert get_loss("ips_listwise")(s, y).item() == pytest.approx(_listwise_by_hand([0.0, 1.0], [1.0, -1.0]))
    # with the graded convention -1 would drop the second item
    assert get_loss("ips_listwise")(s, y, padded_value_indicator=PADDED_Y_VALUE).item() == pytest.approx(0.0)


def test_signed_label_declaration_and_padding_value():
    assert SIGNED_PADDED_Y_VALUE == NEG_INF
    for name in LOSSES.names():
        signed = name.startswith("ips_")
        assert getattr(LOSSES.get(name), "signed_labels", False) is signed
        assert label_padding(name) == (SIGNED_PADDED_Y_VALUE if signed else PADDED_Y_VALUE)


@pytest.mark.parametrize("cfg", LINEAR, ids=_id)
def test_ips_labels_give_the_full_information_loss_in_expectation(cfg):
    """c ~ Bernoulli(theta_k r), y = c / theta_k: the mean loss over many click samples -> the loss on r."""
    fn = get_loss(cfg[0], **cfg[1])
    g = torch.Generator().manual_seed(3)
    r = torch.tensor([0.9, 0.1, 0.6, 0.0, 0.4], dtype=torch.float64)
    theta = 1.0 / torch.arange(1, 6, dtype=torch.float64)
    s = torch.tensor([0.2, 1.0, -0.3, 0.5, 0.0], dtype=torch.float64)
    n = 200_000
    clicks = (torch.rand(n, 5, generator=g, dtype=torch.float64) < theta * r).double()
    mc = fn(s.expand(n, 5), clicks / theta).item()  # mean over n one-query "batches"
    naive = fn(s.expand(n, 5), clicks).item()
    full = fn(s[None], r[None]).item()
    assert mc == pytest.approx(full, rel=0.02)
    assert abs(naive - full) > 0.1 * abs(full)


def test_correct_order_beats_reversed():
    y = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0], [0.0, 2.0, 1.0, NEG_INF, NEG_INF]])
    correct = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0], [0.0, 2.0, 1.0, 0.0, 0.0]])
    reversed_ = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0], [2.0, 0.0, 1.0, 9.0, 9.0]])
    for name, args in CONFIGS:
        fn = get_loss(name, **args)
        assert fn(correct, y) < fn(reversed_, y), name


def _synthetic(seed=0, n_queries=24, width=8, dim=5):
    """Linearly separable grades 0..4 (bucket of <x, w_true>), slates of random length, -inf padding."""
    g = torch.Generator().manual_seed(seed)
    w_true = torch.randn(dim, generator=g)
    x = torch.randn(n_queries, width, dim, generator=g)
    latent = x @ w_true
    edges = torch.quantile(latent.flatten(), torch.tensor([0.4, 0.65, 0.85, 0.95]))
    grades = torch.bucketize(latent, edges).float()
    lengths = torch.randint(3, width + 1, (n_queries,), generator=g)
    y = torch.where(torch.arange(width)[None, :] < lengths[:, None], grades, torch.tensor(NEG_INF))
    return x, y, w_true


def _ndcg(scores, y):
    total, n = 0.0, 0
    for b in range(y.shape[0]):
        v = y[b] != NEG_INF
        yy, ss = y[b][v].double(), scores[b][v]
        gain = 2.0 ** yy - 1
        disc = 1.0 / torch.log2(torch.arange(2, len(yy) + 2, dtype=torch.float64))
        ideal = (gain.sort(descending=True).values * disc).sum()
        if ideal > 0:
            total += float((gain[ss.argsort(descending=True, stable=True)] * disc).sum() / ideal)
            n += 1
    return total / n


@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_training_on_grades_finds_the_right_order(cfg):
    fn = get_loss(cfg[0], **cfg[1])
    x, y, w_true = _synthetic()
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[-1], 1, bias=False)
    with torch.no_grad():  # start from a badly wrong ranker
        model.weight.copy_(-0.5 * w_true + 0.1 * torch.randn_like(w_true))
    before = _ndcg(model(x).squeeze(-1).detach(), y)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        loss = fn(model(x).squeeze(-1), y)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    after = _ndcg(model(x).squeeze(-1).detach(), y)
    assert after > before + 0.2 and after > 0.9, (before, after)
