"""SearchIndex: same candidates and features as training's ProductIndex; updates; persistence."""
from __future__ import annotations

import numpy as np
import pytest

from fusionrank.errors import FusionrankError
from conftest import serving_index
from fusionrank.serving import SearchIndex

QUERIES = ["red shirt", "blue dress women", "black watch", "nike men shoes", "green"]


@pytest.fixture(scope="module")
def built(tiny_pipe):
    pipe, _ = tiny_pipe
    return pipe.index, serving_index(pipe.index)


@pytest.mark.parametrize("query", QUERIES)
def test_candidates_and_features_equal_training(built, query):
    pidx, sidx = built
    q = pidx.encode_queries([query])
    want = pidx.slates(["q"], [query], q_emb=q)
    got = sidx.retrieve(query, q[0])
    # same candidate set (IVF probes every list of a small index; flat codec: exact scores)
    w_rows = want.rows[0][want.rows[0] >= 0]
    assert sorted(got.rows.tolist()) == sorted(w_rows.tolist())
    sl, tables = sidx.slate(query, q[0], got)
    pos = {r: i for i, r in enumerate(w_rows.tolist())}
    order = [pos[r] for r in got.rows.tolist()]
    np.testing.assert_allclose(sl.x[0, :len(order)], want.x[0, order], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(sl.mask[0, :len(order)], want.mask[0, order])
    np.testing.assert_allclose(tables["title"], pidx.emb["title"][got.rows])


def test_category_filter_keeps_only_that_category(built):
    pidx, sidx = built
    cat = sidx.category_names[0]
    q = pidx.encode_queries(["shirt"])[0]
    got = sidx.retrieve("shirt", q, cat)
    assert len(got.rows) > 0
    assert {sidx.records["category"][r] for r in got.rows} == {cat}


def _vectors(sidx, row):
    return {t: (sidx.emb[t][row] if sidx.emb_mask[t][row] else None) for t in ("title", "image_proj", "transcript")}


def test_upsert_and_delete_are_visible_to_the_next_retrieval(built, tiny_pipe):
    pidx, base = built
    sidx = serving_index(pidx)
    q = pidx.encode_queries(["zorblax sneakers"])[0]
    assert len(sidx.retrieve("zorblax", q).lex["title"]) == 0
    v = _vectors(sidx, 0)
    v["title"] = q  # its title embedding is the query's: the dense side must find it too
    rec = {**sidx.record(0), "product_id": "new-1", "indexed_title": "Zorblax Sneakers", "title": "Zorblax Sneakers"}
    row = sidx.upsert(rec, {"title": "Zorblax Sneakers", "transcript": ""}, v)
    got = sidx.retrieve("zorblax sneakers", q)
    assert row in got.rows.tolist()
    assert got.lex["title"].arrays()[0].tolist() == [row]  # the only BM25 match
    assert sidx.product("new-1")["title"] == "Zorblax Sneakers"
    # update: same id, new title; the old row disappears
    row2 = sidx.upsert({**rec, "title": "Quuxly Boots", "indexed_title": "Quuxly Boots"}, {"title": "Quuxly Boots", "transcript": ""}, v)
    assert row2 != row
    got = sidx.retrieve("zorblax", q)
    assert row not in got.rows.tolist() and len(got.lex["title"]) == 0
    assert sidx.retrieve("quuxly", q).lex["title"].arrays()[0].tolist() == [row2]
    n = len(sidx)
    assert sidx.delete("new-1") and len(sidx) == n - 1
    assert row2 not in sidx.retrieve("quuxly boots", q).rows.tolist()
    assert sidx.product("new-1") is None and not sidx.delete("new-1")


def test_upsert_rejects_wrong_vector_shapes(built):
    _, sidx = built
    with pytest.raises(FusionrankError, match="expected"):
        sidx.upsert({"product_id": "x"}, {"title": "x"}, {"title": np.zeros(3, np.float32)})


def test_save_load_and_change_log_replay(built, tmp_path):
    pidx, base = built
    sidx = serving_index(pidx)
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
        a, b = sidx.retrieve(query, q), loaded.retrieve(query, q)
        assert a.rows.tolist() == b.rows.tolist()
        np.testing.assert_allclose(sidx.slate(query, q, a)[0].x, loaded.slate(query, q, b)[0].x, rtol=1e-5, atol=1e-6)
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
    sq = serving_index(pidx, "sq8")
    overlap = []
    for query in QUERIES:
        q = pidx.encode_queries([query])[0]
        a, b = set(base.retrieve(query, q).rows.tolist()), set(sq.retrieve(query, q).rows.tolist())
        overlap.append(len(a & b) / len(a))
    assert np.mean(overlap) >= 0.9


def test_category_list_follows_writes(built):
    pidx, base = built
    sidx = serving_index(pidx, "sq8")
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
    sidx = serving_index(pidx)
    for r in range(0, 30, 3):
        sidx.delete(sidx.records["product_id"][r])
    v = {t: (sidx.emb[t][40] if sidx.emb_mask[t][40] else None) for t in ("title", "image_proj", "transcript")}
    sidx.upsert({**sidx.record(40), "indexed_title": "Zorblax"}, {"title": "Zorblax", "transcript": ""}, v)  # replaces row 40
    c = sidx.compacted(log=lambda m: None)
    assert c.n_rows == len(c) == len(sidx) == 120 - 10
    for query in QUERIES + ["zorblax"]:
        q = pidx.encode_queries([query])[0]
        a, b = sidx.retrieve(query, q), c.retrieve(query, q)
        assert [sidx.records["product_id"][r] for r in a.rows] == [c.records["product_id"][r] for r in b.rows]
        np.testing.assert_allclose(sidx.slate(query, q, a)[0].x, c.slate(query, q, b)[0].x, rtol=1e-5, atol=1e-6)
