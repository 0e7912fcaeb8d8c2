"""Serving-time feature logs: the logged inputs reproduce the served scores exactly; grid cells; randomised swaps."""
from __future__ import annotations

import numpy as np
import pytest

from fusionrank.feedback.logged import rebuild_slates
from fusionrank.modalities import TABLES

QUERIES = ["red shirt", "blue dress women", "black watch", "nike men shoes", "shirt", "crimson shirts for gents"]


def _logged(svc, search_ids):
    log = svc.events.click_log()
    log = log[log["query_id"].isin(search_ids)]
    keys = {qid: d["slate_key"].iloc[0] for qid, d in log.groupby("query_id")}
    slates = svc.events.slates(list(set(keys.values())))
    return [slates[keys[s]] for s in search_ids], log


def test_logged_inputs_reproduce_the_served_scores_bit_for_bit(service_factory):
    svc = service_factory("fl")
    served = [svc.search(q, k=6, client_id="browser-1", session_id="visit-1") for q in QUERIES]
    ids = [r["search_id"] for r in served]
    assert served[-1]["understood"]["rewritten"] != QUERIES[-1]  # words the tiny model never trained on
    logged, log = _logged(svc, ids)
    for r, s in zip(served, logged):
        assert s.product_ids == [h["product_id"] for h in r["results"]]
        assert np.array_equal(s.scores, np.array([h["score"] for h in r["results"]], np.float32))
    from fusionrank.modalities import SCALAR_FEATURES

    keys = sorted({k for s in logged for k in s.vector_keys})
    sl, tables = rebuild_slates(logged, svc.events.vectors(keys), ids, QUERIES)
    for b, (r, s) in enumerate(zip(served, logged)):
        n = len(s.product_ids)
        # the inputs, bit for bit: features as served, the query vector, each product's embedding rows
        served_x = np.array([[h["features"][f] for f in SCALAR_FEATURES] for h in r["results"]], np.float32)
        assert np.array_equal(sl.x[b, :n], served_x)
        # the query vector as served: of the query as understood (words the ranker never trained on rewritten)
        assert np.array_equal(sl.q[b], svc.queries.encode(r["understood"]["rewritten"])[0])
        for t in TABLES:
            rows = [svc.index.row_of[p] for p in s.product_ids]
            assert np.array_equal(tables[t][sl.rows[b, :n]], svc.index.emb[t][rows])
        assert np.array_equal(sl.mask[b, :n], svc.index.modality_mask(np.array([rows]))[0])
    again = svc.model.ranker.predict(sl, tables)
    for b, s in enumerate(logged):
        # the same scores; float32 matrix products round differently for another batch shape (a few ulp)
        np.testing.assert_allclose(again[b, :len(s.scores)], s.scores, rtol=2e-6, atol=1e-7)
    # positions: rank, and the grid cell of the page (4 columns)
    one = log[log["query_id"] == ids[0]].sort_values("rank")
    assert one["rank"].tolist() == list(range(1, 7))
    assert list(zip(one["grid_row"], one["grid_col"])) == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2)]
    assert (one["model_version"] == svc.model.version).all()
    svc.close()


def test_a_changed_product_still_rebuilds_as_it_was_served(service_factory):
    """The vectors a search used are archived, so the log outlives a product update."""
    svc = service_factory("fl-upd")
    first = svc.search("red shirt", k=5)
    pid = first["results"][0]["product_id"]
    idx = svc.index
    row = idx.row_of[pid]
    v = {t: (idx.emb[t][row] * -1.0 if idx.emb_mask[t][row] else None) for t in TABLES}
    rec = {**idx.record(row)}
    idx.upsert(rec, {"title": idx.lex_text["title"][row], "transcript": idx.lex_text["transcript"][row]}, v)
    second = svc.search("red shirt", k=5)
    (s1, s2), _ = _logged(svc, [first["search_id"], second["search_id"]])
    assert s1.vector_keys[s1.product_ids.index(pid)] not in s2.vector_keys  # the product's vectors changed
    keys = sorted(set(s1.vector_keys) | set(s2.vector_keys))
    sl, tables = rebuild_slates([s1, s2], svc.events.vectors(keys))
    again = svc.model.ranker.predict(sl, tables)
    np.testing.assert_allclose(again[0, :len(s1.scores)], s1.scores, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(again[1, :len(s2.scores)], s2.scores, rtol=2e-6, atol=1e-7)
    old_rows = svc.events.vectors([s1.vector_keys[s1.product_ids.index(pid)]])
    assert np.array_equal(next(iter(old_rows.values()))[0], -v["title"])  # the vectors as served, before the update
    svc.close()


def test_randomised_swaps_are_logged_with_their_original_ranks(service_factory, monkeypatch):
    svc = service_factory("fl-rand")
    svc.randomise_share = 1.0
    r = svc.search("shirt", k=6)
    assert r["randomised"] is True
    (s,), log = _logged(svc, [r["search_id"]])
    assert s.product_ids == [h["product_id"] for h in r["results"]]
    j = s.logged_ranks[0] - 1  # the product the ranker put first now sits at shown position j
    assert j > 0 and s.logged_ranks[j] == 1 and sorted(s.logged_ranks) == list(range(1, 7))
    assert log["randomised"].all()
    svc.randomise_share = 0.0
    assert svc.search("shirt", k=6)["randomised"] is False
    svc.close()


def test_explored_searches_show_a_candidate_from_below_the_page_with_its_rank(service_factory):
    svc = service_factory("fl-explore")
    plain = svc.search("shirt", k=4, record=False)
    svc.explore_share, svc.explore_depth = 1.0, 12
    seen_ranks, seen_positions = set(), set()
    for _ in range(30):
        r = svc.search("shirt", k=4)
        assert r["explored"] is True and r["randomised"] is False
        (s,), log = _logged(svc, [r["search_id"]])
        assert s.product_ids == [h["product_id"] for h in r["results"]]
        assert [h["rank"] for h in r["results"]] == [1, 2, 3, 4]
        deep = [j for j, rank in enumerate(s.logged_ranks) if rank > 4]
        assert len(deep) == 1  # one shown position, the others the ranker's own at their own ranks
        j = deep[0]
        assert [rank for i, rank in enumerate(s.logged_ranks) if i != j] == [i + 1 for i in range(4) if i != j]
        assert 5 <= s.logged_ranks[j] <= 12
        assert s.product_ids[:j] == [h["product_id"] for h in plain["results"][:j]]
        assert s.product_ids[j] not in {h["product_id"] for h in plain["results"]}
        # the logged features and scores are the explored product's own, and it is explained like the others
        assert r["results"][j]["features"] and np.isclose(r["results"][j]["score"], s.scores[j])
        assert not log["randomised"].any() and int(log["logged_rank"].max()) == s.logged_ranks[j]
        seen_ranks.add(s.logged_ranks[j])
        seen_positions.add(j)
    assert len(seen_positions) >= 3 and len(seen_ranks) >= 4  # drawn, not fixed
    svc.explore_share = 0.0
    assert svc.search("shirt", k=4)["explored"] is False
    svc.close()


def test_explored_searches_can_show_several_candidates_from_below_the_page(service_factory):
    svc = service_factory("fl-explore-many")
    plain = svc.search("shirt", k=4, record=False)
    svc.explore_share, svc.explore_depth, svc.explore_count = 1.0, 12, 2
    for _ in range(20):
        r = svc.search("shirt", k=4)
        (s,), log = _logged(svc, [r["search_id"]])
        assert s.product_ids == [h["product_id"] for h in r["results"]] and len(set(s.product_ids)) == 4
        deep = [j for j, rank in enumerate(s.logged_ranks) if rank > 4]
        assert len(deep) == 2 and len({s.logged_ranks[j] for j in deep}) == 2
        assert all(5 <= s.logged_ranks[j] <= 12 for j in deep)
        assert [rank for i, rank in enumerate(s.logged_ranks) if i not in deep] == [i + 1 for i in range(4) if i not in deep]
        own = {h["product_id"] for h in plain["results"]}
        assert all(s.product_ids[j] not in own for j in deep)
        assert all(r["results"][j]["features"] and np.isclose(r["results"][j]["score"], s.scores[j]) for j in deep)
    svc.close()


def test_explore_settings_are_checked(service_factory):
    from fusionrank.errors import FusionrankError
    from fusionrank.serving.service import SearchService

    svc = service_factory("fl-explore-bad")
    with pytest.raises(FusionrankError, match="explore_share"):
        SearchService(svc.index, svc.model, explore_share=1.5)
    with pytest.raises(FusionrankError, match="explore_depth"):
        SearchService(svc.index, svc.model, explore_depth=1)
    with pytest.raises(FusionrankError, match="explore_count"):
        SearchService(svc.index, svc.model, explore_count=0)
    svc.close()


def test_feature_logging_off_keeps_products_and_scores_only(service_factory):
    svc = service_factory("fl-off")
    svc.feature_logging = False
    r = svc.search("red shirt", k=4)
    (s,), _ = _logged(svc, [r["search_id"]])
    assert s.product_ids == [h["product_id"] for h in r["results"]] and s.features.size == 0
    with pytest.raises(Exception, match="without features"):
        rebuild_slates([s], {})
    svc.close()


def test_events_carry_grid_cells_and_hashed_ids(service_factory):
    svc = service_factory("fl-ev")
    r = svc.search("red shirt", k=6, client_id="browser-7", session_id="visit-7")
    h = r["results"][5]
    assert (h["grid_row"], h["grid_col"]) == (2, 2)
    svc.record_events([{"type": "click", "search_id": r["search_id"], "model_version": r["model_version"],
                        "product_id": h["product_id"], "position": 6, "client_id": "browser-7", "session_id": "visit-7"}])
    log = svc.events.click_log()
    row = log[(log["query_id"] == r["search_id"]) & (log["product_id"] == h["product_id"])].iloc[0]
    assert row["click"] == 1 and (row["grid_row"], row["grid_col"]) == (2, 2)
    svc.close()
    raw = b"".join(p.read_bytes() for p in (svc.data_dir).glob("events.sqlite*"))
    assert b"browser-7" not in raw and b"visit-7" not in raw


def test_product_vectors_are_archived_at_start_not_on_the_search_path(service_factory):
    svc = service_factory("fl-arch")
    n = svc.events.counts()["vectors"]
    live = [r for r in range(svc.index.n_rows) if svc.index.live[r]]
    assert n == len({svc.archive.key(svc.index, r) for r in live}) > 0
    svc.search("red shirt", k=5)
    assert svc.events.counts()["vectors"] == n  # nothing new to archive
    again = type(svc)(svc.index, svc.model, data_dir=svc.data_dir, log=None)  # a restart writes nothing again
    assert again.archive.archive_catalog(svc.index, again.events, log=None) == 0
    svc.close()
