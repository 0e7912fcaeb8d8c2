"""FeatureRanker: one scalar feature as the score (a baseline and a logging policy), saved and loaded like any ranker."""
from __future__ import annotations

import numpy as np
import pytest

from fusionrank.errors import FusionrankError, NotFittedError
from fusionrank.modalities import SCALAR_FEATURES
from fusionrank.rankers import RANKERS, FeatureRanker, load_ranker, ranker_kind
from fusionrank.ranking import Slates, feature_groups


def _slates():
    rng = np.random.default_rng(0)
    rows = np.array([[0, 1, 2, -1], [3, 4, -1, -1]])
    x = rng.random((2, 4, len(SCALAR_FEATURES))).astype(np.float32)
    return Slates(["a", "b"], ["q1", "q2"], rows, x, np.ones((2, 4, 3), bool), np.zeros((2, 4), np.float32))


def test_scores_are_the_feature_and_padding_is_minus_inf(tmp_path):
    sl = _slates()
    r = FeatureRanker("cos_title").fit(sl, feature_groups())
    s, w = r.predict(sl, return_weights=True)
    j = SCALAR_FEATURES.index("cos_title")
    assert np.array_equal(s[sl.rows >= 0], sl.x[..., j][sl.rows >= 0]) and np.isneginf(s[sl.rows < 0]).all() and w is None
    r.save(tmp_path / "r")
    again = load_ranker(tmp_path / "r")
    assert isinstance(again, FeatureRanker) and again.feature == "cos_title"
    assert np.array_equal(again.predict(sl), s)
    assert r.table_dims() == {} and r.modality_weights() is None


def test_registered_and_checked():
    assert RANKERS.get("feature") is FeatureRanker and ranker_kind("feature") == "feature"
    with pytest.raises(FusionrankError, match="unknown feature 'bm26_title'; valid: bm25_title"):
        FeatureRanker("bm26_title")
    with pytest.raises(NotFittedError):
        FeatureRanker().predict(_slates())
    r = FeatureRanker().fit(_slates(), feature_groups())
    bad = _slates()
    bad.x = bad.x[..., :3]
    with pytest.raises(FusionrankError, match=f"Expected {len(SCALAR_FEATURES)} features"):
        r.predict(bad)
