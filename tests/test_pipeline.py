"""RankingPipeline.search / run on a model trained on the tiny fashion44k-layout dataset."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fusionrank.encoders.text import tokenize
from fusionrank.errors import FusionrankError
from fusionrank.experiment import open_pipeline
from fusionrank.features import SCALAR_FEATURES
from fusionrank.pipeline import feature_groups

TIMINGS = {"encode_ms", "retrieve_ms", "features_ms", "rank_ms", "explain_ms", "total_ms"}
GROUPS = ["text", "image", "audio"]


@pytest.fixture(scope="module")
def pipe(tiny_model):
    p, _ = open_pipeline(tiny_model[0], log=lambda m: None, progress=False)
    return p


@pytest.fixture(scope="module")
def lgbm_pipe(tiny_lgbm_model):
    p, _ = open_pipeline(tiny_lgbm_model[0], log=lambda m: None, progress=False)
    return p


@pytest.fixture(scope="module")
def attrs(tiny_fashion):
    return tiny_fashion.attrs.set_index("product_id")


def test_search_returns_k_explained_hits(pipe, attrs):
    hits, timing = pipe.search("black tshirt", k=5)
    assert len(hits) == 5 and [h.rank for h in hits] == [1, 2, 3, 4, 5]
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and all(math.isfinite(s) for s in scores)
    assert len({h.product_id for h in hits}) == 5
    assert set(timing) == TIMINGS and all(v >= 0 for v in timing.values())
    assert timing["total_ms"] >= max(v for k, v in timing.items() if k != "total_ms")
    for h in hits:
        a = attrs.loc[h.product_id]
        assert h.title == a["title"] and h.category == a["category"]
        assert set(h.contributions) == set(GROUPS) and set(h.weights) == set(GROUPS)
        assert set(h.features) == set(SCALAR_FEATURES)
        # matched terms: the query words that occur in the indexed title / transcript
        assert h.matched_terms["title"] == sorted({"black", "tshirt"} & set(tokenize(a["title"])))
        assert set(h.matched_terms["transcript"]) <= {"black", "tshirt"}
        json.dumps(h.as_dict(), allow_nan=False)          # plain JSON: no NaN for missing media
    # colour words in the titles: the top hits are black t-shirts
    top = attrs.loc[[h.product_id for h in hits[:3]]]
    assert (top["article"] == "Tshirt").all() and (top["colour"] == "Black").sum() >= 2


def test_contributions_and_weights_respect_missing_modalities(pipe, attrs):
    """A modality the product lacks contributes exactly 0 and gets weight 0; present weights sum to 1."""
    seen_no_image = seen_no_audio = seen_image = seen_audio = False
    for query in ("women shoes", "black tshirt", "nike men tshirt"):
        hits, _ = pipe.search(query, k=20)
        assert len(hits) == 20
        for h in hits:
            a = attrs.loc[h.product_id]
            present = {"text": True, "image": bool(a["has_image"]), "audio": bool(a["has_audio"])}
            assert (h.image is not None) == present["image"] and (h.audio is not None) == present["audio"]
            for g in GROUPS:
                if not present[g]:
                    assert h.contributions[g] == 0.0 and h.weights[g] == 0.0
            assert sum(h.weights.values()) == pytest.approx(1.0, abs=1e-5)
            assert h.weights["text"] > 0
            if not present["image"]:
                seen_no_image = True
                assert h.features["cos_image"] == 0.0 and h.features["cos_image_mm"] == 0.0
            else:
                seen_image = True
                assert h.image.endswith(f"{h.product_id}.jpg")
            if not present["audio"]:
                seen_no_audio = True
                assert h.features["cos_transcript"] == 0.0 and h.matched_terms["transcript"] == []
            else:
                seen_audio = True
                assert h.features["cos_transcript"] != 0.0 and h.weights["audio"] > 0
    assert seen_no_image and seen_no_audio and seen_image and seen_audio


def test_contribution_is_the_occlusion_difference(pipe):
    """contribution_k = score(all) - score(without modality k), on the served (whole candidate) slate.

    (Features are min-max normalised per slate, so scores are only comparable within the same slate.)
    """
    hits, _ = pipe.search("nike men tshirt", k=4)
    sl = pipe.slates(["q"], ["nike men tshirt"])
    pos = [int(np.flatnonzero(pipe.index.ids[sl.rows[0]] == h.product_id)[0]) for h in hits]
    base = pipe.score(sl)[0]
    np.testing.assert_allclose(base[pos], [h.score for h in hits], rtol=1e-5, atol=1e-6)
    for k, g in enumerate(GROUPS):
        m = sl.mask.copy()
        m[..., k] = False
        alt = type(sl)(**{**sl.__dict__, "mask": m})
        drop = pipe.score(alt)[0]
        want = np.where(sl.mask[0, :, k], base - drop, 0.0)[pos]
        np.testing.assert_allclose([h.contributions[g] for h in hits], want, rtol=1e-4, atol=1e-5)


def test_category_filter(pipe, attrs):
    hits, _ = pipe.search("black", k=10, category="Footwear")
    assert len(hits) == 10 and all(h.category == "Footwear" for h in hits)
    assert all(attrs.loc[h.product_id, "article"] == "Shoes" for h in hits)
    # case-insensitive; and the unfiltered search does return other categories
    assert [h.product_id for h in pipe.search("black", k=10, category="footwear")[0]] == [h.product_id for h in hits]
    assert {h.category for h in pipe.search("black", k=20)[0]} != {"Footwear"}
    # a filter nothing matches: no hits, not an error
    assert pipe.search("black", k=10, category="Jewellery")[0] == []


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_empty_query_is_an_error(pipe, query):
    with pytest.raises(FusionrankError, match="empty query"):
        pipe.search(query)


def test_search_k_larger_than_the_candidates(pipe):
    hits, _ = pipe.search("watch", k=500)
    assert 0 < len(hits) <= 20          # at most n=20 candidates are reranked


def test_search_with_a_lightgbm_ranker(lgbm_pipe, attrs):
    hits, timing = lgbm_pipe.search("black tshirt", k=5)
    assert len(hits) == 5 and set(timing) == TIMINGS
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for h in hits:   # no fusion weights or occlusion contributions for GBDT, but features and matches
        assert h.contributions == {} and h.weights == {} and set(h.features) == set(SCALAR_FEATURES)
        assert h.matched_terms["title"] == sorted({"black", "tshirt"} & set(tokenize(attrs.loc[h.product_id, "title"])))


def test_run_lists_every_candidate_with_its_reranked_score(pipe, tiny_fashion):
    q = tiny_fashion.queries["dev"]
    run = pipe.run(q["query_id"].tolist(), q["query"].tolist())
    assert list(run.columns) == ["query_id", "product_id", "score"]
    assert set(run["query_id"]) == set(q["query_id"])
    assert run.groupby("query_id").size().max() <= 20 and not run.duplicated(["query_id", "product_id"]).any()
    assert np.isfinite(run["score"]).all()
    # the top of the run agrees with search
    first = run[run["query_id"] == q["query_id"].iloc[0]].sort_values("score", ascending=False, kind="stable")
    hits, _ = pipe.search(q["query"].iloc[0], k=3)
    np.testing.assert_allclose(first["score"].iloc[:3].to_numpy(), [h.score for h in hits], rtol=1e-5)


def test_feature_groups():
    g = feature_groups(["text", "audio"])
    assert [x.name for x in g] == ["text", "audio"] and [x.mask_column for x in g] == [0, 2]
    assert [SCALAR_FEATURES[c] for c in g[0].columns] == ["bm25_title", "bm25_title_mm", "overlap_title", "cos_title"]
    assert g[1].table == "transcript"
    with pytest.raises(FusionrankError, match="unknown modality 'smell'"):
        feature_groups(["text", "smell"])
