"""RankingPipeline.search / run / slates on models trained on the tiny fashion44k-layout dataset.

Also: swapping a stage, batching, and the served path (an IVF serving index) agreeing with evaluation.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fusionrank import schema as S
from fusionrank.encoders.text import tokenize
from fusionrank.errors import FusionrankError, UnknownCategory, UnknownNameError
from fusionrank.modalities import FEATURE_COLUMN, MODALITY_NAMES, SCALAR_FEATURES
from fusionrank.ranking import CandidateConfig, HybridRetriever, Queries, Scorer, SearchResult, build_retriever
from fusionrank.ranking.vectors import AnnIndex

TIMINGS = {"understand_ms", "encode_ms", "retrieve_ms", "features_ms", "rank_ms", "explain_ms", "total_ms"}
GROUPS = list(MODALITY_NAMES)
# what a hit holds: the records the HTTP service returns
HIT_KEYS = {"rank", "product_id", "score", "title", "category", "brand", "color", "image_url", "audio_url", "transcript",
            "modalities", "contributions", "weights", "matched_terms", "matched_from_photo", "features"}
# queries as people type them: case, punctuation, outer spaces
MESSY = ["RED Shirt!!", "  nike, men's SHOES ", "t-shirt (black)"]
UNKNOWN_JEWELLERY = "unknown category 'Jewellery'; valid: Accessories, Apparel, Footwear"


@pytest.fixture(scope="module")
def lgbm_pipe(tiny_lgbm_model, encoder):
    """The LightGBM model's pipeline over its own catalogue tables, as evaluation opens it."""
    from fusionrank.modeldir import ModelDir

    md = ModelDir.open(tiny_lgbm_model[0])
    return md.pipeline(md.catalog_tables(log=lambda m: None), encoder=encoder)


def test_search_returns_k_explained_hits(pipe, attrs):
    res = pipe.search("black tshirt", k=5)
    assert isinstance(res, SearchResult)
    hits, timing = res.hits, res.timings_ms
    assert len(hits) == 5 and [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(math.isfinite(s) for s in scores)
    assert len({h["product_id"] for h in hits}) == 5
    assert set(timing) == TIMINGS and all(v >= 0 for v in timing.values())
    assert timing["total_ms"] >= max(v for k, v in timing.items() if k != "total_ms")
    for h in hits:
        assert set(h) == HIT_KEYS
        a = attrs.loc[h["product_id"]]
        assert h["title"] == a["title"] and h["category"] == a["category"]
        assert set(h["contributions"]) == set(GROUPS) and set(h["weights"]) == set(GROUPS)
        assert set(h["features"]) == set(SCALAR_FEATURES)
        # matched terms: the query words that occur in the indexed title / transcript
        assert h["matched_terms"]["title"] == sorted({"black", "tshirt"} & set(tokenize(a["title"])))
        assert set(h["matched_terms"]["transcript"]) <= {"black", "tshirt"}
        json.dumps(h, allow_nan=False)          # plain JSON: no NaN for missing media
    # colour words in the titles: the top hits are black t-shirts
    top = attrs.loc[[h["product_id"] for h in hits[:3]]]
    assert (top["article"] == "Tshirt").all() and (top["colour"] == "Black").sum() >= 2


def test_contributions_and_weights_respect_missing_modalities(pipe, model_tables, attrs):
    """A modality the product lacks contributes exactly 0 and gets weight 0; present weights sum to 1."""
    seen_no_image = seen_no_audio = seen_image = seen_audio = False
    for query in ("women shoes", "black tshirt", "nike men tshirt"):
        hits = pipe.search(query, k=20).hits
        assert len(hits) == 20
        for h in hits:
            pid = h["product_id"]
            a = attrs.loc[pid]
            present = {"text": True, "image": bool(a["has_image"]), "audio": bool(a["has_audio"])}
            assert h["modalities"] == present
            assert (h["image_url"] is not None) == present["image"] and (h["audio_url"] is not None) == present["audio"]
            for g in GROUPS:
                if not present[g]:
                    assert h["contributions"][g] == 0.0 and h["weights"][g] == 0.0
            assert sum(h["weights"].values()) == pytest.approx(1.0, abs=1e-5)
            assert h["weights"]["text"] > 0
            rec = model_tables.record(int(model_tables.rows_of([pid])[0]))
            if not present["image"]:
                seen_no_image = True
                assert h["features"]["cos_image"] == 0.0 and h["features"]["cos_image_mm"] == 0.0
                assert rec[S.IMAGE] is None
            else:
                seen_image = True
                assert h["image_url"] == f"/products/{pid}/image" and rec[S.IMAGE].endswith(f"{pid}.jpg")
            if not present["audio"]:
                seen_no_audio = True
                assert h["features"]["cos_transcript"] == 0.0 and h["matched_terms"]["transcript"] == []
                assert h["transcript"] is None
            else:
                seen_audio = True
                assert h["features"]["cos_transcript"] != 0.0 and h["weights"]["audio"] > 0
                assert h["audio_url"] == f"/products/{pid}/audio" and rec[S.AUDIO].endswith(f"{pid}.ogg")
                assert h["transcript"] == rec["transcript"] and "comes in" in h["transcript"]
    assert seen_no_image and seen_no_audio and seen_image and seen_audio


def test_contribution_is_the_occlusion_difference(pipe):
    """contribution_k = score(all) - score(without modality k), on the served (whole candidate) slate.

    (Features are min-max normalised per slate, so scores are only comparable within the same slate.)
    """
    hits = pipe.search("nike men tshirt", k=4).hits
    sl = pipe.slates(["q"], ["nike men tshirt"])
    pos = [int(np.flatnonzero(pipe.catalog.ids[sl.rows[0]] == h["product_id"])[0]) for h in hits]
    base = pipe.scorer.transform(sl).scores[0]
    np.testing.assert_allclose(base[pos], [h["score"] for h in hits], rtol=1e-5, atol=1e-6)
    for k, g in enumerate(GROUPS):
        m = sl.mask.copy()
        m[..., k] = False
        alt = type(sl)(**{**sl.__dict__, "mask": m})
        drop = pipe.scorer.transform(alt).scores[0]
        want = np.where(sl.mask[0, :, k], base - drop, 0.0)[pos]
        np.testing.assert_allclose([h["contributions"][g] for h in hits], want, rtol=1e-4, atol=1e-5)


def test_category_filter(pipe, attrs):
    hits = pipe.search("black", k=10, category="Footwear").hits
    assert len(hits) == 10 and all(h["category"] == "Footwear" for h in hits)
    assert all(attrs.loc[h["product_id"], "article"] == "Shoes" for h in hits)
    # case-insensitive; and the unfiltered search does return other categories
    assert [h["product_id"] for h in pipe.search("black", k=10, category="footwear").hits] == [h["product_id"] for h in hits]
    assert {h["category"] for h in pipe.search("black", k=20).hits} != {"Footwear"}
    # a category the catalogue does not have: an error listing the valid ones, whoever asks
    with pytest.raises(UnknownCategory, match=UNKNOWN_JEWELLERY):
        pipe.search("black", k=10, category="Jewellery")
    with pytest.raises(UnknownCategory, match=UNKNOWN_JEWELLERY):
        pipe.slates(["q"], ["black"], category="Jewellery")
    with pytest.raises(UnknownCategory, match=UNKNOWN_JEWELLERY):
        pipe.to_slates.transform(Queries.of(["black"], category="Jewellery"))


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_empty_query_is_an_error(pipe, query):
    with pytest.raises(FusionrankError, match="empty query"):
        pipe.search(query)


def test_no_queries_is_an_error(pipe):
    with pytest.raises(FusionrankError, match="no queries"):
        pipe.slates([], [])


def test_search_k_larger_than_the_candidates(pipe):
    res = pipe.search("watch", k=500)
    assert 0 < len(res.hits) <= 20          # at most n=20 candidates are reranked
    assert len(res.hits) == len(res.candidates.rows[0])


def test_search_with_a_lightgbm_ranker(lgbm_pipe, attrs):
    res = lgbm_pipe.search("black tshirt", k=5)
    hits = res.hits
    assert len(hits) == 5 and set(res.timings_ms) == TIMINGS
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for h in hits:   # no fusion weights for GBDT; features and matches as for any ranker
        assert h["weights"] == {} and set(h["features"]) == set(SCALAR_FEATURES)
        assert set(h["contributions"]) == set(GROUPS)   # occlusion: LightGBM reads an absent modality as missing
        assert h["matched_terms"]["title"] == sorted({"black", "tshirt"} & set(tokenize(attrs.loc[h["product_id"], "title"])))


def test_run_lists_every_candidate_with_its_reranked_score(pipe, tiny_fashion):
    q = tiny_fashion.queries["dev"]
    run = pipe.run(q["query_id"].tolist(), q["query"].tolist())
    assert list(run.columns) == ["query_id", "product_id", "score"]
    assert set(run["query_id"]) == set(q["query_id"])
    assert run.groupby("query_id").size().max() <= 20 and not run.duplicated(["query_id", "product_id"]).any()
    assert np.isfinite(run["score"]).all()
    # the top of the run agrees with search
    first = run[run["query_id"] == q["query_id"].iloc[0]].sort_values("score", ascending=False, kind="stable")
    hits = pipe.search(q["query"].iloc[0], k=3).hits
    np.testing.assert_allclose(first["score"].iloc[:3].to_numpy(), [h["score"] for h in hits], rtol=1e-5)


# --- stages ------------------------------------------------------------------------------
def assert_same_slates(a, b):
    assert a.query_ids == b.query_ids and a.queries == b.queries
    for f in ("rows", "x", "mask", "q"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def test_swap_a_stage_in_one_line(pipe, model_tables, lgbm_ranker):
    # candidates from BM25 on the title only: exactly the field's best rows by score (ties to the lower row)
    bm25 = pipe.replace(retriever=HybridRetriever(model_tables, CandidateConfig(sources=("bm25:title",), n=10, depth=15)))
    lx = model_tables.lexical["title"]
    for query in ("black tshirt", "nike men tshirt", "red shoes"):
        sl = bm25.slates(["q"], [query])
        rows = sl.rows[0][sl.rows[0] >= 0]
        r, s = lx.score(lx.query_terms(query)).arrays()
        want = r[np.lexsort((r, -s))][:10]
        np.testing.assert_array_equal(rows, want)
        assert (sl.x[0, :len(rows), FEATURE_COLUMN["bm25_title"]] > 0).all()
        hits = bm25.search(query, k=10).hits
        assert {h["product_id"] for h in hits} == set(model_tables.ids[want])
        # the pipeline it came from is unchanged: 20 candidates, fused from every source
        full = pipe.slates(["q"], [query]).rows[0]
        assert (full >= 0).sum() == 20 and set(full) != set(want)
    assert pipe.retriever.config == model_tables.config.candidates and len(pipe.retriever.config.sources) == 5
    # another ranker: LightGBM scores the same slates
    lg = pipe.with_ranker(lgbm_ranker)
    assert lg.ranker is lgbm_ranker and pipe.ranker is not lgbm_ranker and lg.retriever is pipe.retriever
    sl = pipe.slates(["a", "b"], ["black tshirt", "women shoes"])
    got = lg.scorer.transform(sl).scores
    np.testing.assert_array_equal(got, lgbm_ranker.predict(sl, model_tables.tables()))
    assert not np.allclose(got[sl.rows >= 0], pipe.scorer.transform(sl).scores[sl.rows >= 0])
    res = lg.search("black tshirt", k=5)
    assert all(h["weights"] == {} for h in res.hits)
    assert res.hits == pipe.replace(scorer=Scorer(lgbm_ranker, model_tables)).search("black tshirt", k=5).hits
    assert res.hits == pipe.search("black tshirt", k=5, ranker=lgbm_ranker).hits   # the per-call override
    # stages compose with >>: understand >> encode >> retrieve >> featurise is what slates() runs
    queries = ["black tshirt", "women shoes", *MESSY]
    stage = pipe.understanding >> pipe.encoder >> pipe.retriever >> pipe.featuriser
    assert repr(stage) == repr(pipe.to_slates) == f"{type(pipe.understanding).__name__} >> QueryEncoder >> HybridRetriever >> Featuriser"
    assert_same_slates(stage.transform(Queries.of(queries, ["a", "b", "c", "d", "e"])),
                       pipe.slates(["a", "b", "c", "d", "e"], queries))
    assert_same_slates(stage(Queries.of(queries)), pipe.slates(list(range(5)), queries))


def test_an_unknown_retriever_name_lists_the_valid_ones(model_tables):
    with pytest.raises(UnknownNameError, match="unknown retriever 'nope'; valid names: hybrid") as e:
        build_retriever(model_tables, CandidateConfig(name="nope"))
    assert e.value.valid == ["hybrid"]


def test_batching_does_not_change_anything(pipe, uncached_encoder, tiny_fashion):
    """Slates of many queries, in batches of 3 or all at once, equal each query's own slates exactly."""
    uncached = pipe.replace(encoder=uncached_encoder)  # every query vector is computed afresh
    assert uncached.batch_size == 256
    q = tiny_fashion.queries["dev"]
    ids = q["query_id"].tolist() + ["m0", "m1", "m2"]
    texts = q["query"].tolist() + MESSY
    qrels = tiny_fashion.qrels["dev"]
    whole = uncached.slates(ids, texts, qrels)
    by3 = uncached.replace(batch_size=3).slates(ids, texts, qrels)
    assert_same_slates(whole, by3)
    np.testing.assert_array_equal(whole.y, by3.y)
    for b, (qid, text) in enumerate(zip(ids, texts)):
        one = uncached.slates([qid], [text], qrels)
        n = one.rows.shape[1]
        assert n <= whole.rows.shape[1]
        np.testing.assert_array_equal(whole.rows[b, :n], one.rows[0])
        np.testing.assert_array_equal(whole.x[b, :n], one.x[0])
        np.testing.assert_array_equal(whole.mask[b, :n], one.mask[0])
        np.testing.assert_array_equal(whole.y[b, :n], one.y[0])
        np.testing.assert_array_equal(whole.q[b], one.q[0])
        assert (whole.rows[b, n:] == -1).all() and not whole.x[b, n:].any() and not whole.mask[b, n:].any()
    assert uncached.encoder.hits == 0


@pytest.mark.parametrize("codec", ["flat", "sq8"])
def test_served_equals_evaluated(model_dir, model_tables, encoder, uncached_encoder, tiny_fashion, tmp_path, codec):
    """Over the serving index (IVF vectors), one search per query gives the evaluation run's candidates and scores.

    The run is what evaluation measures; ``search(q, k=all candidates)`` is what the service answers (with its
    own query encoder: here one that caches nothing, so no vector is shared between the two paths).
    """
    index = model_dir.build_index(codec, index_dir=tmp_path / "index", log=lambda m: None)
    assert {t: (type(v), v.codec) for t, v in index.vectors.items()} == {t: (AnnIndex, codec) for t in index.dense_tables()}
    evaluated = model_dir.pipeline(index, encoder=encoder)
    served = evaluated.replace(encoder=uncached_encoder)
    q = tiny_fashion.queries["dev"]
    ids = q["query_id"].tolist() + ["m0", "m1", "m2"]
    texts = q["query"].tolist() + MESSY
    run = evaluated.run(ids, texts)
    for qid, text in zip(ids, texts):
        got = run[run["query_id"] == qid]
        res = served.search(text, k=len(got))
        # the same candidates in the same order ...
        assert got["product_id"].tolist() == index.ids[res.candidates.rows[0]].tolist(), text
        # ... and every one scored the same, ranked by score (ties to the earlier candidate)
        ranked = got.sort_values("score", ascending=False, kind="stable")
        assert [h["product_id"] for h in res.hits] == ranked["product_id"].tolist(), text
        assert [h["score"] for h in res.hits] == ranked["score"].tolist(), text
    if codec == "flat":  # every IVF list is probed on this tiny catalogue: the served index is exact search
        exact = model_dir.pipeline(model_tables, encoder=encoder).run(ids, texts)
        assert run["product_id"].tolist() == exact["product_id"].tolist()
        np.testing.assert_array_equal(run["score"].to_numpy(), exact["score"].to_numpy())
