"""`fusionrank serve --engine ray --replicas 2`: the service as a Ray Serve application, real HTTP through Ray's proxy.

Which replica answers is Ray Serve's choice; every response names it (``X-Fusionrank-Worker``), and
the test keeps asking until every replica has answered.
"""
from __future__ import annotations

import shutil
import socket

import httpx
import pytest

ADMIN, EVENTS = "ray-admin", "ray-events"
REPLICAS = 2

pytestmark = pytest.mark.ray


@pytest.fixture
def served(tiny_model, tmp_path, fusionrank_home):
    """The tiny model (a private copy) served by 2 Ray Serve replicas on a local Ray runtime."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.serve")
    if ray.is_initialized():  # pragma: no cover - someone else's runtime
        pytest.skip("a Ray runtime is already running in this process")
    from fusionrank.serving.rayserve import start, stop

    model = tmp_path / "model"
    shutil.copytree(tiny_model[0], model, ignore=shutil.ignore_patterns("service-data"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = start(model, REPLICAS, port=port, admin_key=ADMIN, events_key=EVENTS, log=lambda m: None)
    try:
        yield run["url"], model
    finally:
        stop(run["started_ray"])


def each_replica(url: str, ask, times: int = 2, limit: int = 400) -> dict[str, list]:
    """Call ``ask(client)`` until every replica answered ``times`` times; answers by replica."""
    seen: dict[str, list] = {}
    for _ in range(limit):
        with httpx.Client(base_url=url, timeout=60) as c:
            r = ask(c)
        seen.setdefault(r.headers["x-fusionrank-worker"], []).append(r)
        if len(seen) == REPLICAS and all(len(v) >= times for v in seen.values()):
            return seen
    raise AssertionError(f"only replicas {sorted(seen)} answered {limit} requests")


def test_an_acknowledged_write_is_seen_by_every_replica(served):
    url, _ = served
    admin = {"X-API-Key": ADMIN}
    base = httpx.get(url + "search", params={"q": "red shirt", "k": 1}, timeout=60).json()["results"][0]
    body = {"title": "Zorblax Quasar Sneakers", "category": base["category"], "brand": "Zorblax"}
    r = httpx.put(url + "products/zx-1", json=body, headers=admin, timeout=120)
    assert r.status_code == 200, r.text
    # the next search of every replica finds it
    for w, rs in each_replica(url, lambda c: c.get("/search", params={"q": "zorblax quasar", "k": 5})).items():
        for s in rs:
            assert s.status_code == 200 and s.json()["results"][0]["product_id"] == "zx-1", (w, s.text[:300])
    assert httpx.delete(url + "products/zx-1", headers=admin, timeout=120).status_code == 204
    for rs in each_replica(url, lambda c: c.get("/products/zx-1"), times=1).values():
        assert rs[0].status_code == 404
    stats = each_replica(url, lambda c: c.get("/stats"), times=1)
    assert len({rs[0].json()["products"] for rs in stats.values()}) == 1
    assert all(rs[0].json()["searches_at_once"] == 1 for rs in stats.values())  # one of two replicas


def test_a_model_swap_reaches_every_replica(served, tiny_lgbm_model):
    url, _ = served
    before = {rs[0].json()["model_version"] for rs in each_replica(url, lambda c: c.get("/healthz"), times=1).values()}
    r = httpx.post(url + "admin/model", json={"path": str(tiny_lgbm_model[0])}, headers={"X-API-Key": ADMIN}, timeout=300)
    assert r.status_code == 200, r.text
    assert {r.json()["previous"]} == before
    after = {rs[0].json()["model_version"] for rs in each_replica(url, lambda c: c.get("/healthz"), times=1).values()}
    assert after == {r.json()["current"]} != before
