"""The dependencies read each app's own ``app.state``: two apps in one process keep their services, keys and
metrics apart, and only the ranking inside ``GET /search`` waits for the app's search gate."""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from fusionrank.serving.app import create_app
from fusionrank.serving.http.app import searches_at_once


def test_two_apps_keep_their_own_service_keys_and_metrics(service_factory):
    svc_a, svc_b = service_factory("a"), service_factory("b")
    pid = svc_a.index.records["product_id"][0]
    with TestClient(create_app(svc_a, "admin-a", "events-a")) as a, TestClient(create_app(svc_b, "admin-b", "events-b")) as b:
        assert a.delete(f"/products/{pid}", headers={"X-API-Key": "admin-b"}).status_code == 403
        assert a.post("/events", json={"events": []}, headers={"X-API-Key": "events-b"}).status_code == 403
        assert a.delete(f"/products/{pid}", headers={"X-API-Key": "admin-a"}).status_code == 204
        assert a.get(f"/products/{pid}").status_code == 404 and b.get(f"/products/{pid}").status_code == 200
        assert a.get("/healthz").json()["products"] == b.get("/healthz").json()["products"] - 1
        page_a, page_b = a.get("/").text, b.get("/").text
        assert "events-a" in page_a and "events-b" in page_b and "events-a" not in page_b
        metrics_b = b.get("/metrics").text
    assert 'endpoint="/products/{product_id}",method="DELETE"' not in metrics_b


def test_only_ranking_waits_for_the_search_gate_and_a_waiting_search_holds_no_thread(service_factory, live_server):
    svc = service_factory("gate")
    app = create_app(svc, "admin", "ev", max_concurrent_searches=1)
    ranking, go, ranked = threading.Event(), threading.Event(), []
    search = svc.search

    def held(*a, **kw):  # the first search ranks until told to go on
        ranked.append(a[0])
        if len(ranked) == 1:
            ranking.set()
            assert go.wait(30)
        return search(*a, **kw)

    svc.search = held
    statuses = []

    def client(q):
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            statuses.append(c.get("/search", params={"q": q, "k": 3}).status_code)

    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        first = threading.Thread(target=client, args=("red shirt",))
        first.start()
        assert ranking.wait(30)
        before = set(threading.enumerate())
        waiting = [threading.Thread(target=client, args=(f"blue shirt {i}",)) for i in range(4)]
        try:
            for t in waiting:
                t.start()
            time.sleep(0.5)
            assert ranked == ["red shirt"] and statuses == []  # the others wait for the gate
            # they wait in the event loop: the server started no thread for them (only this test's 4 clients)
            assert set(threading.enumerate()) - before == set(waiting)
            assert c.get("/healthz").status_code == 200
            assert c.get("/search", params={"q": "   "}).status_code == 422  # rejected before the gate
        finally:
            go.set()
        for t in (first, *waiting):
            t.join(30)
    assert statuses == [200] * 5 and sorted(ranked[1:]) == [f"blue shirt {i}" for i in range(4)]


def test_one_process_ranks_two_searches_at_once_and_one_of_several_ranks_one_unless_told(service_factory, monkeypatch):
    monkeypatch.delenv("FUSIONRANK_SEARCH_CONCURRENCY", raising=False)
    assert (searches_at_once(), searches_at_once(1), searches_at_once(2), searches_at_once(4)) == (2, 2, 1, 1)
    svc = service_factory("gate-size")
    with TestClient(create_app(svc, "admin", "ev")) as c:
        assert c.get("/stats").json()["searches_at_once"] == 2
    with TestClient(create_app(svc, "admin", "ev", max_concurrent_searches=searches_at_once(3))) as c:
        assert c.get("/stats").json()["searches_at_once"] == 1
    monkeypatch.setenv("FUSIONRANK_SEARCH_CONCURRENCY", "3")  # serve --search-concurrency 3
    assert (searches_at_once(1), searches_at_once(4)) == (3, 3)
    assert create_app(svc, "admin", "ev").state.search_gate.total_tokens == 3  # the gate lets three searches rank
    monkeypatch.setenv("FUSIONRANK_SEARCH_CONCURRENCY", "0")
    with pytest.raises(ValidationError, match="search_concurrency"):
        searches_at_once(2)
