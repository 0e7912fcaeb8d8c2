"""SearchService: the served ranking equals the training-time pipeline; events; model swap checks."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fusionrank.errors import FusionrankError
from fusionrank.serving.service import STAGES, ModelMismatch, UnknownCategory

QUERIES = ["red shirt", "blue dress women", "black watch", "nike men shoes"]


@pytest.fixture(scope="module")
def svc(tiny_model, tiny_pipe, tmp_path_factory):
    from serving_fixtures import make_service

    return make_service(tiny_model[0], tmp_path_factory.mktemp("svc"))


@pytest.mark.parametrize("query", QUERIES + ["RED Shirt!!", "  nike, men's SHOES "])
def test_served_ranking_equals_the_evaluation_pipeline(svc, tiny_pipe, query):
    """The service (flat IVF index) and evaluation (frozen tables, exact search) run the same stages."""
    pipe, _ = tiny_pipe
    want = pipe.search(query, k=8).hits
    got = svc.search(query, k=8)["results"]
    assert [h["product_id"] for h in got] == [h["product_id"] for h in want]
    for g, w in zip(got, want):  # the service adds where the page shows each result
        assert {k: v for k, v in g.items() if k not in ("grid_row", "grid_col")} == w


def test_response_carries_timings_ids_and_version(svc):
    r = svc.search("red shirt", k=3)
    assert set(r["timings_ms"]) == {f"{s}_ms" for s in STAGES} | {"total_ms", "log_ms"}
    assert r["timings_ms"]["total_ms"] >= max(v for k, v in r["timings_ms"].items() if k not in ("total_ms", "log_ms"))
    assert len(r["search_id"]) == 32 and r["model_version"] == svc.model.version
    assert len(r["results"]) == 3 and [h["rank"] for h in r["results"]] == [1, 2, 3]
    again = svc.search("  RED shirt ", k=3)
    assert again["query_cached"] is True
    assert [h["product_id"] for h in again["results"]] == [h["product_id"] for h in r["results"]]
    sid, version, shown = svc.events.recent_searches(1)[-1]
    assert sid == again["search_id"] and version == svc.model.version
    assert list(shown) == [h["product_id"] for h in again["results"]]


def test_category_filter_and_unknown_category(svc):
    cat = svc.index.category_names[0]
    r = svc.search("shirt", k=50, category=cat.upper())
    assert r["results"] and {h["category"] for h in r["results"]} == {cat}
    with pytest.raises(UnknownCategory, match="unknown category 'no such category'; valid: "):
        svc.search("shirt", category="no such category")


def test_empty_query(svc):
    with pytest.raises(FusionrankError, match="empty query"):
        svc.search("   ")


def test_events_are_checked_against_their_search(svc):
    r = svc.search("red shirt", k=3)
    pid = r["results"][0]["product_id"]
    ok = {"type": "click", "search_id": r["search_id"], "model_version": r["model_version"], "product_id": pid, "position": 1}
    assert svc.record_events([ok]) == {"accepted": 1}
    with pytest.raises(ValueError, match="was served by"):
        svc.record_events([{**ok, "model_version": "other"}])
    shown = [h["product_id"] for h in r["results"]]
    for other in ("nope", pid[:-1], pid + "x", "\n".join(shown[:2]), ""):  # only a whole id that was shown
        with pytest.raises(ValueError, match="was not in the results"):
            svc.record_events([{**ok, "product_id": other}])
    unknown = {**ok, "search_id": "f" * 32}  # e.g. from before a restart: kept
    assert svc.record_events([unknown])["accepted"] == 1
    lines = list(svc.events.iter_events())
    assert [e["query_id"] for e in lines[-2:]] == [r["search_id"], "f" * 32]
    assert all(e["received"] for e in lines)


def test_swap_checks_the_model_fits_the_index(svc, tiny_model, tiny_lgbm_model, tmp_path):
    old, new = svc.swap_model(tiny_lgbm_model[0])
    assert svc.model.version == new.version != old.version
    assert svc.search("red shirt", k=3)["model_version"] == new.version
    svc.swap_model(tiny_model[0])
    # a model trained for another title field does not fit this index
    import shutil

    bad = tmp_path / "sparse-model"
    shutil.copytree(tiny_model[0], bad, ignore=shutil.ignore_patterns("index"))
    cfg = json.loads((bad / "config.json").read_text())
    cfg["data"]["title_field"] = "title_sparse"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelMismatch, match="title_sparse"):
        svc.swap_model(bad)
    assert svc.model.path == str(tiny_model[0].resolve())


def test_writes_during_concurrent_searches(service_factory):
    """Searches running while products are added, replaced and removed: no errors, no removed product served."""
    import threading

    svc = service_factory("writes", ann={"codec": "sq8"})
    idx = svc.index
    errors, served = [], []
    stop = threading.Event()
    removed: set[str] = set()

    def searcher(i):
        qs = ["red shirt", "blue dress women", "black watch", "green", "zorblax"]
        n = 0
        while not stop.is_set():
            try:
                r = svc.search(qs[(i + n) % len(qs)], k=10, record=False)  # the index under writes, not the event log
                served.append({h["product_id"] for h in r["results"]})
            except Exception as e:  # pragma: no cover - the assertion below reports it
                errors.append(repr(e))
            n += 1

    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    base = [idx.records["product_id"][r] for r in range(10)]
    for j in range(60):
        src = j % 10
        v = {t: (idx.emb[t][src].copy() if idx.emb_mask[t][src] else None) for t in ("title", "image_proj", "transcript")}
        rec = {**idx.record(src), "product_id": f"w-{j % 7}", "indexed_title": f"Zorblax {j}"}
        idx.upsert(rec, {"title": f"Zorblax {j}", "transcript": ""}, v)
        if j % 3 == 0:
            idx.delete(base[j % 10])
            removed.add(base[j % 10])
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert len(served) > 20
    after = svc.search("zorblax", k=50)["results"]
    assert {h["product_id"] for h in after} & removed == set()
    terms = idx.lexical["title"].query_terms("zorblax")
    bm25_rows = idx.lexical["title"].score(terms).arrays()[0]
    assert sorted(idx.records["product_id"][r] for r in bm25_rows) == [f"w-{i}" for i in range(7)]  # latest versions only
    assert len(idx) == 120 - len(removed) + 7


@pytest.mark.parametrize("worker", [False, True], ids=["one process", "worker"])
def test_a_service_keeps_few_searches_and_checks_events_on_the_others_in_the_store(tiny_model, tmp_path, worker,
                                                                                  monkeypatch):
    """A serving process (alone, or one of several workers) holds a small map of recent searches (RECENT_SEARCHES):
    an event naming a search it no longer holds is checked against the event store, which keeps every search."""
    import shutil

    from fusionrank.serving.build import open_service
    from fusionrank.serving.service import RECENT_SEARCHES
    from fusionrank.serving.workers import start_worker_service

    model = tmp_path / "model"
    shutil.copytree(tiny_model[0], model, ignore=shutil.ignore_patterns("service-data"))
    svc = open_service(model, shared=worker, query_threads=1, log=lambda m: None)
    try:
        assert svc.recent_searches == RECENT_SEARCHES
        svc.recent_searches = 2
        if worker:
            start_worker_service(svc, {"index": str(model / "index"), "registry": None}, 0, "spawn", lambda m: None)
        served = [svc.search(q, k=3) for q in QUERIES[:3]]
        first = served[0]
        assert first["search_id"] not in svc._recent and len(svc._recent) == 2  # only the last two are in memory
        click = {"type": "click", "search_id": first["search_id"], "model_version": first["model_version"],
                 "product_id": first["results"][0]["product_id"], "position": 1}
        assert svc.record_events([click], require_known=True) == {"accepted": 1}
        with pytest.raises(ValueError, match="was not in the results"):  # checked against what the store says it showed
            svc.record_events([{**click, "product_id": "nope"}], require_known=True)
        with pytest.raises(ValueError, match="was served by"):
            svc.record_events([{**click, "model_version": "another"}], require_known=True)
        with pytest.raises(ValueError, match="not a search this service issued"):
            svc.record_events([{**click, "search_id": "never-served"}], require_known=True)
        assert len(svc._recent) == 2  # a lookup does not grow the map

        # restarted (a forked worker: the supervisor did the store's upkeep): nothing is read back, the store answers
        store_class = type(svc.events)
        svc.close_events()
        svc._recent.clear()
        purges = []
        monkeypatch.setattr(store_class, "purge", lambda self, now=None: purges.append(now) or {})
        svc.open_events(upkeep=not worker, log=lambda m: None)
        assert not svc._recent and len(purges) == (0 if worker else 1)
        assert svc.record_events([click], require_known=True) == {"accepted": 1}
    finally:
        svc.close()
