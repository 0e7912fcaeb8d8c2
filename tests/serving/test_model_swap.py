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

        def served_more(n: int) -> None:  # progress, not time: a busy machine only makes the test slower
            target, deadline = len(done) + len(failures) + n, time.monotonic() + 120
            while len(done) + len(failures) < target and time.monotonic() < deadline:
                time.sleep(0.02)

        with httpx.Client(base_url=srv.url, timeout=60, headers={"X-API-Key": ADMIN}) as admin:
            for path in [tiny_lgbm_model[0], tiny_model[0]] * 3:
                served_more(10)
                r = admin.post("/admin/model", json={"path": str(path)})
                assert r.status_code == 200, r.text
                versions[r.json()["current"]] = path
                swaps += 1
            served_more(10)
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


def test_a_handle_can_be_installed_again(service_factory, tiny_lgbm_model):
    """Switching back to a model that served before reuses its handle as it is (understanding included)."""
    from fusionrank.serving import load_handle

    svc = service_factory("again")
    first = svc._model
    other = load_handle(tiny_lgbm_model[0])
    other.understanding = None  # a model saved without query understanding
    for _ in range(2):
        svc.install_model(other)
        assert svc.search("black shoes", k=3)["results"]
        assert svc.install_model(first) is other and svc._model is first
        assert svc.search("black shoes", k=3)["results"]
    svc.close()
