"""Swapping models while clients search: every request succeeds and names the model that ranked it."""
from __future__ import annotations

import threading
import time

import httpx

from fusionrank.serving.app import create_app

ADMIN = "swap-admin"


def test_swap_under_concurrent_requests_has_zero_failures(service_factory, tiny_model, tiny_lgbm_model, live_server):
    svc = service_factory("swap")
    app = create_app(svc, ADMIN, "ev")
    versions = {}
    failures, done = [], []
    stop = threading.Event()
    queries = ["red shirt", "blue dress", "black watch", "nike shoes", "green jacket women", "men"]

    with live_server(app) as srv:
        def client(i):
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                n = 0
                while not stop.is_set():
                    r = c.get("/search", params={"q": queries[(i + n) % len(queries)], "k": 5})
                    n += 1
                    if r.status_code != 200 or len(r.json()["results"]) != 5:
                        failures.append((r.status_code, r.text[:200]))
                    else:
                        done.append(r.json()["model_version"])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        swaps = 0
        with httpx.Client(base_url=srv.url, timeout=60, headers={"X-API-Key": ADMIN}) as admin:
            for path in [tiny_lgbm_model[0], tiny_model[0]] * 3:
                time.sleep(0.15)
                r = admin.post("/admin/model", json={"path": str(path)})
                assert r.status_code == 200, r.text
                versions[r.json()["current"]] = path
                swaps += 1
            time.sleep(0.15)
        stop.set()
        for t in threads:
            t.join()
        metrics = httpx.get(srv.url + "/metrics").text

    assert failures == []
    assert len(done) > 50
    assert set(done) == set(versions)  # both models served requests
    assert f"fusionrank_model_swaps_total {float(swaps)}" in metrics
    assert metrics.count("fusionrank_model_info{") == 1
    assert 'status="500"' not in metrics
