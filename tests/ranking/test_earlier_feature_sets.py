"""A model saved before a scalar feature existed ranks today's slates with its own columns, by name."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

QUERIES = ["red shirt", "black shoes men", "blue jeans", "white tshirt women", "nike", "green dress"]


@pytest.fixture(scope="module")
def earlier(model_dir, model_tables, encoder, tmp_path_factory):
    """(model dir, ranker, today's slates, the same slates in the 10-feature layout) of a ranker trained without
    ``colour_match``, saved as a model directory beside the tiny model's config and workspace."""
    from fusionrank.modalities import EARLIER_FEATURE_SETS, FEATURE_COLUMN, SCALAR_FEATURES
    from fusionrank.modeldir import ModelDir
    from fusionrank.rankers import FeatureGroup, NeuralRanker

    old = EARLIER_FEATURE_SETS[10]
    sl = model_dir.pipeline(model_tables, encoder=encoder).slates([f"q{i}" for i in range(len(QUERIES))], QUERIES)
    y = np.where(sl.rows >= 0, np.random.default_rng(0).integers(0, 3, sl.rows.shape), -1).astype(np.float32)
    sl_old = dataclasses.replace(sl, x=sl.x[..., [FEATURE_COLUMN[f] for f in old]], y=y)
    groups = [FeatureGroup(g.name, [old.index(SCALAR_FEATURES[c]) for c in g.columns if SCALAR_FEATURES[c] in old],
                           g.mask_column, g.table,
                           [old.index(SCALAR_FEATURES[c]) for c in g.lexical if SCALAR_FEATURES[c] in old] if g.lexical else None)
              for g in model_dir.load_ranker().groups_]
    r = NeuralRanker(epochs=1, hidden=8, batch_size=4, seed=0).fit(sl_old, groups, tables=model_tables.tables(), log=None)
    d = tmp_path_factory.mktemp("earlier") / "model"
    shutil.copytree(model_dir.path, d, ignore=shutil.ignore_patterns("ranker", "index", "features.json"))
    ModelDir(d).write(ranker=r)
    return d, r, sl, sl_old


@pytest.mark.parametrize("recorded", [True, False], ids=["features.json", "saved before features.json"])
def test_the_model_reads_its_own_columns_by_name(earlier, model_tables, encoder, recorded):
    from fusionrank.modalities import EARLIER_FEATURE_SETS, SCALAR_FEATURES
    from fusionrank.modeldir import FEATURES, ModelDir

    d, r, sl, sl_old = earlier
    assert json.loads((d / FEATURES).read_text())["scalar_features"] == list(EARLIER_FEATURE_SETS[10])
    if not recorded:
        (d / FEATURES).unlink()  # a model directory of an earlier version: the set is told by the ranker's width
    try:
        md = ModelDir.open(d)
        loaded = md.load_ranker()
        assert loaded.n_features_ == len(SCALAR_FEATURES) and loaded.feature_names == EARLIER_FEATURE_SETS[10]
        pipe = md.pipeline(model_tables, encoder=encoder)
        np.testing.assert_array_equal(pipe.scorer.transform(sl).scores, r.predict(sl_old, model_tables.tables()))
        hits = pipe.search("red shirt", k=4).hits
        assert len(hits) == 4 and all(set(h["contributions"]) == {g.name for g in r.groups_} for h in hits)
        assert "colour_match" in hits[0]["features"]  # explanations still show every feature the path computed
    finally:
        ModelDir(d).write(ranker=r)


def test_a_service_installs_it(earlier, tmp_path):
    from serving_fixtures import make_service

    svc = make_service(earlier[0], tmp_path)
    try:
        assert len(svc.search("red shirt", k=3)["results"]) == 3
    finally:
        svc.close()


def test_a_feature_this_version_does_not_compute_is_named(earlier, tmp_path):
    from fusionrank.errors import FusionrankError
    from fusionrank.modeldir import FEATURES, ModelDir

    d = tmp_path / "m"
    shutil.copytree(earlier[0], d)
    names = json.loads((d / FEATURES).read_text())["scalar_features"]
    (d / FEATURES).write_text(json.dumps({"scalar_features": names[:-1] + ["price_rank"]}))
    with pytest.raises(FusionrankError, match="price_rank"):
        ModelDir.open(d).load_ranker()


def test_the_feature_ranker_finds_its_feature_in_either_layout(earlier):
    from fusionrank.rankers import FeatureRanker

    _, r, sl, sl_old = earlier
    for name in ("bm25_title", "cos_image", "cos_transcript"):
        a = FeatureRanker(name).fit(sl, r.groups_).predict(sl)
        b = FeatureRanker(name).fit(sl_old, r.groups_).predict(sl_old)
        np.testing.assert_array_equal(a, b)
