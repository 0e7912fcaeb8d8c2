"""save/load round trips give identical scores (neural: each scorer type; GBDTRanker)."""
from __future__ import annotations

import numpy as np
import pytest

from fusionrank.rankers import GBDTRanker, NeuralRanker


@pytest.mark.parametrize("scorer", ["linear", "logistic", "mlp"])
@pytest.mark.parametrize("fusion", ["weighted_sum", "gated"])
def test_neural_round_trip(problem, tmp_path, scorer, fusion):
    r = NeuralRanker(fusion=fusion, scorer=scorer, epochs=2, batch_size=16, hidden=8, seed=3).fit(
        problem.train, problem.groups, tables=problem.tables, valid=problem.valid, log=None)
    r.save(tmp_path / "m")
    back = NeuralRanker.load(tmp_path / "m")
    a, wa = r.predict(problem.valid, problem.tables, return_weights=True)
    b, wb = back.predict(problem.valid, problem.tables, return_weights=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(wa, wb)
    np.testing.assert_array_equal(r.contributions(problem.valid, problem.tables),
                                  back.contributions(problem.valid, problem.tables))
    assert back.get_params() == r.get_params()
    assert back.groups_ == r.groups_ and back.n_features_ == r.n_features_
    assert back.modality_weights() == r.modality_weights()
    if scorer == "logistic":
        assert np.all((a[np.isfinite(a)] > 0) & (a[np.isfinite(a)] < 1))


def test_neural_round_trip_without_tables(problem, tmp_path):
    r = NeuralRanker(scorer="mlp", epochs=1, hidden=8, use_embeddings=False).fit(problem.train, problem.groups, log=None)
    r.save(tmp_path)
    np.testing.assert_array_equal(NeuralRanker.load(tmp_path).predict(problem.valid), r.predict(problem.valid))


def test_gbdt_round_trip(problem, tmp_path):
    r = GBDTRanker(n_estimators=15, num_leaves=7, min_child_samples=5, interaction_dims=4, num_threads=1).fit(
        problem.train, problem.groups, tables=problem.tables, valid=problem.valid, log=None)
    r.save(tmp_path / "gbdt")
    back = GBDTRanker.load(tmp_path / "gbdt")
    np.testing.assert_array_equal(r.predict(problem.valid, problem.tables), back.predict(problem.valid, problem.tables))
    assert back.get_params() == r.get_params()
    assert back.groups_ == r.groups_
    assert set(back.proj_) == {"img"}
    np.testing.assert_array_equal(back.proj_["img"], r.proj_["img"])
