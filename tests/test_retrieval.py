"""Candidate-stage building blocks: top-k selection, BM25 top-k, RRF merging, vector indexes."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from fusionrank.errors import FusionrankError
from fusionrank.retrieval.dense import VectorIndex
from fusionrank.retrieval.hybrid import rrf_merge, sparse_topk, topk_rows


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


# --- sparse_topk -------------------------------------------------------------------
def test_sparse_topk_equals_dense_scores():
    rng = np.random.default_rng(1)
    docs = sp.random(40, 15, density=0.2, random_state=2, format="csr", dtype=np.float64)
    q = sp.csr_matrix((rng.random((300, 15)) < 0.15).astype(np.float64))
    got = sparse_topk(q, docs.T.tocsr(), 8, chunk=64)   # several chunks
    np.testing.assert_array_equal(got, reference_topk((q @ docs.T).toarray(), 8, None))
    # depth beyond the catalogue: padded to the requested width
    assert sparse_topk(q[:2], docs.T.tocsr(), 50).shape == (2, 50)


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


# --- VectorIndex ----------------------------------------------------------------
def unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_index_equals_brute_force_and_skips_masked_rows():
    rng = np.random.default_rng(3)
    X, Q = unit(rng, 300, 16), unit(rng, 12, 16)
    mask = rng.random(300) < 0.7
    rows, scores = VectorIndex("exact").build(X, mask).search(Q, 10)
    full = np.where(mask[None, :], Q @ X.T, -np.inf)
    want = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-5, atol=1e-6)
    assert mask[rows].all()
    # k larger than the number of indexed rows
    rows, _ = VectorIndex("exact").build(X[:5]).search(Q, 10)
    assert rows.shape == (12, 5) and set(rows[0]) == set(range(5))


def test_hnsw_returns_plausible_neighbours():
    rng = np.random.default_rng(4)
    X = unit(rng, 600, 24)
    mask = np.ones(600, bool)
    mask[::7] = False
    Q = X[1:40:3] + 0.05 * rng.normal(size=(13, 24)).astype(np.float32)
    exact, _ = VectorIndex("exact").build(X, mask).search(Q, 10)
    approx, scores = VectorIndex("hnsw", ef_search=64).build(X, mask).search(Q, 10)
    assert approx.shape == (13, 10) and mask[approx[approx >= 0]].all()
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9
    assert (approx[:, 0] == exact[:, 0]).all()          # the (perturbed) item itself comes first
    assert (np.diff(scores, axis=1) <= 1e-6).all()


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_vector_index_save_load_round_trip(tmp_path, kind):
    rng = np.random.default_rng(5)
    X, Q = unit(rng, 200, 8), unit(rng, 6, 8)
    mask = rng.random(200) < 0.8
    idx = VectorIndex(kind).build(X, mask)
    idx.save(tmp_path / f"{kind}.faiss")
    back = VectorIndex.load(tmp_path / f"{kind}.faiss", kind=kind)
    assert back.dim == 8
    r1, s1 = idx.search(Q, 7)
    r2, s2 = back.search(Q, 7)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)


def test_vector_index_errors():
    with pytest.raises(FusionrankError, match="unknown vector index kind"):
        VectorIndex("ivf")
    with pytest.raises(FusionrankError, match="not built"):
        VectorIndex().search(np.zeros((1, 4), np.float32), 3)
    rows, scores = VectorIndex().build(np.zeros((3, 4), np.float32), np.zeros(3, bool)).search(np.ones((2, 4), np.float32), 5)
    assert rows.shape == (2, 0) and scores.shape == (2, 0)
