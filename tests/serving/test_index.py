"""SearchIndex: the frozen catalogue tables plus writes; same candidates and features; updates; persistence."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from serving_fixtures import serving_index
from fusionrank.errors import FusionrankError
from fusionrank.modalities import ATTRIBUTE_TABLES
from fusionrank.ranking import Featuriser, HybridRetriever, Queries, QueryEncoder
from fusionrank.serving import SearchIndex

QUERIES = ["red shirt", "blue dress women", "black watch", "nike men shoes", "green"]
ENCODER = QueryEncoder()


def retrieve(idx, query: str, q: np.ndarray, category: str | None = None):
    """One query's candidates through the retriever: ``rows`` and BM25 ``lex`` per field."""
    c = HybridRetriever(idx).transform(Queries(["q"], [query], np.asarray(q)[None, :], category))
    return SimpleNamespace(rows=c.rows[0], lex=c.lex[0], cands=c)


def features(idx, got):
    return Featuriser(idx).transform(got.cands)


@pytest.fixture(scope="module")
def built(tiny_model, tiny_pipe):
    pipe, _ = tiny_pipe
    return SimpleNamespace(encode_queries=ENCODER.encode_many, tables=pipe.catalog, model=tiny_model[0]), \
        serving_index(tiny_model[0])


@pytest.mark.parametrize("query", QUERIES)
def test_flat_ivf_index_gives_the_frozen_tables_candidates_and_features(built, query):
    """One retriever and feature builder over both implementations of the catalogue storage."""
    pidx, sidx = built
    q = pidx.encode_queries([query])[0]
    want, got = retrieve(pidx.tables, query, q), retrieve(sidx, query, q)
    # same candidates (IVF probes every list of a small index; flat codec: exact scores)
    assert got.rows.tolist() == want.rows.tolist()
    a, b = features(pidx.tables, want), features(sidx, got)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(pidx.tables.emb["title"][want.rows], sidx.emb["title"][got.rows])


def test_category_filter_keeps_only_that_category(built):
    pidx, sidx = built
    cat = sidx.category_names[0]
    q = pidx.encode_queries(["shirt"])[0]
    got = retrieve(sidx, "shirt", q, cat)
    assert len(got.rows) > 0
    assert {sidx.records["category"][r] for r in got.rows} == {cat}


def _vectors(sidx, row):
    return {t: (sidx.emb[t][row] if sidx.emb_mask[t][row] else None) for t in ("title", "image_proj", "transcript")}


def test_upsert_and_delete_are_visible_to_the_next_retrieval(built, tiny_pipe):
    pidx, base = built
    sidx = serving_index(pidx.model)
    q = pidx.encode_queries(["zorblax sneakers"])[0]
    assert len(retrieve(sidx, "zorblax", q).lex["title"]) == 0
    v = _vectors(sidx, 0)
    v["title"] = q  # its title embedding is the query's: the dense side must find it too
    rec = {**sidx.record(0), "product_id": "new-1", "indexed_title": "Zorblax Sneakers", "title": "Zorblax Sneakers"}
    row = sidx.upsert(rec, {"title": "Zorblax Sneakers", "transcript": ""}, v)
    got = retrieve(sidx, "zorblax sneakers", q)
    assert row in got.rows.tolist()
    assert got.lex["title"].arrays()[0].tolist() == [row]  # the only BM25 match
    assert sidx.product("new-1")["title"] == "Zorblax Sneakers"
    # update: same id, new title; the old row disappears
    row2 = sidx.upsert({**rec, "title": "Quuxly Boots", "indexed_title": "Quuxly Boots"}, {"title": "Quuxly Boots", "transcript": ""}, v)
    assert row2 != row
    got = retrieve(sidx, "zorblax", q)
    assert row not in got.rows.tolist() and len(got.lex["title"]) == 0
    assert retrieve(sidx, "quuxly", q).lex["title"].arrays()[0].tolist() == [row2]
    n = len(sidx)
    assert sidx.delete("new-1") and len(sidx) == n - 1
    assert row2 not in retrieve(sidx, "quuxly boots", q).rows.tolist()
    assert sidx.product("new-1") is None and not sidx.delete("new-1")


def test_upsert_rejects_wrong_vector_shapes(built):
    _, sidx = built
    with pytest.raises(FusionrankError, match="expected"):
        sidx.upsert({"product_id": "x"}, {"title": "x"}, {"title": np.zeros(3, np.float32)})


def test_save_load_and_change_log_replay(built, tmp_path):
    pidx, base = built
    sidx = serving_index(pidx.model)
    sidx.save(tmp_path / "idx")
    # changes after the snapshot go to the change log
    v = _vectors(sidx, 3)
    sidx.upsert({**sidx.record(3), "product_id": "logged", "indexed_title": "Logged Zorblax"},
                {"title": "Logged Zorblax", "transcript": ""}, v)
    gone = sidx.records["product_id"][5]
    sidx.delete(gone)
    loaded = SearchIndex.load(tmp_path / "idx", log=lambda m: None)
    assert len(loaded) == len(sidx)
    assert loaded.product("logged")["indexed_title"] == "Logged Zorblax"
    assert loaded.product(gone) is None
    for query in QUERIES + ["zorblax"]:
        q = pidx.encode_queries([query])[0]
        a, b = retrieve(sidx, query, q), retrieve(loaded, query, q)
        assert a.rows.tolist() == b.rows.tolist()
        np.testing.assert_allclose(features(sidx, a).x, features(loaded, b).x, rtol=1e-5, atol=1e-6)
    # a new snapshot folds the log in and empties it
    loaded.save(tmp_path / "idx")
    assert (tmp_path / "idx" / "changes.jsonl").read_text() == ""
    again = SearchIndex.load(tmp_path / "idx", log=lambda m: None)
    assert again.product("logged") is not None and again.product(gone) is None


def test_load_rejects_a_folder_that_is_not_an_index(tmp_path):
    with pytest.raises(FusionrankError, match="not a search index"):
        SearchIndex.load(tmp_path)


def test_sq8_ann_finds_nearly_the_exact_candidates(built, tiny_pipe):
    pidx, base = built
    sq = serving_index(pidx.model, "sq8")
    overlap = []
    for query in QUERIES:
        q = pidx.encode_queries([query])[0]
        a, b = set(retrieve(base, query, q).rows.tolist()), set(retrieve(sq, query, q).rows.tolist())
        overlap.append(len(a & b) / len(a))
    assert np.mean(overlap) >= 0.9


def test_category_list_follows_writes(built):
    pidx, base = built
    sidx = serving_index(pidx.model, "sq8")
    cats = sidx.category_names
    victim = cats[-1]
    ids = [sidx.records["product_id"][r] for r in range(sidx.n_rows) if sidx.records["category"][r] == victim]
    for pid in ids[:-1]:
        sidx.delete(pid)
    assert victim in sidx.category_names
    sidx.delete(ids[-1])
    assert victim not in sidx.category_names and not sidx.has_category(victim.lower())
    v = {t: (sidx.emb[t][0] if sidx.emb_mask[t][0] else None) for t in ("title", "image_proj", "transcript")}
    sidx.upsert({"product_id": "c-1", "category": "Garden Tools", "indexed_title": "rake"}, {"title": "rake", "transcript": ""}, v)
    assert "Garden Tools" in sidx.category_names and sidx.has_category("garden tools")


def test_compacted_index_drops_dead_rows_and_keeps_results(built, tmp_path):
    pidx, base = built
    sidx = serving_index(pidx.model)
    for r in range(0, 30, 3):
        sidx.delete(sidx.records["product_id"][r])
    v = {t: (sidx.emb[t][40] if sidx.emb_mask[t][40] else None) for t in ("title", "image_proj", "transcript")}
    sidx.upsert({**sidx.record(40), "indexed_title": "Zorblax"}, {"title": "Zorblax", "transcript": ""}, v)  # replaces row 40
    c = sidx.compacted(log=lambda m: None)
    assert c.n_rows == len(c) == len(sidx) == 120 - 10
    for query in QUERIES + ["zorblax"]:
        q = pidx.encode_queries([query])[0]
        a, b = retrieve(sidx, query, q), retrieve(c, query, q)
        assert [sidx.records["product_id"][r] for r in a.rows] == [c.records["product_id"][r] for r in b.rows]
        np.testing.assert_allclose(features(sidx, a).x, features(c, b).x, rtol=1e-5, atol=1e-6)


def _ranked(idx, query):
    q = ENCODER.encode_many([query])[0]
    got = retrieve(idx, query, q)
    return got.rows.tolist(), features(idx, got).x


def test_float16_tables_are_saved_memory_mapped_and_loaded_back(built, tmp_path):
    """``table_dtype = "float16"``: recorded in index.json, loaded as a float16 memory map, same search after load."""
    import json

    from fusionrank.modeldir import ModelDir

    sidx = ModelDir.open(built[0].model).catalog_tables(codec="flat", log=lambda m: None, updatable=True, table_dtype="float16")
    stored_as = {t: (np.uint8 if t in ATTRIBUTE_TABLES else np.float16) for t in sidx.emb}  # colour evidence: bytes
    assert all(e.base.dtype == stored_as[t] for t, e in sidx.emb.items())
    sidx.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["format"] == 2 and meta["config"]["table_dtype"] == "float16"
    loaded = SearchIndex.load(tmp_path / "idx", log=lambda m: None)
    for t, e in loaded.emb.items():
        assert isinstance(e.base, np.memmap) and e.base.dtype == stored_as[t] and len(e.base) == int(sidx.emb_mask[t].sum())
        np.testing.assert_array_equal(e[np.arange(sidx.n_rows)], sidx.emb[t][np.arange(sidx.n_rows)])
    for query in QUERIES:
        a, b = _ranked(sidx, query), _ranked(loaded, query)
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1])
    # a write after loading lands in the table's private tail; the change log replays it as float16 too
    v = _vectors(loaded, 3)
    loaded.upsert({**loaded.record(3), "product_id": "f16-new"}, {"title": "Zorblax", "transcript": ""}, v)
    loaded.close()
    again = SearchIndex.load(tmp_path / "idx", log=lambda m: None)
    row = again.row_of["f16-new"]
    assert again.emb["title"].n_tail == 1
    np.testing.assert_array_equal(again.emb["title"][row], sidx.emb["title"][3])


def test_a_format_1_index_with_dense_float32_tables_still_loads(built, tmp_path):
    """Indexes written before float16 tables (every row stored, float32) load as they are, with the same search."""
    import json

    sidx = built[1]
    sidx.save(tmp_path / "idx")
    d = tmp_path / "idx"
    meta = json.loads((d / "index.json").read_text())
    meta["format"] = 1
    meta["config"].pop("table_dtype")
    (d / "index.json").write_text(json.dumps(meta))
    n = sidx.n_rows
    for t in sidx.emb:
        np.save(d / f"emb.{t}.npy", sidx.emb[t][np.arange(n)])  # every row, zeros where a product has no vector
    old = SearchIndex.load(d, log=lambda m: None)
    for query in QUERIES:
        a, b = _ranked(sidx, query), _ranked(old, query)
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1])
    meta["config"]["table_dtype"] = "float16"  # an index.json that disagrees with its files
    (d / "index.json").write_text(json.dumps(meta))
    with pytest.raises(FusionrankError, match=r"emb\.title\.npy: vectors are float32, but table_dtype is 'float16'"):
        SearchIndex.load(d, log=lambda m: None)


def test_an_index_saved_without_a_table_this_version_ranks_with_names_it_and_the_rebuild(built, tmp_path):
    """An index saved before a table existed (the colour table came later) is refused, not served with that table empty."""
    import json

    built[1].save(tmp_path / "idx")
    d = tmp_path / "idx"
    meta = json.loads((d / "index.json").read_text())
    del meta["dims"]["colour"]
    (d / "index.json").write_text(json.dumps(meta))
    with pytest.raises(FusionrankError, match=r"without the 'colour' table.*fusionrank index MODEL_DIR"):
        SearchIndex.load(d, log=lambda m: None)


def test_shared_indexes_apply_each_others_logged_writes_in_one_order(built, tmp_path):
    """Two worker processes' views of one snapshot: a write through either is applied by the other before its next read."""
    sidx = built[1]
    sidx.save(tmp_path / "idx")
    a = SearchIndex.load(tmp_path / "idx", log=lambda m: None, shared=True)
    b = SearchIndex.load(tmp_path / "idx", log=lambda m: None, shared=True)
    assert a.shared and all(isinstance(e.base, np.memmap) for e in a.emb.values())
    v = _vectors(a, 5)
    v["title"] = ENCODER.encode_many(["zorblax sneakers"])[0]
    a.upsert({**a.record(5), "product_id": "w-1", "indexed_title": "Zorblax Sneakers"}, {"title": "Zorblax Sneakers", "transcript": ""}, v)
    b.upsert({**b.record(6), "product_id": "w-2", "indexed_title": "Quasar Boots"}, {"title": "Quasar Boots", "transcript": ""},
             _vectors(b, 6))  # b applies a's write first, then appends its own
    assert b.row_of["w-1"] < b.row_of["w-2"]
    assert a.catch_up() == 1 and a.row_of == b.row_of and a.version == b.version
    assert b.delete(sidx.ids[0]) and a.catch_up() == 1 and sidx.ids[0] not in a.row_of
    for query in ["zorblax sneakers", "quasar boots", QUERIES[0]]:
        ra, rb = _ranked(a, query), _ranked(b, query)
        assert ra[0] == rb[0]
        np.testing.assert_array_equal(ra[1], rb[1])
    assert a.row_of["w-1"] in _ranked(a, "zorblax sneakers")[0]
    # a worker that died in the middle of an append left a torn line: the next write starts a line of its own
    with open(tmp_path / "idx" / "changes.jsonl", "ab") as f:
        f.write(b'{"_crc":"0badc0de","op":"upsert","rec')
    assert a.catch_up() == 0
    b.upsert({**b.record(7), "product_id": "w-3"}, {"title": "Nebula Hat", "transcript": ""}, _vectors(b, 7))
    assert a.catch_up() == 1 and a.row_of == b.row_of
    assert list((tmp_path / "idx").glob("changes.jsonl.torn-*"))
    # a fresh process replays the same log to the same rows; a shared index writes no snapshot
    c = SearchIndex.load(tmp_path / "idx", log=lambda m: None)
    assert c.row_of == a.row_of
    # the shared views hold the records in the memory-mapped Arrow file (no Python string per row), with the same values
    from fusionrank.ranking.tables import TextColumn

    assert all(isinstance(col, TextColumn) for col in [*a.records.values(), *a.lex_text.values()])
    for col in a.records:
        assert list(a.records[col][:a.n_rows]) == list(c.records[col][:c.n_rows])
        assert a.records[col][np.arange(a.n_rows)].tolist() == list(c.records[col][:c.n_rows])
    assert [a.record(r) for r in range(0, a.n_rows, 7)] == [c.record(r) for r in range(0, c.n_rows, 7)]
    with pytest.raises(FusionrankError, match="shared by worker processes does not write snapshots"):
        a.save(tmp_path / "idx")
