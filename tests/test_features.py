"""ProductIndex and slates on the tiny fashion44k-layout dataset: shapes, masks, features, labels, filters."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fusionrank.encoders import BM25Encoder
from fusionrank.encoders.text import tokenize
from fusionrank.features import MODALITIES, SCALAR_FEATURES, IndexConfig, ProductIndex, Slates
from fusionrank.retrieval.hybrid import CandidateConfig

COL = {f: j for j, f in enumerate(SCALAR_FEATURES)}
TEXT, IMAGE, AUDIO = (MODALITIES.index(m) for m in ("text", "image", "audio"))


@pytest.fixture(scope="module")
def index(tiny_workspace):
    ws, cat = tiny_workspace
    cfg = IndexConfig(title_field="title", candidates=CandidateConfig(n=20, depth=20))
    return ProductIndex.build(cat.products, ws.store_dir, cfg, log=lambda m: None)


@pytest.fixture(scope="module")
def sparse_index(tiny_workspace):
    ws, cat = tiny_workspace
    cfg = IndexConfig(title_field="title_sparse", candidates=CandidateConfig(n=20, depth=20))
    return ProductIndex.build(cat.products, ws.store_dir, cfg, log=lambda m: None)


@pytest.fixture(scope="module")
def attrs(tiny_fashion):
    return tiny_fashion.attrs.set_index("product_id")


def rows_where(index, attrs, **kw) -> list[int]:
    sel = attrs
    for k, v in kw.items():
        sel = sel[sel[k] == v]
    return [int(r) for r in index.rows_of(list(sel.index))]


def test_build_and_modality_masks(index, attrs):
    assert len(index.ids) == 120 and index.products is not None
    m = index.modality_mask
    assert m.shape == (120, 3) and m.dtype == bool
    ids = list(index.ids)
    np.testing.assert_array_equal(m[:, TEXT], np.ones(120, bool))
    np.testing.assert_array_equal(m[:, IMAGE], attrs.loc[ids, "has_image"].to_numpy(bool))
    np.testing.assert_array_equal(m[:, AUDIO], attrs.loc[ids, "has_audio"].to_numpy(bool))
    # embeddings of absent modalities are zeros, present ones unit length
    for name, k in (("image_proj", IMAGE), ("transcript", AUDIO), ("title", TEXT)):
        e = index.emb[name]
        assert e.shape == (120, 384)
        assert not e[~m[:, k]].any()
        np.testing.assert_allclose(np.linalg.norm(e[m[:, k]], axis=1), 1.0, atol=1e-4)
    assert index.rows_of(["1000", "nope"]).tolist() == [0, -1]


def test_slates_shapes(index, tiny_fashion):
    q = tiny_fashion.queries["dev"]
    sl = index.slates(q["query_id"].tolist(), q["query"].tolist(), qrels=tiny_fashion.qrels["dev"])
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
    assert index.slates(["a"], ["black tshirt"]).y is None
    # batching does not change anything
    sl2 = index.slates(q["query_id"].tolist(), q["query"].tolist(), qrels=tiny_fashion.qrels["dev"], batch=3)
    np.testing.assert_array_equal(sl.rows, sl2.rows)
    np.testing.assert_allclose(sl.x, sl2.x, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sl.y, sl2.y)
    sub = sl.subset([2, 0])
    assert sub.query_ids == [sl.query_ids[2], sl.query_ids[0]] and np.array_equal(sub.rows[1], sl.rows[0])


def test_candidates_find_the_relevant_products(index, attrs):
    """Hybrid candidates for "black tshirt" hold every black t-shirt (and only t-shirts or black things first)."""
    sl = index.slates(["q"], ["black tshirt"])
    cand = set(sl.rows[0][sl.rows[0] >= 0])
    assert set(rows_where(index, attrs, colour="Black", article="Tshirt")) <= cand


def test_missing_photo_and_audio_give_exact_zeros_and_mask_false(index, attrs):
    no_photo = rows_where(index, attrs, has_image=False)[:2]
    photo = rows_where(index, attrs, has_image=True, has_audio=True)[:2]
    no_audio = rows_where(index, attrs, has_image=True, has_audio=False)[:2]
    rows = [np.array(no_photo + photo + no_audio)]
    sl = index.slates(["q"], ["black tshirt nike"], rows=rows)
    img_cols = [COL["cos_image"], COL["cos_image_mm"]]
    aud_cols = [COL[f] for f in ("bm25_transcript", "bm25_transcript_mm", "overlap_transcript", "cos_transcript")]
    x, m = sl.x[0], sl.mask[0]
    assert m[:, TEXT].all()
    assert (m[:, IMAGE] == [False, False, True, True, True, True]).all()
    assert (m[:, AUDIO] == [index.modality_mask[r, AUDIO] for r in rows[0]]).all()
    assert (x[:2][:, img_cols] == 0).all()
    assert (x[2:4][:, img_cols] != 0).any(axis=1).all()            # a present photo does get a cosine
    assert (x[4:][:, aud_cols] == 0).all() and not m[4:, AUDIO].any()
    assert (x[2:4][:, COL["cos_transcript"]] != 0).all()


def test_bm25_feature_equals_the_bm25_score(index):
    """bm25_title equals the BM25 encoder's score, and a by-hand BM25 (Lucene idf) computation."""
    query = "nike black tshirt"
    rows = np.arange(0, 120, 7)
    sl = index.slates(["q"], [query], rows=[rows])
    got = sl.x[0, :, COL["bm25_title"]]
    enc = index.bm25["title"]
    want = (enc.encode_queries([query]) @ enc.encode([index.bm25_text("title", r) for r in rows]).T).toarray().ravel()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # a fresh encoder fitted on the same texts gives the same
    docs = [index.bm25_text("title", r) for r in range(len(index.ids))]
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
    np.testing.assert_allclose(sl.x[0, :, COL["cos_title"]], index.emb["title"][rows] @ sl.q[0], rtol=1e-4, atol=1e-5)


def test_transcript_bm25_feature(index, tiny_fashion):
    """Products with a spoken description get BM25 on the transcript; others 0."""
    rows = np.arange(0, 12)
    sl = index.slates(["q"], ["nike comes in black"], rows=[rows])
    enc = index.bm25["transcript"]
    want = (enc.encode_queries(["nike comes in black"]) @ index.W["transcript"][rows].T).toarray().ravel()
    np.testing.assert_allclose(sl.x[0, :, COL["bm25_transcript"]], want, rtol=1e-5)
    has = index.modality_mask[rows, AUDIO]
    assert (want[has] > 0).all() and (want[~has] == 0).all()


def test_sparse_titles_lose_colour_words(index, sparse_index, attrs):
    black = rows_where(index, attrs, colour="Black", article="Tshirt")
    sl = index.slates(["q"], ["black"], rows=[np.array(black)])
    sp_ = sparse_index.slates(["q"], ["black"], rows=[np.array(black)])
    assert (sl.x[0, :, COL["bm25_title"]] > 0).all()
    dropped = np.array([attrs.loc[index.ids[r], "title_sparse"] != attrs.loc[index.ids[r], "title"] for r in black])
    assert dropped.any() and (~dropped).any()
    assert (sp_.x[0, dropped, COL["bm25_title"]] == 0).all() and (sp_.x[0, ~dropped, COL["bm25_title"]] > 0).all()


def test_labels_unjudged_zero_padding_minus_one(index):
    ids = index.ids
    qrels = pd.DataFrame({"query_id": ["a", "a", "b", "zzz"], "product_id": [ids[3], ids[5], ids[7], ids[1]],
                          "grade": [3, 1, 2, 3]})
    rows = [np.array([3, 4, 5, 6]), np.array([7, 8]), np.array([1])]
    sl = index.slates(["a", "b", "c"], ["black tshirt", "red shoes", "green watch"], qrels=qrels, rows=rows)
    assert sl.rows.tolist() == [[3, 4, 5, 6], [7, 8, -1, -1], [1, -1, -1, -1]]
    assert sl.y.tolist() == [[3, 0, 1, 0], [2, 0, -1, -1], [0, -1, -1, -1]]   # "zzz" is not asked for
    assert (sl.x[1, 2:] == 0).all() and not sl.mask[1, 2:].any()
    # concat pads narrower batches the same way
    both = Slates.concat([sl.subset([1]), sl.subset([0])])
    assert both.rows.shape == (2, 4) and both.y[0].tolist() == [2, 0, -1, -1]


def test_allowed_filter_restricts_candidates(index, attrs):
    """``allowed`` (e.g. a category filter) applies to every candidate source, BM25 and dense."""
    footwear = (attrs.loc[list(index.ids), "category"] == "Footwear").to_numpy()
    for query in ("black tshirt", "black", "nike men watch"):
        q_emb = index.encode_queries([query])
        (cand,) = index.candidates([query], q_emb, allowed=footwear)
        assert len(cand) > 0 and footwear[cand].all(), query
        sl = index.slates(["q"], [query], allowed=footwear)
        real = sl.rows[0][sl.rows[0] >= 0]
        assert footwear[real].all() and set(real) == set(cand)
    # BM25 alone: only footwear that matches the words; dense alone: only footwear products
    for sources in (("bm25:title",), ("dense:title",), ("dense:image_proj",)):
        index.config.candidates.sources = sources
        try:
            (cand,) = index.candidates(["black shoes"], index.encode_queries(["black shoes"]), allowed=footwear)
        finally:
            index.config.candidates.sources = CandidateConfig().sources
        assert len(cand) > 0 and footwear[cand].all(), sources
    nothing = np.zeros(len(index.ids), bool)
    (cand,) = index.candidates(["black"], index.encode_queries(["black"]), allowed=nothing)
    assert len(cand) == 0
