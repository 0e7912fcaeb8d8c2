"""The metrics of one app: requests labelled by route template (or ``unmatched``), gauges read from the
service at scrape time, accepted events counted by type."""
from __future__ import annotations

import re

from fastapi.testclient import TestClient

from fusionrank.serving.app import create_app


def sample(text: str, series: str) -> float:
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert m, f"{series} not in /metrics"
    return float(m.group(1))


def test_requests_gauges_and_events(service_factory, tiny_fashion):
    svc = service_factory("metrics")
    with TestClient(create_app(svc, "admin", "ev")) as c:
        c.get("/no/such/path")
        c.get("/products/no-such-product")
        before = sample(c.get("/metrics").text, "fusionrank_index_products")
        body = {"title": "Zorblax Men Purple Sneakers", "image": str(tiny_fashion.root / "images" / "1000.jpg")}
        assert c.put("/products/z-1", json=body, headers={"X-API-Key": "admin"}).status_code == 200
        s = c.get("/search", params={"q": "zorblax", "k": 2}).json()
        ev = {"type": "click", "search_id": s["search_id"], "model_version": s["model_version"],
              "product_id": s["results"][0]["product_id"], "position": 1}
        assert c.post("/events", json={"events": [ev, {**ev, "type": "impression"}, ev]},
                      headers={"X-API-Key": "ev"}).status_code == 200
        text = c.get("/metrics").text
    assert sample(text, 'fusionrank_requests_total{endpoint="unmatched",method="GET",status="404"}') == 1
    assert sample(text, 'fusionrank_requests_total{endpoint="/products/{product_id}",method="GET",status="404"}') == 1
    assert "no-such-product" not in text and "/no/such/path" not in text
    assert sample(text, "fusionrank_index_products") == before + 1 == len(svc.index)
    assert sample(text, 'fusionrank_search_stage_seconds_count{stage="rank"}') == 1
    assert sample(text, 'fusionrank_events_total{type="click"}') == 2
    assert sample(text, 'fusionrank_events_total{type="impression"}') == 1
