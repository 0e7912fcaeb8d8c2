"""The HTTP API through the real FastAPI app: status codes and `detail` texts, writes visible to the next search."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from fusionrank.serving.app import create_app

ADMIN, EVENTS = "admin-secret", "events-secret"


@pytest.fixture(scope="module")
def svc_app(tiny_model, tiny_pipe, tmp_path_factory):
    from serving_fixtures import make_service

    svc = make_service(tiny_model[0], tmp_path_factory.mktemp("app"), ann={"codec": "sq8"})
    return svc, create_app(svc, ADMIN, EVENTS)


@pytest.fixture(scope="module")
def client(svc_app):
    with TestClient(svc_app[1], raise_server_exceptions=False) as c:
        yield c


def detail(r):
    return r.json()["detail"]


def test_search_ok(client):
    r = client.get("/search", params={"q": "red shirt", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert len(body["results"]) == 5 and body["search_id"] and body["model_version"]
    h = body["results"][0]
    assert set(h["contributions"]) == {"text", "image", "audio"} and set(h["weights"]) == {"text", "image", "audio"}
    assert "red" in h["matched_terms"]["title"] or "shirt" in h["matched_terms"]["title"]
    assert set(body["timings_ms"]) >= {"encode_ms", "retrieve_ms", "features_ms", "rank_ms", "explain_ms", "total_ms"}


@pytest.mark.parametrize("params, status, text", [
    ({}, 422, "q: required"),
    ({"q": ""}, 422, "q: String should have at least 1 character"),
    ({"q": "   "}, 422, "q: must contain a search term"),
    ({"q": "x" * 257}, 422, "q: String should have at most 256 characters"),
    ({"q": "shirt", "k": 0}, 422, "k: Input should be greater than or equal to 1 (got '0')"),
    ({"q": "shirt", "k": 101}, 422, "k: Input should be less than or equal to 100"),
    ({"q": "shirt", "k": "ten"}, 422, "k: Input should be a valid integer"),
    ({"q": "shirt", "category": "Spaceships"}, 422, "category: unknown category 'Spaceships'; valid:"),
])
def test_search_bad_input(client, params, status, text):
    r = client.get("/search", params=params)
    assert r.status_code == status
    assert text in detail(r)


def test_category_filter(client, svc_app):
    cat = svc_app[0].index.category_names[0]
    r = client.get("/search", params={"q": "shirt", "k": 50, "category": cat.lower()})
    assert r.status_code == 200 and {h["category"] for h in r.json()["results"]} == {cat}


def test_products_read(client, svc_app):
    pid = svc_app[0].index.records["product_id"][0]
    r = client.get(f"/products/{pid}")
    assert r.status_code == 200 and r.json()["product_id"] == pid
    # media as this service's URLs, never a server path
    assert "image" not in r.json() and "audio" not in r.json() and r.json()["image_url"] == f"/products/{pid}/image"
    assert client.get(f"/products/{pid}/image").headers["content-type"] == "image/jpeg"
    r = client.get("/products/does-not-exist")
    assert r.status_code == 404 and detail(r) == "no product with id 'does-not-exist'"
    no_audio = next(p for i, p in enumerate(svc_app[0].index.records["product_id"]) if not svc_app[0].index.records["audio"][i])
    r = client.get(f"/products/{no_audio}/audio")
    assert r.status_code == 404 and "has no audio file" in detail(r)
    r = client.get("/products/" + "x" * 201)
    assert r.status_code == 422 and "product_id: String should have at most 200 characters" in detail(r)


@pytest.mark.parametrize("method, path, body", [
    ("put", "/products/p1", {"title": "x"}),
    ("delete", "/products/p1", None),
    ("post", "/admin/model", {"path": "/nowhere"}),
    ("post", "/admin/snapshot", None),
])
def test_admin_endpoints_need_the_admin_key(client, method, path, body):
    kw = {"json": body} if body is not None else {}
    r = client.request(method, path, **kw)
    assert r.status_code == 401 and detail(r) == "missing API key: send it in the X-API-Key header"
    r = client.request(method, path, headers={"X-API-Key": EVENTS}, **kw)  # the browser key is not an admin key
    assert r.status_code == 403 and "admin key required" in detail(r)


def test_put_search_update_delete_cycle(client, svc_app, tiny_fashion):
    svc = svc_app[0]
    H = {"X-API-Key": ADMIN}
    photo = str(tiny_fashion.root / "images" / "1004.jpg")  # a photo of black shoes, as its title says
    body = {"title": "Zorblax Men Black Sneakers", "category": "Footwear", "brand": "Zorblax", "image": photo,
            "description": "limited edition", "fabric": "mesh"}
    assert client.get("/search", params={"q": "zorblax"}).json()["results"][0]["product_id"] != "z-1"
    r = client.put("/products/z-1", json=body, headers=H)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["product"]["product_id"] == "z-1" and out["encoded"]["modalities"] == {"text": True, "image": True, "audio": False}
    top = client.get("/search", params={"q": "zorblax", "k": 3}).json()["results"][0]  # its own word: "sneakers" also maps to shoes
    assert top["product_id"] == "z-1" and top["modalities"]["image"] and top["image_url"] == "/products/z-1/image"
    assert "zorblax" in top["matched_terms"]["title"]
    # update: new title; the old one is no longer found
    r = client.put("/products/z-1", json={**body, "title": "Quuxly Men Black Boots"}, headers=H)
    assert r.status_code == 200
    hits = client.get("/search", params={"q": "quuxly boots", "k": 3}).json()["results"]
    assert hits[0]["product_id"] == "z-1" and hits[0]["title"] == "Quuxly Men Black Boots"
    assert all("zorblax" not in h["matched_terms"]["title"] for h in client.get("/search", params={"q": "zorblax"}).json()["results"])
    # delete
    assert client.delete("/products/z-1", headers=H).status_code == 204
    assert "z-1" not in [h["product_id"] for h in client.get("/search", params={"q": "quuxly boots", "k": 50}).json()["results"]]
    r = client.delete("/products/z-1", headers=H)
    assert r.status_code == 404 and detail(r) == "no product with id 'z-1'"
    assert client.get("/products/z-1").status_code == 404
    # every change is in the change log
    ops = [json.loads(l)["op"] for l in (svc.index._log_path).read_text().splitlines()]
    assert ops[-3:] == ["upsert", "upsert", "delete"]


@pytest.mark.parametrize("body, text", [
    ({}, "title: required"),
    ({"title": ""}, "title: String should have at least 1 character"),
    ({"title": "x", "product_id": "other"}, "product_id: the body says 'other' but the path says 'p-2'"),
    # the detail names neither the path nor whether it exists (it used to say "no such file '<path>'")
    ({"title": "x", "image": "/no/such/photo.jpg"}, "image: not a readable media file in an allowed media folder"),
    ({"title": "x", "image": "https://example.com/a.jpg"}, "image: only local files can be indexed"),
    ({"title": "x", "attributes": {"a": 1}}, "attributes.a: Input should be a valid string"),
    ({"title": "x", "category": "y" * 500}, "category"),
])
def test_put_bad_product(client, body, text):
    r = client.put("/products/p-2", json=body, headers={"X-API-Key": ADMIN})
    assert r.status_code == 422, r.text
    assert text in detail(r)
    assert "/no/such" not in detail(r)


def test_put_undecodable_photo(client, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONRANK_UPLOAD_ROOTS", str(tmp_path))  # an allowed folder: the file is refused for its content
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    r = client.put("/products/p-3", json={"title": "x", "image": str(bad)}, headers={"X-API-Key": ADMIN})
    assert r.status_code == 422 and detail(r).startswith("image: cannot decode")


def test_events(client, svc_app):
    s = client.get("/search", params={"q": "blue dress", "k": 3}).json()
    pid = s["results"][0]["product_id"]
    ev = {"type": "click", "search_id": s["search_id"], "model_version": s["model_version"], "product_id": pid, "position": 1}
    batch = {"events": [ev, {**ev, "type": "impression"}, {**ev, "type": "add_to_cart"}, {**ev, "type": "purchase", "value": 19.9}]}
    assert client.post("/events", json=batch).status_code == 401
    assert client.post("/events", json=batch, headers={"X-API-Key": "wrong"}).status_code == 403
    r = client.post("/events", json=batch, headers={"X-API-Key": EVENTS})
    assert r.status_code == 200 and r.json() == {"accepted": 4}
    H = {"X-API-Key": EVENTS}
    for bad, text in [
        ({"events": []}, "events: List should have at least 1 item"),
        ({"events": [{**ev, "type": "like"}]}, "events.0.type: Input should be 'impression', 'click', 'add_to_cart' or 'purchase'"),
        ({"events": [{**ev, "search_id": "abc"}]}, "events.0.search_id: String should match pattern"),
        ({"events": [{k: v for k, v in ev.items() if k != "model_version"}]}, "events.0.model_version: required"),
        ({"events": [{**ev, "position": 0}]}, "events.0.position: Input should be greater than or equal to 1"),
        ({"events": [{**ev, "surprise": 1}]}, "events.0.surprise: Extra inputs are not permitted"),
        ({"events": [ev] * 1001}, "events: List should have at most 1000 items"),
        ({"events": [{**ev, "model_version": "v0"}]}, "was served by"),
        ({"events": [{**ev, "product_id": "elsewhere"}]}, "'elsewhere' was not in the results of search"),
    ]:
        r = client.post("/events", json=bad, headers=H)
        assert r.status_code == 422, (bad, r.text)
        assert text in detail(r), detail(r)
    r = client.post("/events", content=b"{not json", headers={**H, "Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON decode error" in detail(r)


def test_model_swap_endpoint(client, tiny_model, tiny_lgbm_model):
    H = {"X-API-Key": ADMIN}
    r = client.post("/admin/model", json={"path": "/nowhere"}, headers=H)
    assert r.status_code == 404 and "is not a model directory" in detail(r)
    r = client.post("/admin/model", json={"path": str(tiny_lgbm_model[0])}, headers=H)
    assert r.status_code == 200 and r.json()["current"].startswith("lightgbm-")
    assert client.get("/search", params={"q": "red shirt"}).json()["model_version"] == r.json()["current"]
    r = client.post("/admin/model", json={"path": str(tiny_model[0])}, headers=H)
    assert r.status_code == 200 and r.json()["current"].startswith("neural-")


def test_health_stats_metrics_openapi(client):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["products"] > 0 and h["model_version"]
    assert client.get("/stats").json()["categories"]
    client.get("/search", params={"q": "green", "k": 2})
    m = client.get("/metrics").text
    assert 'fusionrank_requests_total{endpoint="/search",method="GET",status="200"}' in m
    assert 'fusionrank_requests_total{endpoint="/search",method="GET",status="422"}' in m
    assert 'fusionrank_request_seconds_bucket{endpoint="/search",le="0.02",method="GET"}' in m
    for stage in ("encode", "retrieve", "features", "rank", "explain"):
        assert f'fusionrank_search_stage_seconds_count{{stage="{stage}"}}' in m
    assert "fusionrank_index_products" in m and "fusionrank_query_cache_hits" in m and "fusionrank_model_info{" in m
    spec = client.get("/openapi.json").json()
    assert {"/search", "/products/{product_id}", "/events", "/healthz", "/metrics"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and EVENTS in page.text and ADMIN not in page.text


def test_snapshot(client, svc_app):
    r = client.post("/admin/snapshot", headers={"X-API-Key": ADMIN})
    assert r.status_code == 200 and r.json()["products"] == len(svc_app[0].index)
