"""Fusion modules on items that lack some modalities: finite output, weights over present
modalities only, absent A_k never read, weighted_sum's alpha = softmax(theta), registry errors."""
from __future__ import annotations

import pytest
import torch

from fusionrank.errors import UnknownNameError
from fusionrank.fusion import FUSIONS, build_fusion

K, H, D = 3, 5, 4
METHODS = ["concat", "weighted_sum", "max_pool", "mean_pool", "gated"]
RENORMALISED = ["weighted_sum", "mean_pool", "gated"]


def test_registry_holds_the_documented_methods():
    assert FUSIONS.names() == sorted(METHODS)


@pytest.fixture
def inputs():
    """A [2, 4, K, H], mask [2, 4, K] with every presence pattern kind, q [2, 4, D]."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 4, K, H, generator=g)
    mask = torch.tensor([
        [[True, True, True], [True, False, True], [False, True, False], [False, False, True]],
        [[True, True, False], [False, False, False], [True, False, False], [False, True, True]],
    ])
    q = torch.randn(2, 4, D, generator=g)
    return A, mask, q


def _module(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    f = build_fusion(name, K, H, D)
    if name == "weighted_sum":  # non-uniform alpha so renormalisation is really tested
        with torch.no_grad():
            f.theta.copy_(torch.tensor([0.7, -0.4, 0.2]))
    if name == "gated":
        with torch.no_grad():
            f.prior.copy_(torch.tensor([0.3, -0.2, 0.1]))
    return f.eval()


@pytest.mark.parametrize("name", METHODS)
def test_output_is_finite_and_shaped(name, inputs):
    A, mask, q = inputs
    f = _module(name)
    z, w = f(A, mask, q)
    assert z.shape == (2, 4, f.out_dim)
    assert w.shape == (2, 4, K)
    assert torch.isfinite(z).all() and torch.isfinite(w).all()
    # an item with no modality at all is fused to zeros (nothing is made up)
    if name != "concat":
        assert torch.equal(z[1, 1], torch.zeros(f.out_dim))


@pytest.mark.parametrize("name", METHODS)
def test_weights_are_zero_on_absent_modalities(name, inputs):
    A, mask, q = inputs
    _, w = _module(name)(A, mask, q)
    assert torch.all(w[~mask] == 0)
    assert torch.all(w[mask] >= 0)


@pytest.mark.parametrize("name", RENORMALISED)
def test_weights_over_present_modalities_sum_to_one(name, inputs):
    A, mask, q = inputs
    _, w = _module(name)(A, mask, q)
    any_present = mask.any(-1)
    torch.testing.assert_close(w.sum(-1)[any_present], torch.ones(int(any_present.sum())))
    assert torch.all(w.sum(-1)[~any_present] == 0)
    # a single present modality gets all the weight
    single = mask.sum(-1) == 1
    torch.testing.assert_close(w[single][mask[single]], torch.ones(int(single.sum())))


@pytest.mark.parametrize("name", METHODS)
def test_absent_modality_values_do_not_change_z(name, inputs):
    A, mask, q = inputs
    f = _module(name)
    z, w = f(A, mask, q)
    g = torch.Generator().manual_seed(1)
    for scale in (1.0, 1e4):
        A2 = A.clone()
        noise = torch.randn(A.shape, generator=g) * scale
        A2[~mask] = noise[~mask]
        z2, w2 = f(A2, mask, q)
        torch.testing.assert_close(z2, z, rtol=0, atol=0)
        torch.testing.assert_close(w2, w, rtol=0, atol=0)


@pytest.mark.parametrize("name", METHODS)
def test_absent_modalities_get_no_gradient(name, inputs):
    A, mask, q = inputs
    A = A.clone().requires_grad_(True)
    z, _ = _module(name)(A, mask, q)
    z.pow(2).sum().backward()
    assert torch.all(A.grad[~mask] == 0)
    assert A.grad[mask].abs().sum() > 0


def test_weighted_sum_alpha_is_softmax_theta(inputs):
    A, mask, q = inputs
    f = _module("weighted_sum")
    torch.testing.assert_close(f.alpha, torch.softmax(f.theta, 0))
    assert float(f.alpha.detach().sum()) == pytest.approx(1.0)
    z, w = f(A, mask, q)
    alpha = torch.softmax(f.theta.detach(), 0)
    # all present: z = sum_k alpha_k A_k
    torch.testing.assert_close(z[0, 0], (alpha[:, None] * A[0, 0]).sum(0))
    # text and audio present: alpha renormalised over them
    a = alpha * mask[0, 1]
    a = a / a.sum()
    torch.testing.assert_close(w[0, 1], a)
    torch.testing.assert_close(z[0, 1], (a[:, None] * A[0, 1]).sum(0))


def test_theta_is_learned():
    f = build_fusion("weighted_sum", K, H, D)
    assert isinstance(f.theta, torch.nn.Parameter) and f.theta.requires_grad
    A = torch.randn(1, 2, K, H)
    z, _ = f(A, torch.ones(1, 2, K, dtype=torch.bool), torch.zeros(1, 2, D))
    z.sum().backward()
    assert f.theta.grad is not None and f.theta.grad.abs().sum() > 0


def test_pooling_values(inputs):
    A, mask, q = inputs
    z_mean, _ = _module("mean_pool")(A, mask, q)
    z_max, _ = _module("max_pool")(A, mask, q)
    for b in range(2):
        for n in range(4):
            m = mask[b, n]
            if m.any():
                torch.testing.assert_close(z_mean[b, n], A[b, n][m].mean(0))
                torch.testing.assert_close(z_max[b, n], A[b, n][m].max(0).values)


def test_concat_zeroes_absent_parts_and_appends_mask(inputs):
    A, mask, q = inputs
    f = _module("concat")
    z, _ = f(A, mask, q)
    assert f.out_dim == K * H + K
    parts = z[..., : K * H].reshape(2, 4, K, H)
    torch.testing.assert_close(parts, A * mask[..., None])
    torch.testing.assert_close(z[..., K * H:], mask.float())


def test_gated_weights_depend_on_the_query(inputs):
    A, mask, q = inputs
    f = _module("gated")
    _, w1 = f(A, mask, q)
    _, w2 = f(A, mask, -3 * q)
    full = mask.all(-1)
    assert not torch.allclose(w1[full], w2[full])


def test_unknown_fusion_name_lists_valid_names():
    with pytest.raises(UnknownNameError) as e:
        build_fusion("attention_pool", K, H, D)
    msg = str(e.value)
    assert "attention_pool" in msg and "fusion method" in msg
    for name in METHODS:
        assert name in msg
    assert e.value.valid == FUSIONS.names()
    assert isinstance(e.value, KeyError)  # UnknownNameError is also a KeyError
