"""Vector search over a catalogue table: ExactVectors is brute force over live rows that have a vector; AnnIndex (faiss IVF)."""
from __future__ import annotations

import numpy as np
import pytest

from fusionrank import schema as S
from fusionrank.errors import FusionrankError
from fusionrank.modalities import TABLES
from fusionrank.ranking import CatalogConfig, VectorConfig
from fusionrank.ranking.vectors import AnnIndex, ExactVectors, RowFilter
from fusionrank.serving.index import SearchIndex


def unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_tables(X: np.ndarray, mask: np.ndarray, codec: str = "exact") -> SearchIndex:
    """Updatable catalogue tables whose every table holds ``X`` (rows where ``mask``; zeros elsewhere)."""
    n, d = X.shape
    ids = [f"p{i}" for i in range(n)]
    emb = {t: np.where(mask[:, None], X, 0).astype(np.float32) for t in TABLES}
    emb_mask = {t: mask.copy() for t in TABLES}
    emb_mask["title"] = np.ones(n, bool)
    emb["title"] = X
    records = {S.PRODUCT_ID: ids, S.TITLE: ids, S.CATEGORY: ["even" if i % 2 == 0 else "odd" for i in range(n)]}
    return SearchIndex.build(records, {"title": ids, "transcript": [""] * n}, emb, emb_mask,
                             CatalogConfig(ann=VectorConfig(codec=codec)), log=lambda m: None)


def brute_force(Q: np.ndarray, X: np.ndarray, ok: np.ndarray, k: int) -> list[np.ndarray]:
    full = np.where(ok[None, :], Q @ X.T, -np.inf)
    out = []
    for row in full:
        top = np.lexsort((np.arange(len(row)), -row))[:k]
        out.append(top[np.isfinite(row[top])])
    return out


def test_exact_equals_brute_force_and_skips_masked_and_dead_rows():
    rng = np.random.default_rng(3)
    X, Q = unit(rng, 300, 16), unit(rng, 12, 16)
    mask = rng.random(300) < 0.7
    t = synthetic_tables(X, mask)
    vec = t.vectors["image_proj"]
    assert isinstance(vec, ExactVectors)
    got = vec.search(Q, 10)
    for g, w in zip(got, brute_force(Q, X, mask, 10)):
        np.testing.assert_array_equal(g, w)
        assert mask[g].all()
    # removed products are never returned
    dead = [int(r) for r in got[0][:3]] + [int(got[1][0])]
    for r in dead:
        assert t.delete(f"p{r}")
    live = mask.copy()
    live[dead] = False
    got = vec.search(Q, 10)
    for g, w in zip(got, brute_force(Q, X, live, 10)):
        np.testing.assert_array_equal(g, w)
        assert not set(g) & set(dead)
    # a filter applies inside the search
    flt = t.row_filter("even")
    for g, w in zip(vec.search(Q, 10, flt), brute_force(Q, X, live & (np.arange(300) % 2 == 0), 10)):
        np.testing.assert_array_equal(g, w)
    # a filter that allows nothing gives nothing
    nothing = np.zeros(300, bool)
    assert all(len(g) == 0 for g in vec.search(Q, 10, RowFilter(nothing, np.packbits(nothing, bitorder="little"), 0.0)))


def test_exact_k_larger_than_the_rows_that_qualify():
    rng = np.random.default_rng(4)
    X, Q = unit(rng, 5, 8), unit(rng, 12, 8)
    t = synthetic_tables(X, np.array([True, False, True, True, True]))
    got = t.vectors["image_proj"].search(Q, 10)
    assert len(got) == 12 and all(sorted(g.tolist()) == [0, 2, 3, 4] for g in got)
    assert all(len(g) == 5 for g in t.vectors["title"].search(Q, 10))
    assert [len(g) for g in t.vectors["title"].search(Q[:2], 0)] == [0, 0]


def test_ties_go_to_the_lower_row():
    X = np.zeros((6, 4), np.float32)
    X[:, 0] = 1.0
    t = synthetic_tables(X, np.ones(6, bool))
    assert t.vectors["title"].search(np.array([[1, 0, 0, 0]], np.float32), 4)[0].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("codec", ["flat", "sq8"])
def test_ann_index_finds_the_exact_neighbours_and_follows_deletes(codec):
    rng = np.random.default_rng(5)
    X = unit(rng, 600, 24)
    mask = np.ones(600, bool)
    mask[::7] = False
    Q = X[1:40:3] + 0.05 * rng.normal(size=(13, 24)).astype(np.float32)
    t = synthetic_tables(X, mask, codec)
    ann = t.vectors["image_proj"]
    assert isinstance(ann, AnnIndex) and ann.ntotal == int(mask.sum())
    assert ann.nprobe >= ann.nlist  # tiny: every list is probed, the search is exhaustive
    got = ann.search(Q, 10)
    want = brute_force(Q, X, mask, 10)
    if codec == "flat":
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    else:  # 8-bit codes: the neighbour set is nearly exact, the (perturbed) item itself first
        recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)])
        assert recall >= 0.9
    assert all(g[0] == w[0] for g, w in zip(got, want))
    assert all(mask[g].all() for g in got)
    # a filter applies inside the search (faiss's bitmap selector)
    even = np.arange(600) % 2 == 0
    filtered = ann.search(Q, 10, t.row_filter("even"))
    assert all(len(g) == 10 and even[g].all() for g in filtered)
    if codec == "flat":
        for g, w in zip(filtered, brute_force(Q, X, mask & even, 10)):
            np.testing.assert_array_equal(g, w)
    t.delete("p1")
    assert ann.ntotal == int(mask.sum()) - 1 and 1 not in ann.search(Q[:1], 10)[0]


def test_ann_ties_beyond_the_extra_fetched_go_to_the_lower_rows():
    """60 rows in several inverted lists score exactly as the k-th: the top 10 takes the lowest of them, in a
    catalogue and in any part of it (faiss alone keeps the first it meets, list by list)."""
    rng = np.random.default_rng(3)
    v = rng.normal(size=(400, 16)).astype(np.float32)
    v[:, 0] = rng.uniform(-1, 0.4, 400).astype(np.float32)
    tied = np.sort(rng.choice(np.arange(3, 400), 60, replace=False))
    v[tied, 0] = 0.5  # the query is e0: these score exactly 0.5, wherever the other coordinates put them
    v[:3, 0] = 0.9
    q = np.eye(16, dtype=np.float32)[:1]
    whole = AnnIndex(16, nlist=8, nprobe=8, codec="flat").build(v, np.arange(400))
    rows, scores = whole.search_scored(q, 10)[0]
    assert rows.tolist() == [0, 1, 2] + tied[:7].tolist() and (scores[3:] == 0.5).all()
    part = whole.like()  # the same trained quantiser, without the first 4 tied rows
    rest = np.setdiff1d(np.arange(400), tied[:4])
    part.add(v[rest], rest)
    assert part.search(q, 10)[0].tolist() == [0, 1, 2] + tied[4:11].tolist()


@pytest.mark.parametrize("codec", ["flat", "sq8"])
def test_a_part_holds_the_wholes_codes_of_its_rows_renumbered(codec):
    """A part scores each of its rows exactly as the whole does (its codes are copied, not made again from vectors
    that a float16 table rounded), with removed rows left out; the whole is unchanged."""
    rng = np.random.default_rng(4)
    x, q = unit(rng, 500, 16), unit(rng, 5, 16)
    whole = AnnIndex(16, nlist=8, nprobe=8, codec=codec).build(x, np.arange(500))
    whole.remove(np.array([6, 10]))
    rows = np.arange(0, 500, 3)  # 0, 3, 6 (removed), 9, ...
    part = whole.part(rows)
    assert part.ntotal == len(rows) - 1 and whole.ntotal == 498
    rounded = AnnIndex(16, nlist=8, nprobe=8, codec=codec)
    rounded.index = whole._empty_like_base()
    rounded.add(x[rows].astype(np.float16).astype(np.float32), np.arange(len(rows)))
    for (wr, ws), (pr, ps), (rr, rs) in zip(whole.search_scored(q, 500), part.search_scored(q, 500),
                                            rounded.search_scored(q, 500)):
        mine = np.isin(wr, rows)
        np.testing.assert_array_equal(rows[pr], wr[mine])
        np.testing.assert_array_equal(ps, ws[mine])
        if codec == "sq8":  # codes made again from rounded vectors score differently: what the copy avoids
            assert not np.array_equal(np.sort(rs), np.sort(ps))


@pytest.mark.parametrize("codec", ["flat", "sq8"])
def test_a_copy_of_an_index_built_without_vectors_is_empty_too_and_trains_on_its_first(codec):
    """A table no product has a vector in (a catalogue without clips): its shards' copies are untrained as it is."""
    empty = AnnIndex(8, codec=codec).build(np.zeros((0, 8), np.float32), np.zeros(0, np.int64))
    part = empty.like()
    assert part.ntotal == 0 and [r.tolist() for r in part.search(np.eye(8, dtype=np.float32)[:1], 5)] == [[]]
    rng = np.random.default_rng(2)
    x = unit(rng, 300, 8)
    part.add(x, np.arange(300))
    assert part.ntotal == 300 and part.search(x[:1], 1)[0].tolist() == [0]


@pytest.mark.parametrize("codec", ["flat", "sq8"])
def test_ann_index_save_load_round_trip(tmp_path, codec):
    rng = np.random.default_rng(5)
    X, Q = unit(rng, 400, 8), unit(rng, 6, 8)
    rows = np.flatnonzero(rng.random(400) < 0.8)
    idx = AnnIndex(8, codec=codec).build(X[rows], rows)
    idx.save(tmp_path / f"{codec}.faiss")
    back = AnnIndex.load(tmp_path / f"{codec}.faiss", nprobe=idx.nprobe, codec=codec)
    assert back.dim == 8 and back.nlist == idx.nlist and back.ntotal == len(rows)
    for a, b in zip(idx.search(Q, 7), back.search(Q, 7)):
        np.testing.assert_array_equal(a, b)
        assert set(a) <= set(rows)


def test_ann_index_errors_and_empty_index():
    with pytest.raises(FusionrankError, match="unknown ANN codec 'hnsw'; valid: flat, sq8"):
        AnnIndex(4, codec="hnsw")
    q = np.ones((2, 4), np.float32)
    assert [len(r) for r in AnnIndex(4).search(q, 3)] == [0, 0]                       # not built
    empty = AnnIndex(4, codec="flat").build(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert [len(r) for r in empty.search(q, 3)] == [0, 0]


@pytest.mark.parametrize("codec", ["flat", "sq8"])
def test_memory_mapped_ivf_takes_writes_in_a_delta_and_answers_as_the_in_memory_index(tmp_path, codec):
    """A read-only mapped base + private delta + removed-rows bitmap gives the in-memory index's results."""
    rng = np.random.default_rng(3)
    X = unit(rng, 3000, 16)
    mem = AnnIndex(16, 20, nprobe=20, codec=codec).build(X[:2500], np.arange(2500))
    mem.save(tmp_path / "a.faiss")
    mapped = AnnIndex.load(tmp_path / "a.faiss", nprobe=20, codec=codec, mmap=True)
    assert mapped.read_only
    for a in (mem, mapped):
        a.add(X[2500:], np.arange(2500, 3000))
        a.remove(np.array([0, 7, 2600, 2999]))
    assert mapped.ntotal == mem.ntotal == 2996
    Q = unit(rng, 25, 16)
    flt = np.arange(3000) % 3 == 0
    allowed = RowFilter(flt, np.packbits(flt, bitorder="little"), float(flt.mean()))
    for f in (None, allowed):
        for got, want in zip(mapped.search(Q, 30, f), mem.search(Q, 30, f)):
            assert got.tolist() == want.tolist()
            assert not {0, 7, 2600, 2999} & set(got.tolist())
    with pytest.raises(FusionrankError, match="memory-mapped index shared by worker processes is not saved"):
        mapped.save(tmp_path / "b.faiss")


@pytest.mark.parametrize("n,k", [(0, 5), (7, 10), (50, 5), (3000, 1), (3000, 200)])
def test_ranked_scored_keeps_the_best_ties_to_the_lower_row(n, k):
    """Against a plain sort of (-score, row) pairs: rows in any order, few distinct scores, so ties at every cut."""
    from fusionrank.ranking.vectors import ranked_scored

    rng = np.random.default_rng(n + k)
    for _ in range(5):
        rows = rng.permutation(10 * n + 1)[:n].astype(np.int64)
        scores = rng.integers(0, 6, n).astype(np.float32) / 4
        want = sorted(zip((-scores).tolist(), rows.tolist()))[:k]
        r, s = ranked_scored(rows, scores, k)
        assert list(zip((-s).tolist(), r.tolist())) == want
