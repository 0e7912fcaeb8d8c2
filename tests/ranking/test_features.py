"""The feature builder on the tiny fashion44k-layout dataset: slate shapes, masks, features, labels; the modality spec."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fusionrank.encoders import BM25Encoder
from fusionrank.encoders.attributes import colour_columns
from fusionrank.encoders.text import tokenize
from fusionrank.errors import FusionrankError
from fusionrank.modalities import (ATTRIBUTE_TABLES, CATALOG_TABLES, FEATURE_COLUMN, LEXICAL_FIELDS, MODALITIES, MODALITY_NAMES, SCALAR_FEATURES, TABLES,
                                   modality)
from fusionrank.ranking import Slates, attach_grades, feature_groups

COL = FEATURE_COLUMN
TEXT, IMAGE, AUDIO = (modality(m).index for m in ("text", "image", "audio"))


def rows_where(tables, attrs, **kw) -> list[int]:
    sel = attrs
    for k, v in kw.items():
        sel = sel[sel[k] == v]
    return [int(r) for r in tables.rows_of(list(sel.index))]


def test_slates_shapes(feat_pipe, tiny_fashion):
    q = tiny_fashion.queries["dev"]
    sl = feat_pipe.slates(q["query_id"].tolist(), q["query"].tolist(), qrels=tiny_fashion.qrels["dev"])
    B = len(q)
    assert len(sl) == B and sl.query_ids == q["query_id"].tolist() and sl.queries == q["query"].tolist()
    N = sl.rows.shape[1]
    assert 1 <= N <= 20
    assert sl.rows.shape == (B, N) and sl.rows.dtype == np.int64
    assert sl.x.shape == (B, N, len(SCALAR_FEATURES)) and sl.x.dtype == np.float32
    assert sl.mask.shape == (B, N, 3) and sl.mask.dtype == bool
    assert sl.q.shape == (B, 384) and sl.y.shape == (B, N)
    for b in range(B):
        r = sl.rows[b]
        real = r[r >= 0]
        assert len(set(real)) == len(real)                       # no duplicate candidates
        assert (r[len(real):] == -1).all()                       # padding at the end
    # without qrels: no labels
    assert feat_pipe.slates(["a"], ["black tshirt"]).y is None
    # batching does not change anything: see test_pipeline.py::test_batching_does_not_change_anything
    sl2 = feat_pipe.replace(batch_size=3).slates(q["query_id"].tolist(), q["query"].tolist(), qrels=tiny_fashion.qrels["dev"])
    np.testing.assert_array_equal(sl.rows, sl2.rows)
    np.testing.assert_array_equal(sl.x, sl2.x)
    np.testing.assert_array_equal(sl.y, sl2.y)
    # the grades are the qrels' (0 for unjudged candidates)
    grades = {(r.query_id, r.product_id): r.grade for r in tiny_fashion.qrels["dev"].itertuples()}
    for b, qid in enumerate(sl.query_ids):
        n = int((sl.rows[b] >= 0).sum())
        assert sl.y[b, :n].tolist() == [grades.get((qid, feat_pipe.catalog.ids[r]), 0) for r in sl.rows[b, :n]]
        assert (sl.y[b, n:] == -1).all()
    sub = sl.subset([2, 0])
    assert sub.query_ids == [sl.query_ids[2], sl.query_ids[0]] and np.array_equal(sub.rows[1], sl.rows[0])


def test_candidates_find_the_relevant_products(feat_pipe, tables, attrs):
    """Hybrid candidates for "black tshirt" hold every black t-shirt (and only t-shirts or black things first)."""
    sl = feat_pipe.slates(["q"], ["black tshirt"])
    cand = set(sl.rows[0][sl.rows[0] >= 0])
    assert set(rows_where(tables, attrs, colour="Black", article="Tshirt")) <= cand


def test_missing_photo_and_audio_give_exact_zeros_and_mask_false(feat_pipe, tables, attrs, slates_of):
    no_photo = rows_where(tables, attrs, has_image=False)[:2]
    photo = rows_where(tables, attrs, has_image=True, has_audio=True)[:2]
    no_audio = rows_where(tables, attrs, has_image=True, has_audio=False)[:2]
    rows = [np.array(no_photo + photo + no_audio)]
    sl = slates_of(feat_pipe, ["q"], ["black tshirt nike"], rows)
    img_cols = [COL["cos_image"], COL["cos_image_mm"]]
    aud_cols = [COL[f] for f in ("bm25_transcript", "bm25_transcript_mm", "overlap_transcript", "cos_transcript")]
    x, m = sl.x[0], sl.mask[0]
    assert m[:, TEXT].all()
    assert (m[:, IMAGE] == [False, False, True, True, True, True]).all()
    assert (m[:, AUDIO] == [tables.emb_mask["transcript"][r] for r in rows[0]]).all()
    assert (x[:2][:, img_cols] == 0).all()
    assert (x[2:4][:, img_cols] != 0).any(axis=1).all()            # a present photo does get a cosine
    assert (x[4:][:, aud_cols] == 0).all() and not m[4:, AUDIO].any()
    assert (x[2:4][:, COL["cos_transcript"]] != 0).all()


def test_bm25_feature_equals_the_bm25_score(feat_pipe, tables, slates_of):
    """bm25_title equals the catalogue's BM25 score, a BM25 encoder's, and a by-hand BM25 (Lucene idf) computation."""
    query = "nike black tshirt"
    rows = np.arange(0, 120, 7)
    sl = slates_of(feat_pipe, ["q"], [query], [rows])
    got = sl.x[0, :, COL["bm25_title"]]
    lx = tables.lexical["title"]
    np.testing.assert_allclose(got, lx.score(lx.query_terms(query)).at(rows), rtol=1e-5)
    assert (got > 0).any() and (got == 0).any()
    # a fresh encoder fitted on the same texts gives the same
    docs = [tables.lex_text["title"][r] for r in range(len(tables.ids))]
    fresh = BM25Encoder(k1=1.2, b=0.75).fit(docs)
    np.testing.assert_allclose(got, (fresh.encode_queries([query]) @ fresh.encode([docs[r] for r in rows]).T).toarray().ravel(), rtol=1e-5)
    # by hand
    toks = [tokenize(d) for d in docs]
    avgdl = np.mean([len(t) for t in toks])
    n = len(docs)
    for j, r in enumerate(rows):
        s = 0.0
        for term in set(tokenize(query)):
            df = sum(term in t for t in toks)
            tf = toks[r].count(term)
            if tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                s += idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * len(toks[r]) / avgdl))
        assert got[j] == pytest.approx(s, rel=1e-5)
    # min-max within the slate, overlap = share of query terms in the title, cosine = dot product
    mm = sl.x[0, :, COL["bm25_title_mm"]]
    assert mm.max() == pytest.approx(1.0) and mm.min() == pytest.approx(0.0)
    np.testing.assert_allclose(mm, (got - got.min()) / (got.max() - got.min()), rtol=1e-5, atol=1e-6)
    qt = set(tokenize(query))
    np.testing.assert_allclose(sl.x[0, :, COL["overlap_title"]], [len(qt & set(toks[r])) / len(qt) for r in rows], rtol=1e-6)
    np.testing.assert_allclose(sl.x[0, :, COL["cos_title"]], tables.emb["title"][rows] @ sl.q[0], rtol=1e-4, atol=1e-5)
    # the query vector is the encoder's, for the query alone
    np.testing.assert_array_equal(sl.q[0], feat_pipe.encoder.encode(query)[0])


def test_transcript_bm25_feature(feat_pipe, tables, slates_of):
    """Products with a spoken description get BM25 on the transcript; others 0."""
    rows = np.arange(0, 12)
    sl = slates_of(feat_pipe, ["q"], ["nike comes in black"], [rows])
    docs = list(tables.lex_text["transcript"])
    enc = BM25Encoder(k1=1.2, b=0.75).fit(docs)
    want = (enc.encode_queries(["nike comes in black"]) @ enc.encode([docs[r] for r in rows]).T).toarray().ravel()
    np.testing.assert_allclose(sl.x[0, :, COL["bm25_transcript"]], want, rtol=1e-5)
    has = tables.emb_mask["transcript"][rows]
    assert (want[has] > 0).all() and (want[~has] == 0).all()


def test_sparse_titles_lose_colour_words(feat_pipe, sparse_pipe, tables, attrs, slates_of):
    black = rows_where(tables, attrs, colour="Black", article="Tshirt")
    assert sparse_pipe.catalog.rows_of(tables.ids).tolist() == list(range(120))   # same rows in both variants
    sl = slates_of(feat_pipe, ["q"], ["black"], [np.array(black)])
    sp_ = slates_of(sparse_pipe, ["q"], ["black"], [np.array(black)])
    assert (sl.x[0, :, COL["bm25_title"]] > 0).all()
    dropped = np.array([attrs.loc[tables.ids[r], "title_sparse"] != attrs.loc[tables.ids[r], "title"] for r in black])
    assert dropped.any() and (~dropped).any()
    assert (sp_.x[0, dropped, COL["bm25_title"]] == 0).all() and (sp_.x[0, ~dropped, COL["bm25_title"]] > 0).all()


def test_colour_match_is_the_title_colour_without_photo_evidence(feat_pipe, sparse_pipe, tables, attrs, slates_of):
    """Without the photo head, colour_match is 1 where the indexed title states the query's colour, else 0 (a title
    that lost its colour is unknown); a query naming no colour gives 0 everywhere."""
    tees = rows_where(tables, attrs, article="Tshirt")
    sl = slates_of(feat_pipe, ["q", "r"], ["black tshirt", "tshirt"], [np.array(tees)] * 2)
    sp_ = slates_of(sparse_pipe, ["q"], ["black tshirt"], [np.array(tees)])
    for b, r in enumerate(tees):
        full, sparse = (attrs.loc[tables.ids[r], f] for f in ("title", "title_sparse"))
        assert sl.x[0, b, COL["colour_match"]] == float("black" in full.lower().split())
        assert sp_.x[0, b, COL["colour_match"]] == float("black" in sparse.lower().split())
    assert (sl.x[1, :, COL["colour_match"]] == 0).all()
    assert sl.x[0, :, COL["colour_match"]].any() and not sl.x[0, :, COL["colour_match"]].all()


def test_colour_match_reads_the_transcript_where_the_title_states_no_colour(spoken_sparse_tables, encoder, sparse_pipe,
                                                                           tables, attrs, slates_of):
    """With ``transcript_attributes`` (a model that ranks voice), a title that lost its colour takes the colour its
    transcript states; the title's own colour still comes first, and products without a transcript stay unknown."""
    from fusionrank.ranking import RankingPipeline

    spoken = spoken_sparse_tables
    pipe = RankingPipeline.over(spoken, None, encoder)
    tees = rows_where(tables, attrs, article="Tshirt")
    on = slates_of(pipe, ["q"], ["black tshirt"], [np.array(tees)])
    off = slates_of(sparse_pipe, ["q"], ["black tshirt"], [np.array(tees)])
    recovered = 0
    for b, r in enumerate(tees):
        sparse = attrs.loc[tables.ids[r], "title_sparse"].lower().split()
        said = spoken.records["transcript"][spoken.row_of[tables.ids[r]]] or ""
        want = float("black" in sparse or (not colour_columns(" ".join(sparse)) and "black" in said.lower().split()))
        assert on.x[0, b, COL["colour_match"]] == want
        recovered += want and not off.x[0, b, COL["colour_match"]]
    assert recovered >= 1


def test_labels_unjudged_zero_padding_minus_one(feat_pipe, tables, slates_of):
    ids = tables.ids
    qrels = pd.DataFrame({"query_id": ["a", "a", "b", "zzz"], "product_id": [ids[3], ids[5], ids[7], ids[1]],
                          "grade": [3, 1, 2, 3]})
    rows = [np.array([3, 4, 5, 6]), np.array([7, 8]), np.array([1])]
    sl = slates_of(feat_pipe, ["a", "b", "c"], ["black tshirt", "red shoes", "green watch"], rows)
    assert sl.y is None
    sl = attach_grades(sl, qrels, ids)
    assert sl.rows.tolist() == [[3, 4, 5, 6], [7, 8, -1, -1], [1, -1, -1, -1]]
    assert sl.y.tolist() == [[3, 0, 1, 0], [2, 0, -1, -1], [0, -1, -1, -1]]   # "zzz" is not asked for
    assert (sl.x[1, 2:] == 0).all() and not sl.mask[1, 2:].any()
    # concat pads narrower batches the same way
    both = Slates.concat([sl.subset([1]), sl.subset([0])])
    assert both.rows.shape == (2, 4) and both.y[0].tolist() == [2, 0, -1, -1]


def test_slates_columns_and_offset_rows(feat_pipe):
    sl = feat_pipe.slates(["a", "b"], ["black tshirt", "zorblax"])
    top = sl.columns([0, 1, 2])
    assert top.rows.shape == (2, 3) and np.array_equal(top.x, sl.x[:, :3]) and top.q is sl.q
    moved = sl.offset_rows(1000)
    assert np.array_equal(moved.rows, np.where(sl.rows >= 0, sl.rows + 1000, -1))


# --- the modality specification -------------------------------------------------------
def test_modality_spec_agrees_with_itself():
    """SCALAR_FEATURES, FEATURE_COLUMN, each modality's index and store feature, and the feature groups agree."""
    assert MODALITY_NAMES == ("text", "image", "audio") and TABLES == ("title", "image_proj", "transcript")
    assert [m.index for m in MODALITIES] == list(range(len(MODALITIES))) == [TEXT, IMAGE, AUDIO]
    assert [modality(n) for n in MODALITY_NAMES] == list(MODALITIES)
    assert LEXICAL_FIELDS == ("title", "transcript") == tuple(m.lexical for m in MODALITIES if m.lexical)
    # the scalar features: every modality's, in modality order, each exactly once; FEATURE_COLUMN is the inverse
    assert SCALAR_FEATURES == tuple(f for m in MODALITIES for f in m.features)
    assert len(set(SCALAR_FEATURES)) == len(SCALAR_FEATURES) == 11
    # the catalogue's tables: every modality's, then the per-product attribute tables (no modality, no mask column)
    assert CATALOG_TABLES == TABLES + ATTRIBUTE_TABLES == TABLES + ("colour",)
    assert FEATURE_COLUMN == {f: j for j, f in enumerate(SCALAR_FEATURES)}
    for m in MODALITIES:
        assert m.cosine in m.features
        if m.minmax:
            assert set(m.minmax) <= set(m.features) and m.minmax[1].endswith("_mm")
        if m.lexical:
            assert {f"bm25_{m.lexical}", f"overlap_{m.lexical}"} <= set(m.features)
    assert [m.required for m in MODALITIES] == [True, False, False]
    # where each table comes from in the embedding store
    assert [m.store_feature("title_sparse", "minilm") for m in MODALITIES] == [
        "title_sparse.minilm", "image_proj.title_sparse", "transcript.minilm"]
    # one feature group per modality: exactly the modality's features, its mask column, its table
    groups = feature_groups()
    assert [g.name for g in groups] == list(MODALITY_NAMES)
    for g, m in zip(groups, MODALITIES):
        assert [SCALAR_FEATURES[c] for c in g.columns] == list(m.features)
        assert g.mask_column == m.index and g.table == m.table
    assert sorted(c for g in groups for c in g.columns) == list(range(len(SCALAR_FEATURES)))   # a partition
    with pytest.raises(FusionrankError, match="unknown modality 'smell'; valid names: text, image, audio"):
        modality("smell")


def test_modality_spec_agrees_with_the_store_and_the_features(tiny_workspace, feat_pipe, tables):
    """Each modality's store feature exists, fills its table, and its features are the ones the builder computes."""
    from fusionrank.store import EmbeddingStore

    store = EmbeddingStore(tiny_workspace[0].store_dir)
    for m in MODALITIES:
        feat = m.store_feature("title", "minilm")
        assert store.exists(feat), feat
        emb, mask = store.matrix(feat, list(tables.ids), dim=384)
        np.testing.assert_array_equal(mask, tables.emb_mask[m.table])
        np.testing.assert_array_equal(emb[mask], tables.emb[m.table][mask])
    sl = feat_pipe.slates(["a", "b"], ["nike men tshirt", "comes in black"])
    valid = sl.rows >= 0
    safe = np.where(valid, sl.rows, 0)
    for m in MODALITIES:
        np.testing.assert_array_equal(sl.mask[..., m.index], tables.emb_mask[m.table][safe] & valid)
        cos = np.einsum("bnd,bd->bn", tables.emb[m.table][safe], sl.q)
        np.testing.assert_allclose(sl.x[..., COL[m.cosine]], np.where(sl.mask[..., m.index], cos, 0), rtol=1e-5, atol=1e-6)
        if m.lexical:
            lx = tables.lexical[m.lexical]
            for b, query in enumerate(sl.queries):
                bm = lx.score(lx.query_terms(query)).at(safe[b]) * sl.mask[b, :, m.index]
                np.testing.assert_allclose(sl.x[b, :, COL[f"bm25_{m.lexical}"]], bm, rtol=1e-6)
        # a modality's features are zero wherever it is absent (and on padding)
        absent = ~sl.mask[..., m.index]
        assert not sl.x[..., [COL[f] for f in m.features]][absent].any()


def test_feature_groups():
    g = feature_groups(["text", "audio"])
    assert [x.name for x in g] == ["text", "audio"] and [x.mask_column for x in g] == [0, 2]
    assert [SCALAR_FEATURES[c] for c in g[0].columns] == ["bm25_title", "bm25_title_mm", "overlap_title", "cos_title",
                                                          "colour_match"]
    assert g[1].table == "transcript"
    with pytest.raises(FusionrankError, match="unknown modality 'smell'"):
        feature_groups(["text", "smell"])
