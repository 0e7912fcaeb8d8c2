"""The routers together publish exactly the API's operations, with stable operation ids and the key header
on exactly the guarded ones (clients generate code from ``/openapi.json``)."""
from __future__ import annotations

from fastapi.testclient import TestClient

from fusionrank.serving.app import create_app

OPERATIONS = {
    ("get", "/search"): "search_search_get",
    ("get", "/products/{product_id}"): "get_product_products__product_id__get",
    ("put", "/products/{product_id}"): "put_product_products__product_id__put",
    ("delete", "/products/{product_id}"): "delete_product_products__product_id__delete",
    ("get", "/products/{product_id}/image"): "product_image_products__product_id__image_get",
    ("get", "/products/{product_id}/audio"): "product_audio_products__product_id__audio_get",
    ("post", "/events"): "post_events_events_post",
    ("post", "/admin/model"): "swap_model_admin_model_post",
    ("post", "/admin/snapshot"): "snapshot_admin_snapshot_post",
    ("get", "/healthz"): "healthz_healthz_get",
    ("get", "/stats"): "stats_stats_get",
    ("get", "/metrics"): "metrics_metrics_get",
}
GUARDED = {("put", "/products/{product_id}"): "admin key", ("delete", "/products/{product_id}"): "admin key",
           ("post", "/events"): "events key or admin key",
           ("post", "/admin/model"): "admin key", ("post", "/admin/snapshot"): "admin key",
           ("get", "/stats"): "optional admin key: adds server paths"}


def test_openapi_operations_ids_and_key_headers(service_factory):
    with TestClient(create_app(service_factory("openapi"), "admin", "ev")) as c:
        spec = c.get("/openapi.json").json()
        assert c.get("/").status_code == 200  # the page is served but not an API operation
    ops = {(m, p): op for p, item in spec["paths"].items() for m, op in item.items()}
    assert {k: op["operationId"] for k, op in ops.items()} == OPERATIONS
    assert list(spec["paths"]) == ["/search", "/products/{product_id}", "/products/{product_id}/image",
                                   "/products/{product_id}/audio", "/events", "/admin/model", "/admin/snapshot",
                                   "/healthz", "/stats", "/metrics"]
    keys = {k: prm["description"] for k, op in ops.items() for prm in op.get("parameters", [])
            if prm["in"] == "header" and prm["name"] == "x-api-key"}
    assert keys == GUARDED
    assert [p["name"] for p in ops["get", "/search"]["parameters"]] == ["q", "k", "category", "explain", "client_id", "session_id"]
    assert spec["info"]["title"] == "fusionrank search" and "X-API-Key" in spec["info"]["description"]
