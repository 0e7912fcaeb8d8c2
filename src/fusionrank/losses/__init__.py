"""Learning-to-rank losses as pure functions over padded slates (in the style of allRank).

Every loss has the signature::

    loss(y_pred: Tensor[B, S], y_true: Tensor[B, S],
         padded_value_indicator: float = PADDED_Y_VALUE, **args) -> scalar Tensor

``y_true`` holds graded relevance (0..4 floats); positions where it equals
``padded_value_indicator`` are padding and influence neither the value nor the
gradients. The result is the mean of per-query losses over queries that have at least
one non-padded item.

Registered losses (see each module's docstring for formula and citation):

- ``mse``        pointwise squared error (:mod:`.mse`)
- ``bce``        pointwise sigmoid cross-entropy (:mod:`.bce`)
- ``ranknet``    pairwise logistic, Burges et al. 2005 (:mod:`.ranknet`)
- ``listnet``    listwise top-one softmax cross-entropy, Cao et al. 2007 (:mod:`.listnet`)
- ``lambdaloss`` NDCG-weighted pairwise, Wang et al. 2018 (:mod:`.lambdaloss`)
- ``ips_listwise`` propensity-weighted softmax, Ai et al. 2018 (:mod:`.counterfactual`)
- ``ips_pairwise`` propensity-weighted pairwise logistic, Joachims et al. 2017 (:mod:`.counterfactual`)

The two ``ips_*`` losses take *signed* labels (debiased click labels may be negative), so
they pad with ``-inf`` instead of -1; :func:`label_padding` gives the padding value of a
loss by name (losses that take signed labels carry ``signed_labels = True``).

Configs name a loss with a ``{name, args}`` block::

    loss_fn = get_loss("lambdaloss", weighing_scheme="ndcgLoss2++", k=10)
    loss_fn = loss_from_config({"name": "lambdaloss", "args": {"k": 10}})
    loss = loss_fn(y_pred, y_true)
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping

from torch import Tensor

from ._common import DEFAULT_EPS, LOSSES, PADDED_Y_VALUE
from .bce import bce
from .counterfactual import SIGNED_PADDED_Y_VALUE, ips_listwise, ips_pairwise
from .lambdaloss import lambdaloss
from .listnet import listnet
from .mse import mse
from .ranknet import ranknet

LossFn = Callable[..., Tensor]

__all__ = [
    "DEFAULT_EPS",
    "LOSSES",
    "PADDED_Y_VALUE",
    "LossFn",
    "SIGNED_PADDED_Y_VALUE",
    "bce",
    "get_loss",
    "ips_listwise",
    "ips_pairwise",
    "label_padding",
    "lambdaloss",
    "listnet",
    "loss_from_config",
    "mse",
    "ranknet",
]


def get_loss(name: str, **args: Any) -> functools.partial:
    """Return the registered loss ``name`` with its keyword ``args`` bound.

    The result is called as ``fn(y_pred, y_true)`` (optionally with
    ``padded_value_indicator``). Raises :class:`~fusionrank.errors.UnknownNameError`
    (listing the valid names) for an unknown ``name`` and ``TypeError`` right away for
    an argument the loss does not take.
    """
    fn = LOSSES.get(name)
    try:
        inspect.signature(fn).bind_partial(None, None, **args)
    except TypeError as e:
        raise TypeError(f"bad arguments for loss {name!r}: {e}") from None
    return functools.partial(fn, **args)


def loss_from_config(block: Mapping[str, Any]) -> functools.partial:
    """Build a loss from a config block ``{"name": ..., "args": {...}}`` (``args`` optional)."""
    extra = set(block) - {"name", "args"}
    if "name" not in block or extra:
        raise ValueError(f"a loss block needs 'name' and optional 'args' only; got keys {sorted(block)}")
    return get_loss(block["name"], **dict(block.get("args") or {}))


def label_padding(name: str) -> float:
    """The ``y_true`` padding value loss ``name`` expects: ``-inf`` if it takes signed labels, else ``PADDED_Y_VALUE``."""
    return SIGNED_PADDED_Y_VALUE if getattr(LOSSES.get(name), "signed_labels", False) else PADDED_Y_VALUE
