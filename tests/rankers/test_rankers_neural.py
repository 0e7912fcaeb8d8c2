"""NeuralRanker and GBDTRanker on a small synthetic multi-modality problem (see conftest.py)."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from fusionrank.errors import FusionrankError, NotFittedError, UnknownNameError
from fusionrank.losses import LOSSES
from fusionrank.rankers import GBDTRanker, NeuralRanker

FAST = {"epochs": 12, "batch_size": 8, "lr": 1e-2, "hidden": 16, "patience": 12}


def _fit(problem, **kw) -> NeuralRanker:
    params = {**FAST, **kw}
    return NeuralRanker(**params).fit(problem.train, problem.groups, tables=problem.tables, valid=problem.valid, log=None)


@pytest.fixture(scope="module")
def fitted(problem) -> NeuralRanker:
    return _fit(problem, fusion="weighted_sum", scorer="mlp", loss={"name": "lambdaloss", "args": {}})


# --- learning ------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["weighted_sum", "concat", "max_pool", "mean_pool", "gated"])
def test_fit_beats_random_baseline(problem, random_ndcg, ndcg_of, fusion):
    r = _fit(problem, fusion=fusion, scorer="mlp", loss={"name": "lambdaloss", "args": {}})
    nd = ndcg_of(r.predict(problem.valid, problem.tables), problem.valid)
    assert nd > random_ndcg + 0.15, (nd, random_ndcg)
    # the best epoch's weights are restored, and the reported best is what predict gives
    assert r.best_valid_ndcg_ == pytest.approx(max(h["valid_ndcg@10"] for h in r.history_))
    assert nd == pytest.approx(r.best_valid_ndcg_, abs=1e-6)


@pytest.mark.parametrize("scorer,loss", [("linear", "mse"), ("logistic", "bce"), ("mlp", "listnet")])
def test_other_scorers_and_losses_learn(problem, random_ndcg, ndcg_of, scorer, loss):
    r = _fit(problem, scorer=scorer, loss={"name": loss, "args": {"max_grade": 2.0} if loss in ("mse", "bce") else {}})
    assert ndcg_of(r.predict(problem.valid, problem.tables), problem.valid) > random_ndcg + 0.15


def test_gbdt_beats_random_baseline(problem, random_ndcg, ndcg_of):
    r = GBDTRanker(n_estimators=40, num_leaves=7, min_child_samples=5, num_threads=1).fit(
        problem.train, problem.groups, tables=problem.tables, valid=problem.valid, log=None)
    assert ndcg_of(r.predict(problem.valid, problem.tables), problem.valid) > random_ndcg + 0.15


def test_predict_shape_and_padding(fitted, problem):
    s = fitted.predict(problem.valid, problem.tables)
    real = problem.valid.rows >= 0
    assert s.shape == problem.valid.rows.shape
    assert np.isfinite(s[real]).all() and np.all(s[~real] == -np.inf)


def test_predict_scores_in_eval_mode_even_after_a_module_was_set_training(problem):
    r = _fit(problem, scorer="mlp", dropout=0.5, epochs=2)
    want = r.predict(problem.valid, problem.tables)
    assert not any(m.training for m in r.net_.modules())
    drop = [m for m in r.net_.modules() if isinstance(m, torch.nn.Dropout)]
    assert drop
    drop[0].train()  # one submodule only, the root still in eval mode: its dropout would be on
    np.testing.assert_array_equal(r.predict(problem.valid, problem.tables), want)
    assert not any(m.training for m in r.net_.modules())


def test_same_seed_same_model(problem):
    a = _fit(problem, scorer="linear", epochs=2).predict(problem.valid, problem.tables)
    b = _fit(problem, scorer="linear", epochs=2).predict(problem.valid, problem.tables)
    np.testing.assert_array_equal(a, b)


# --- not fitted, wrong input ------------------------------------------------------------------


@pytest.mark.parametrize("call", ["predict", "contributions", "modality_weights", "save"])
def test_neural_use_before_fit_raises_not_fitted(problem, tmp_path, call):
    r = NeuralRanker()
    args = {"predict": (problem.valid,), "contributions": (problem.valid,), "modality_weights": (), "save": (tmp_path,)}[call]
    with pytest.raises(NotFittedError, match="not fitted yet"):
        getattr(r, call)(*args)


@pytest.mark.parametrize("call", ["predict", "save"])
def test_gbdt_use_before_fit_raises_not_fitted(problem, tmp_path, call):
    with pytest.raises(NotFittedError, match="GBDTRanker instance is not fitted"):
        getattr(GBDTRanker(), call)(problem.valid if call == "predict" else tmp_path)


def _drop_features(slates, n_keep: int):
    return type(slates)(**{**slates.__dict__, "x": slates.x[..., :n_keep]})


def test_wrong_feature_count_is_a_clear_error(fitted, problem):
    with pytest.raises(FusionrankError, match=r"^Expected 7 features, but found 5$"):
        fitted.predict(_drop_features(problem.valid, 5), problem.tables)


def test_gbdt_wrong_feature_count_is_a_clear_error(problem):
    r = GBDTRanker(n_estimators=3, num_threads=1).fit(problem.train, problem.groups, log=None)
    with pytest.raises(FusionrankError, match=r"^Expected 7 features, but found 5$"):
        r.predict(_drop_features(problem.valid, 5))


def test_unknown_loss_name_lists_valid_losses(problem):
    r = NeuralRanker(loss={"name": "hinge", "args": {}}, epochs=1)
    with pytest.raises(UnknownNameError) as e:
        r.fit(problem.train, problem.groups, tables=problem.tables, log=None)
    assert "'hinge'" in str(e.value)
    for name in LOSSES.names():
        assert name in str(e.value)
    assert e.value.valid == LOSSES.names()


def test_bad_loss_argument_is_a_type_error(problem):
    with pytest.raises(TypeError, match="bad arguments for loss 'ranknet'"):
        NeuralRanker(loss={"name": "ranknet", "args": {"k": 3}}, epochs=1).fit(problem.train, problem.groups,
                                                                             tables=problem.tables, log=None)


def test_unknown_fusion_and_scorer_are_clear_errors(problem):
    with pytest.raises(UnknownNameError, match="unknown fusion method 'sum'.*weighted_sum"):
        NeuralRanker(fusion="sum", epochs=1).fit(problem.train, problem.groups, tables=problem.tables, log=None)
    with pytest.raises(FusionrankError, match="unknown scorer 'tree'; valid: linear, logistic, mlp"):
        NeuralRanker(scorer="tree", epochs=1).fit(problem.train, problem.groups, tables=problem.tables, log=None)


def test_missing_embedding_table_is_a_clear_error(problem, fitted):
    with pytest.raises(FusionrankError, match="feature group 'image' uses embedding table 'img', which is not in the tables"):
        NeuralRanker(epochs=1).fit(problem.train, problem.groups, tables=None, log=None)
    with pytest.raises(FusionrankError, match="embedding table 'img'.*given \\(none\\)"):
        fitted.predict(problem.valid)
    # without embeddings the tables are not needed
    r = NeuralRanker(epochs=1, use_embeddings=False).fit(problem.train, problem.groups, log=None)
    assert r.predict(problem.valid).shape == problem.valid.rows.shape


# --- explanations -----------------------------------------------------------------------------


def test_contributions_shape_and_zero_for_absent(fitted, problem):
    v = problem.valid
    c = fitted.contributions(v, problem.tables)
    assert c.shape == v.rows.shape + (len(problem.groups),)
    assert np.isfinite(c).all()
    present = np.stack([v.mask[..., g.mask_column] for g in problem.groups], -1) & (v.rows >= 0)[..., None]
    assert np.all(c[~present] == 0)  # absent modalities and padding contribute nothing
    assert np.count_nonzero(c[present]) > 0.9 * present.sum()


def test_contributions_on_a_plain_object(fitted, problem):
    """Slates may be any object with the attributes, not only the Slates dataclass."""
    v = problem.valid
    ns = types.SimpleNamespace(x=v.x, mask=v.mask, rows=v.rows, q=v.q, y=v.y)
    np.testing.assert_array_equal(fitted.contributions(ns, problem.tables), fitted.contributions(v, problem.tables))
    assert ns.mask is v.mask  # the caller's object is left alone


def test_modality_weights(fitted, problem):
    w = fitted.modality_weights()
    assert list(w) == [g.name for g in problem.groups]
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(0 < a < 1 for a in w.values())
    _, ws = fitted.predict(problem.valid, problem.tables, return_weights=True)
    present = problem.valid.mask & (problem.valid.rows >= 0)[..., None]
    np.testing.assert_allclose(ws.sum(-1)[present.any(-1)], 1.0, atol=1e-5)
    assert np.all(ws[~present] == 0)


def test_modality_weights_none_without_learned_alpha(problem):
    assert _fit(problem, fusion="mean_pool", epochs=1).modality_weights() is None
    assert GBDTRanker().modality_weights() is None
