"""NeuralRanker.fit with signed (debiased click) labels: padding by loss kind, which slates train, label checks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fusionrank.errors import FusionrankError
from fusionrank.losses import LOSSES, PADDED_Y_VALUE, SIGNED_PADDED_Y_VALUE, ips_listwise, listnet
from fusionrank.rankers import NeuralRanker

FAST = {"epochs": 3, "batch_size": 8, "lr": 1e-2, "hidden": 8, "scorer": "linear"}


def _spy(monkeypatch, name, inner, signed):
    """Register ``name`` for this test only: calls ``inner`` and records what the trainer passed."""
    calls = []

    def spy(y_pred, y_true, padded_value_indicator=PADDED_Y_VALUE):
        calls.append((y_true.clone(), padded_value_indicator))
        return inner(y_pred, y_true, padded_value_indicator)

    if signed:
        spy.signed_labels = True
    monkeypatch.setitem(LOSSES._items, name, spy)
    return calls


def _signed_train(problem):
    """Training slates with labels of both signs: slate 0 all negative, slate 1 all zero."""
    y = problem.train.y.copy()
    real = problem.train.rows >= 0
    y = np.where(real, y - 0.3, -1.0).astype(np.float32)
    y[0] = np.where(real[0], -0.5, -1.0)
    y[1] = np.where(real[1], 0.0, -1.0)
    return dataclasses.replace(problem.train, y=y)


def test_signed_loss_gets_minus_inf_padding_and_negative_labels(problem, monkeypatch):
    calls = _spy(monkeypatch, "spy_signed", ips_listwise, signed=True)
    train = _signed_train(problem)
    NeuralRanker(loss={"name": "spy_signed", "args": {}}, **{**FAST, "epochs": 1}).fit(train, problem.groups, problem.tables, log=None)
    seen = torch.cat([y for y, _ in calls])
    assert all(pad == SIGNED_PADDED_Y_VALUE for _, pad in calls)
    real = torch.isfinite(seen)
    assert torch.all(seen[~real] == float("-inf"))
    assert (seen[real] < 0).any()
    # every slate with a nonzero label trains (the all-negative one too); the all-zero one does not
    assert len(seen) == len(train) - 1
    n_real = (problem.train.rows >= 0).sum(1)
    assert sorted(real.sum(1).tolist()) == sorted(np.delete(n_real, 1).tolist())
    assert (seen[real] == -0.5).sum() == n_real[0]


def test_graded_loss_still_gets_minus_one_padding(problem, monkeypatch):
    calls = _spy(monkeypatch, "spy_graded", listnet, signed=False)
    NeuralRanker(loss={"name": "spy_graded", "args": {}}, **{**FAST, "epochs": 1}).fit(problem.train, problem.groups,
                                                                                problem.tables, log=None)
    assert all(pad == PADDED_Y_VALUE for _, pad in calls)
    seen = torch.cat([y for y, _ in calls])
    assert set(seen.unique().tolist()) <= {-1.0, 0.0, 1.0, 2.0}
    assert len(seen) == int((problem.train.y > 0).any(1).sum())  # as before: slates with a relevant candidate


def test_negative_labels_need_a_signed_loss(problem):
    with pytest.raises(FusionrankError, match="ips_listwise, ips_pairwise") as info:
        NeuralRanker(loss={"name": "lambdaloss", "args": {}}, **FAST).fit(_signed_train(problem), problem.groups,
                                                                         problem.tables, log=None)
    assert "lambdaloss" in str(info.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_labels_must_be_finite(problem, bad):
    train = _signed_train(problem)
    train.y[2, 0] = bad
    with pytest.raises(FusionrankError, match="finite"):
        NeuralRanker(loss={"name": "ips_listwise", "args": {}}, **FAST).fit(train, problem.groups, problem.tables, log=None)


def test_padding_labels_in_slates_are_ignored(problem, monkeypatch):
    """Whatever y holds on padding (the Slates contract says -1), the loss sees the loss's padding value."""
    calls = _spy(monkeypatch, "spy_signed", ips_listwise, signed=True)
    train = _signed_train(problem)
    train.y[problem.train.rows < 0] = 7.0
    NeuralRanker(loss={"name": "spy_signed", "args": {}}, **{**FAST, "epochs": 1}).fit(train, problem.groups, problem.tables, log=None)
    seen = torch.cat([y for y, _ in calls])
    assert not (seen == 7.0).any()


@pytest.mark.parametrize("loss", ["ips_listwise", "ips_pairwise"])
def test_noisy_signed_labels_learn_without_validation(problem, random_ndcg, ndcg_of, loss):
    """Unbiased noisy labels (grade + zero-mean noise, often negative), fixed epochs, no validation slates."""
    rng = np.random.default_rng(0)
    real = problem.train.rows >= 0
    noisy = np.where(real, problem.train.y + rng.normal(0, 1.0, problem.train.y.shape), -1.0).astype(np.float32)
    assert (noisy[real] < 0).mean() > 0.2
    train = dataclasses.replace(problem.train, y=noisy)
    r = NeuralRanker(loss={"name": loss, "args": {}}, **{**FAST, "epochs": 8}).fit(train, problem.groups, problem.tables,
                                                                                    log=None)
    assert len(r.history_) == 8 and r.best_valid_ndcg_ is None
    assert all(np.isfinite(h["loss"]) for h in r.history_)
    assert ndcg_of(r.predict(problem.valid, problem.tables), problem.valid) > random_ndcg + 0.15
