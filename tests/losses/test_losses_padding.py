"""Padding has no influence on value or gradients; degenerate slates give finite losses."""
from __future__ import annotations

import pytest
import torch

from fusionrank.losses import PADDED_Y_VALUE, get_loss

SLATES = [[2, 1, 0, 3], [1, 0, 2], [4, 0], [0, 1, 1, 3, 2, 0]]
WIDTH = 7


def _batch(seed=0):
    torch.manual_seed(seed)
    y = torch.full((len(SLATES), WIDTH), PADDED_Y_VALUE)
    for b, slate in enumerate(SLATES):
        y[b, : len(slate)] = torch.tensor(slate, dtype=y.dtype)
    valid = y != PADDED_Y_VALUE
    s = torch.randn(y.shape, dtype=torch.float64)
    return s, y.double(), valid


def _loss_and_grad(fn, s, y):
    s = s.clone().requires_grad_(True)
    value = fn(s, y)
    value.backward()
    return value.detach(), s.grad


@pytest.mark.parametrize("fill", [0.0, 1e6, -1e6, float("inf"), float("-inf"), float("nan")])
def test_padded_scores_change_nothing(loss_config, fill):
    fn = get_loss(loss_config[0], **loss_config[1])
    s, y, valid = _batch()
    ref_value, ref_grad = _loss_and_grad(fn, s, y)
    s2 = s.clone()
    s2[~valid] = fill
    value, grad = _loss_and_grad(fn, s2, y)
    assert torch.isfinite(value)
    assert torch.equal(value, ref_value)
    assert torch.equal(grad[valid], ref_grad[valid])
    assert torch.all(grad[~valid] == 0)
    assert torch.all(ref_grad[~valid] == 0)


def test_padded_batch_equals_mean_of_unpadded_slates(loss_config):
    fn = get_loss(loss_config[0], **loss_config[1])
    s, y, valid = _batch(1)
    batched, grad = _loss_and_grad(fn, s, y)
    singles = []
    for b, slate in enumerate(SLATES):
        n = len(slate)
        v, g = _loss_and_grad(fn, s[b : b + 1, :n], y[b : b + 1, :n])
        singles.append(v)
        torch.testing.assert_close(grad[b, :n], g[0] / len(SLATES))
    torch.testing.assert_close(batched, torch.stack(singles).mean())


def test_extra_padding_columns_change_nothing(loss_config):
    fn = get_loss(loss_config[0], **loss_config[1])
    s, y, _ = _batch(2)
    wide_s = torch.cat([s, torch.randn(s.shape[0], 5, dtype=s.dtype) * 100], dim=1)
    wide_y = torch.cat([y, torch.full((y.shape[0], 5), PADDED_Y_VALUE, dtype=y.dtype)], dim=1)
    torch.testing.assert_close(fn(wide_s, wide_y), fn(s, y))


def test_custom_padded_value_indicator(loss_config):
    fn = get_loss(loss_config[0], **loss_config[1])
    s, y, valid = _batch(3)
    y2 = y.clone()
    y2[~valid] = -100.0
    torch.testing.assert_close(fn(s, y2, padded_value_indicator=-100.0), fn(s, y))


def test_all_padding_slate_is_left_out_of_the_mean(loss_config):
    fn = get_loss(loss_config[0], **loss_config[1])
    s, y, _ = _batch(4)
    s2 = torch.cat([s, torch.randn(1, WIDTH, dtype=s.dtype)])
    y2 = torch.cat([y, torch.full((1, WIDTH), PADDED_Y_VALUE, dtype=y.dtype)])
    torch.testing.assert_close(fn(s2, y2), fn(s, y))


def _finite_loss_and_grad(fn, s, y):
    value, grad = _loss_and_grad(fn, s, y)
    assert torch.isfinite(value), value
    assert torch.all(torch.isfinite(grad))
    return value, grad


def test_whole_batch_of_padding_is_zero(loss_config):
    fn = get_loss(loss_config[0], **loss_config[1])
    y = torch.full((3, 4), PADDED_Y_VALUE)
    value, grad = _finite_loss_and_grad(fn, torch.randn(3, 4), y)
    assert value.item() == 0.0
    assert torch.all(grad == 0)


@pytest.mark.parametrize(
    "grades",
    [[0, 0, 0, 0], [2, 2, 2, PADDED_Y_VALUE], [3, 3, 3, 3], [1, PADDED_Y_VALUE, PADDED_Y_VALUE, PADDED_Y_VALUE]],
    ids=["all-zero", "equal-padded", "all-equal-relevant", "single-item"],
)
def test_uninformative_slates(loss_config, grades, is_ranking_loss):
    name, args = loss_config
    fn = get_loss(name, **args)
    s = torch.tensor([[3.0, -1.0, 0.5, 2.0]])
    value, grad = _finite_loss_and_grad(fn, s, torch.tensor([grades]))
    if is_ranking_loss(name):  # no ranking information -> contributes 0
        assert value.item() == 0.0
        assert torch.all(grad == 0)


@pytest.mark.parametrize("scale", [1e3, 1e6])
def test_extreme_scores_stay_finite(loss_config, scale):
    fn = get_loss(loss_config[0], **loss_config[1])
    s = torch.tensor([[-1.0, 1.0, 0.0, 0.5]]) * scale  # badly ordered, huge margins
    _finite_loss_and_grad(fn, s, torch.tensor([[4.0, 0.0, 2.0, 1.0]]))


def test_float32_and_float64_agree(loss_config):
    fn = get_loss(loss_config[0], **loss_config[1])
    s, y, _ = _batch(5)
    v64 = fn(s, y)
    v32 = fn(s.float(), y.float())
    assert v32.dtype == torch.float32 and v64.dtype == torch.float64
    torch.testing.assert_close(v32.double(), v64, rtol=1e-5, atol=1e-6)


def test_shape_mismatch_raises(loss_config):
    fn = get_loss(loss_config[0], **loss_config[1])
    with pytest.raises(ValueError, match="shape"):
        fn(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="shape"):
        fn(torch.zeros(3), torch.zeros(3))
