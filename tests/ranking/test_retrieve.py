"""The candidate stage: top-k selection, RRF merging, and HybridRetriever over the tiny catalogue.

(Vector search has its own tests in test_vectors.py, BM25 in test_lexical.py.)
"""
from __future__ import annotations

import numpy as np
import pytest

from fusionrank.errors import UnknownCategory, UnknownNameError
from fusionrank.ranking import RETRIEVERS, CandidateConfig, HybridRetriever, Queries, build_retriever, rrf_merge, topk_rows
from fusionrank.ranking.vectors import RowFilter


def reference_topk(s: np.ndarray, k: int, valid: np.ndarray | None) -> np.ndarray:
    """Full stable sort: descending score, ties by lower index; invalid / non-positive (no mask) -> -1."""
    s = s if valid is None else np.where(valid, s, -np.inf)
    k = min(k, s.shape[1])
    out = np.empty((s.shape[0], k), np.int64)
    for b, row in enumerate(s):
        top = np.lexsort((np.arange(len(row)), -row))[:k]
        ok = np.isfinite(row[top]) & (row[top] > (0 if valid is None else -np.inf))
        out[b] = np.where(ok, top, -1)
    return out


# --- topk_rows -------------------------------------------------------------------
def test_topk_rows_orders_descending():
    s = np.array([[0.1, 0.9, 0.5, 0.7], [3.0, 1.0, 2.0, 4.0]])
    assert topk_rows(s, 3).tolist() == [[1, 3, 2], [3, 0, 2]]
    assert topk_rows(s, 1).tolist() == [[1], [3]]
    assert topk_rows(s, 10).shape == (2, 4)  # k is capped at the row length


def test_topk_rows_ties_go_to_the_lower_index():
    s = np.array([[1.0, 2.0, 2.0, 1.0, 2.0, 1.0]])
    assert topk_rows(s, 3).tolist() == [[1, 2, 4]]
    assert topk_rows(s, 4).tolist() == [[1, 2, 4, 0]]   # the tie at the cut: index 0, not 3 or 5
    assert topk_rows(np.ones((1, 50)), 7).tolist() == [list(range(7))]
    # argpartition alone returned row 2 here instead of row 1 for the last (tied) place
    s = np.array([[1, 2, 2, 3, 3, 1, 3, 2, 2, 3, 2, 1, 1, 3, 2, 2, 2, 3, 2, 1, 3]], float)
    assert topk_rows(s, 8).tolist() == [[3, 4, 6, 9, 13, 17, 20, 1]]


def test_topk_rows_ties_at_the_cut_match_a_full_stable_sort():
    """Integer-valued scores (as BM25 with one query term gives) tie a lot, also across the k-th place."""
    rng = np.random.default_rng(0)
    for t in range(300):
        n = int(rng.integers(2, 60))
        k = int(rng.integers(1, n + 1))
        s = rng.integers(-1, 4, size=(3, n)).astype(np.float64)
        valid = rng.random((3, n)) < 0.8 if t % 2 else None
        np.testing.assert_array_equal(topk_rows(s, k, valid), reference_topk(s, k, valid), err_msg=f"{s}, k={k}")


def test_topk_rows_pads_with_minus_one():
    # without a mask, zero/negative scores are "no match" (BM25): padded
    s = np.array([[0.0, 2.0, 0.0, -1.0, 1.0]])
    assert topk_rows(s, 4).tolist() == [[1, 4, -1, -1]]
    # with a mask, any finite valid score counts (cosines can be negative); invalid entries pad
    valid = np.array([[True, False, True, True, False]])
    assert topk_rows(s, 4, valid).tolist() == [[0, 2, 3, -1]]
    assert topk_rows(np.array([[-np.inf, 0.5]]), 2, np.ones((1, 2), bool)).tolist() == [[1, -1]]


# --- rrf_merge ---------------------------------------------------------------------
def test_rrf_merge_hand_computed():
    bm25 = np.array([3, 1, -1])
    dense = np.array([1, 2, 5])
    # scores (k=60): row 1: 1/62 + 1/61, row 3: 1/61, row 2: 1/62, row 5: 1/63
    assert rrf_merge([bm25, dense], n=10).tolist() == [1, 3, 2, 5]
    assert rrf_merge([bm25, dense], n=2).tolist() == [1, 3]
    # weights [1, 3]: row 1: 1/62 + 3/61 = .0653, row 2: 3/62 = .0484, row 5: 3/63 = .0476, row 3: 1/61 = .0164
    assert rrf_merge([bm25, dense], n=10, weights=[1.0, 3.0]).tolist() == [1, 2, 5, 3]
    # rrf_k sets how fast the rank discount falls: row 3 is third in two lists, row 1 first in one
    a, b = np.array([1, 2, 3]), np.array([4, 5, 3])
    assert rrf_merge([a, b], n=5).tolist() == [3, 1, 4, 2, 5]            # 2/63 > 1/61 > 1/62
    assert rrf_merge([a, b], n=5, rrf_k=0.5).tolist() == [1, 4, 3, 2, 5]  # 1/1.5 > 2/3.5 > 1/2.5
    # equal scores: the lower row first
    assert rrf_merge([np.array([7]), np.array([4])], n=5).tolist() == [4, 7]
    assert rrf_merge([np.array([-1, -1]), np.array([], np.int64)], n=5).tolist() == []


def test_rrf_merge_hand_computed_values():
    lists = [np.array([10, 20, 30]), np.array([30, 10, -1]), np.array([40])]
    k = 60.0
    want = {10: 1 / (k + 1) + 1 / (k + 2), 20: 1 / (k + 2), 30: 1 / (k + 3) + 1 / (k + 1), 40: 1 / (k + 1)}
    order = sorted(want, key=lambda r: (-want[r], r))
    assert rrf_merge(lists, n=4).tolist() == order == [10, 30, 40, 20]



# --- HybridRetriever -------------------------------------------------------------
QUERIES = ["black tshirt", "nike men tshirt", "red shoes", "RED Shirt!!", "zorblax"]


def test_hybrid_candidates_are_the_rrf_merge_of_its_sources(tables, encoder):
    cfg = tables.config.candidates
    assert cfg.n == 20 and cfg.depth == 20 and len(cfg.sources) == 5
    qs = encoder.transform(Queries.of(QUERIES))
    cands = HybridRetriever(tables).transform(qs)
    assert len(cands) == len(QUERIES) and cands.queries is qs
    for b, query in enumerate(QUERIES):
        lists = []
        for src in cfg.sources:
            one = HybridRetriever(tables, CandidateConfig(sources=(src,), n=cfg.depth, depth=cfg.depth))
            (rows,) = one.transform(encoder.transform(Queries.of([query]))).rows
            kind, name = src.split(":")
            if kind == "bm25":  # a source's list: its top rows by score, ties to the lower row
                lx = tables.lexical[name]
                r, s = lx.score(lx.query_terms(query)).arrays()
                want = r[np.lexsort((r, -s))][:cfg.depth]
            else:
                want = tables.vectors[name].search(qs.q[b:b + 1], cfg.depth)[0]
            np.testing.assert_array_equal(rows, want, err_msg=f"{src} {query}")
            lists.append(rows)
            assert cands.sources[b][src] == len(rows)
        np.testing.assert_array_equal(cands.rows[b], rrf_merge(lists, cfg.n, cfg.rrf_k))
        assert len(cands.rows[b]) == len(set(cands.rows[b].tolist())) <= cfg.n
    # a word no product has: only the dense sources give candidates
    assert cands.sources[-1]["bm25:title"] == 0 and cands.sources[-1]["dense:title"] == 20


def test_source_weights_change_the_merge(tables, encoder):
    qs = encoder.transform(Queries.of(["nike men tshirt"]))
    sources = ("bm25:title", "dense:image_proj")
    plain = HybridRetriever(tables, CandidateConfig(sources=sources, n=10, depth=20)).transform(qs).rows[0]
    heavy = HybridRetriever(tables, CandidateConfig(sources=sources, n=10, depth=20,
                                                    weights={"dense:image_proj": 1000.0})).transform(qs).rows[0]
    image_only = HybridRetriever(tables, CandidateConfig(sources=("dense:image_proj",), n=10, depth=20)).transform(qs).rows[0]
    np.testing.assert_array_equal(heavy, image_only)    # the image list dominates the fused order
    assert plain.tolist() != heavy.tolist()


def test_category_filter_restricts_every_source(tables, encoder, feat_pipe, attrs):
    """A category filter applies to every candidate source, BM25 and dense (case-insensitive)."""
    footwear = (attrs.loc[list(tables.ids), "category"] == "Footwear").to_numpy()
    retriever = HybridRetriever(tables)
    for query in ("black tshirt", "black", "nike men watch"):
        (cand,) = retriever.transform(encoder.transform(Queries.of([query], category="Footwear"))).rows
        assert len(cand) > 0 and footwear[cand].all(), query
        sl = feat_pipe.slates(["q"], [query], category="Footwear")
        real = sl.rows[0][sl.rows[0] >= 0]
        assert footwear[real].all() and set(real) == set(cand)
    # BM25 alone: only footwear that matches the words; dense alone: only footwear products
    for sources in (("bm25:title",), ("dense:title",), ("dense:image_proj",), ("dense:transcript",)):
        one = HybridRetriever(tables, CandidateConfig(sources=sources, n=20, depth=20))
        (cand,) = one.transform(encoder.transform(Queries.of(["black shoes"], category="footwear"))).rows
        assert len(cand) > 0 and footwear[cand].all(), sources
    # a filter that allows nothing: no source returns anything
    nothing = np.zeros(len(tables.ids), bool)
    flt = RowFilter(nothing, np.packbits(nothing, bitorder="little"), 0.0)
    q = encoder.encode_many(["black"])
    for t in tables.dense_tables():
        assert len(tables.vectors[t].search(q, 20, flt)[0]) == 0
    for lx in tables.lexical.values():
        assert len(lx.score(lx.query_terms("black"), nothing)) == 0


def test_unknown_category_is_an_error_listing_the_valid_ones(tables, encoder):
    qs = encoder.transform(Queries.of(["black"], category="Jewellery"))
    with pytest.raises(UnknownCategory, match="unknown category 'Jewellery'; valid: Accessories, Apparel, Footwear"):
        HybridRetriever(tables).transform(qs)


def test_retriever_registry_and_config_validation(tables):
    assert "hybrid" in RETRIEVERS and RETRIEVERS.get("hybrid") is HybridRetriever
    r = build_retriever(tables)
    assert isinstance(r, HybridRetriever) and r.config == tables.config.candidates
    with pytest.raises(UnknownNameError, match="unknown retriever 'nope'; valid names: hybrid") as e:
        build_retriever(tables, CandidateConfig(name="nope"))
    assert e.value.valid == RETRIEVERS.names()
    with pytest.raises(ValueError, match="unknown candidate source 'dense:smell'; valid: bm25:title, bm25:transcript, "
                                         "dense:title, dense:image_proj, dense:transcript"):
        CandidateConfig(sources=("bm25:title", "dense:smell"))
    with pytest.raises(ValueError, match="weight for 'dense:title', which is not a source; sources: bm25:title"):
        CandidateConfig(sources=("bm25:title",), weights={"dense:title": 2.0})
