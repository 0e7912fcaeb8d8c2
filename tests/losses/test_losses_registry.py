"""Registry lookup, get_loss and config blocks."""
from __future__ import annotations

import functools

import pytest
import torch

from fusionrank.errors import UnknownNameError
from fusionrank.losses import LOSSES, PADDED_Y_VALUE, get_loss, loss_from_config

EXPECTED = ["bce", "ips_listwise", "ips_pairwise", "lambdaloss", "listnet", "mse", "ranknet"]


def test_registered_names():
    assert LOSSES.names() == EXPECTED
    assert PADDED_Y_VALUE == -1.0


def test_unknown_loss_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        get_loss("lambdarank_typo")
    err = info.value
    assert err.kind == "loss" and err.name == "lambdarank_typo"
    assert err.valid == EXPECTED
    for name in EXPECTED:
        assert name in str(err)


def test_get_loss_returns_partial():
    fn = get_loss("lambdaloss", weighing_scheme="lambdaRank", k=5)
    assert isinstance(fn, functools.partial)
    assert fn.func is LOSSES.get("lambdaloss")
    assert fn.keywords == {"weighing_scheme": "lambdaRank", "k": 5}


def test_get_loss_rejects_unknown_argument_early():
    with pytest.raises(TypeError, match="ranknet"):
        get_loss("ranknet", sgima=2.0)


@pytest.mark.parametrize(
    "name, args",
    [
        ("ranknet", {"weighting": "bogus"}),
        ("listnet", {"target": "bogus"}),
        ("lambdaloss", {"weighing_scheme": "bogus"}),
        ("lambdaloss", {"k": 0}),
        ("mse", {"max_grade": 0.0}),
        ("bce", {"max_grade": -1.0}),
    ],
)
def test_bad_option_values_raise(name, args):
    with pytest.raises(ValueError, match="valid|must be"):
        get_loss(name, **args)(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))


def test_loss_from_config_block():
    s, y = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
    fn = loss_from_config({"name": "ranknet", "args": {"sigma": 2.0}})
    torch.testing.assert_close(fn(s, y), get_loss("ranknet", sigma=2.0)(s, y))
    torch.testing.assert_close(loss_from_config({"name": "mse"})(s, y), torch.tensor(0.5))
    with pytest.raises(ValueError):
        loss_from_config({"args": {}})
    with pytest.raises(ValueError):
        loss_from_config({"name": "mse", "argz": {}})
