"""EmbeddingTable: float32 lookups of stored vectors (float32 or float16), only rows that have a vector stored."""
from __future__ import annotations

import numpy as np
import pytest

from fusionrank.errors import FusionrankError
from fusionrank.ranking import CatalogConfig, RankingPipeline, VectorConfig
from fusionrank.ranking.tables import EmbeddingTable, table_dtype


def unit(rng, n, d=8):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_lookup_is_the_stored_value_in_float32_and_zero_without_a_vector(dtype):
    rng = np.random.default_rng(0)
    emb, present = unit(rng, 10), np.array([1, 0, 1, 1, 0, 0, 1, 1, 1, 0], bool)
    t = EmbeddingTable.from_rows(emb, present, dtype)
    assert t.shape == (10, 8) and t.base.dtype == np.dtype(dtype) and len(t.base) == present.sum()
    want = np.where(present[:, None], emb.astype(dtype).astype(np.float32), 0)
    rows = np.array([[0, 1, 2], [9, 8, 3]])
    got = t[rows]
    assert got.dtype == np.float32 and got.shape == (2, 3, 8)
    np.testing.assert_array_equal(got, want[rows])
    np.testing.assert_array_equal(t[:10], want)
    np.testing.assert_array_equal(t[4], np.zeros(8, np.float32))
    # new rows go to the tail; the base (a snapshot's memory map when loaded) is never written
    base = t.base
    t.reserve(12)
    t.set(10, emb[1])
    t.set(11, None)
    assert t.base is base and t.n_tail == 1
    np.testing.assert_array_equal(t[10], emb[1].astype(dtype).astype(np.float32))
    assert not t[11].any()
    rows_, stored = t.stored(12)
    assert rows_.tolist() == np.flatnonzero(np.r_[present, True, False]).tolist() and stored.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(stored.astype(np.float32), t[rows_])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_inner_products_equal_the_lookups_and_do_not_depend_on_the_batch(dtype):
    rng = np.random.default_rng(1)
    emb, present = unit(rng, 300, 64), rng.random(300) < 0.7
    t = EmbeddingTable.from_rows(emb, present, dtype)
    q = unit(rng, 37, 64)
    s = t.inner(q, 300, chunk=50)  # several chunks of float16 rows, several query blocks
    np.testing.assert_allclose(s, q @ t[:300].T, rtol=1e-5, atol=1e-6)
    assert not s[:, ~present].any()
    one = np.concatenate([t.inner(q[i:i + 1], 300, chunk=50) for i in range(len(q))])
    np.testing.assert_array_equal(s, one)


def test_a_unit8_table_holds_probabilities_in_a_byte_each_within_half_a_step():
    """The colour evidence of compact indexes: 0 and 1 exact, any probability within 1/510, read as float32."""
    from fusionrank.ranking.tables import UNIT8

    rng = np.random.default_rng(2)
    p = rng.random((50, 61)).astype(np.float32)
    p[:, 0], p[:, 1] = 0.0, 1.0
    present = rng.random(50) < 0.8
    t = EmbeddingTable.from_rows(p, present, UNIT8)
    assert t.base.dtype == np.uint8 and t.nbytes == t.slot.nbytes + int(present.sum()) * 61
    got = t[np.arange(50)]
    assert got.dtype == np.float32 and not got[~present].any()
    assert np.abs(got[present] - p[present]).max() <= 1 / 510 + 1e-7
    assert (got[present][:, 0] == 0).all() and (got[present][:, 1] == 1).all()
    t.reserve(51)
    t.set(50, p[3])
    np.testing.assert_array_equal(t[50], got[3] if present[3] else t[50])
    assert np.abs(t[50] - p[3]).max() <= 1 / 510 + 1e-7
    q = rng.random((3, 61)).astype(np.float32)
    np.testing.assert_allclose(t.inner(q, 51), q @ t[np.arange(51)].T, rtol=1e-5, atol=1e-5)
    # a table saved as floats (an index of before) is read into bytes
    back = EmbeddingTable.from_stored(p[present].astype(np.float16), present, UNIT8, "emb.colour.npy")
    assert back.base.dtype == np.uint8 and np.abs(back[np.arange(50)] - got).max() <= 1 / 255 + 1e-6
    with pytest.raises(FusionrankError, match=r"unit8 table holds values in \[0, 1\]; got one of 1.5"):
        EmbeddingTable.from_rows(np.full((2, 3), 1.5, np.float32), np.ones(2, bool), UNIT8)


def test_bad_tables_are_errors_that_say_what_is_wrong():
    with pytest.raises(FusionrankError, match="unknown table_dtype 'float64'; valid: float32, float16"):
        table_dtype("float64")
    with pytest.raises(FusionrankError, match="beyond float16's range"):
        EmbeddingTable.from_rows(np.full((2, 4), 1e6, np.float32), np.ones(2, bool), "float16")
    with pytest.raises(FusionrankError, match=r"emb.title.npy: holds 3 vectors but its mask marks 2 rows"):
        EmbeddingTable.from_stored(np.zeros((3, 4), np.float16), np.array([1, 1, 0], bool), "float16", "emb.title.npy")
    with pytest.raises(FusionrankError, match=r"emb.title.npy: vectors are float32, but table_dtype is 'float16'"):
        EmbeddingTable.from_stored(np.zeros((2, 4), np.float32), np.array([1, 1, 0], bool), "float16", "emb.title.npy")
    with pytest.raises(ValueError, match="table_dtype"):
        CatalogConfig(table_dtype="int8")


def test_float16_tables_feed_the_one_feature_step_with_the_rounded_vectors(tables, encoder):
    """float16 tables give exactly the features and ranker inputs of float32 tables holding the rounded vectors."""
    from fusionrank.modalities import TABLES
    from fusionrank.ranking import CatalogTables

    n = tables.n_rows
    flat = tables.config.model_copy(update={"ann": VectorConfig(codec="flat")})

    def build(emb, dtype):
        return CatalogTables.build({c: tables.records[c] for c in tables.records}, {f: tables.lex_text[f] for f in tables.lex_text},
                                   emb, tables.emb_mask, flat.model_copy(update={"table_dtype": dtype}), log=lambda m: None)

    dense = {t: tables.emb[t][:n] for t in TABLES}
    t32, t16 = build(dense, "float32"), build(dense, "float16")
    rounded = build({t: e.astype(np.float16).astype(np.float32) for t, e in dense.items()}, "float32")
    assert t16.memory_bytes()["embeddings"] < 0.55 * t32.memory_bytes()["embeddings"]
    queries = ["red shirt", "blue dress women", "black watch", "nike men shoes", "green"]
    ids = ["a", "b", "c", "d", "e"]
    a = RankingPipeline.over(t16, None, encoder).slates(ids, queries)
    b = RankingPipeline.over(rounded, None, encoder).slates(ids, queries)
    c = RankingPipeline.over(t32, None, encoder).slates(ids, queries)
    # the IVF codes come from the float32 vectors given to build: the same candidates
    np.testing.assert_array_equal(a.rows, c.rows)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.x, b.x)
    for t in TABLES:
        np.testing.assert_array_equal(t16.tables()[t][a.rows], rounded.tables()[t][a.rows])
    np.testing.assert_allclose(a.x, c.x, atol=2e-3)
