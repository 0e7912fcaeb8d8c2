"""Hostile input over HTTP: media only from allowed roots and only as decoded media, ids stored as given,
events refused for unknown searches / non-finite numbers / absurd times, rate limits, 414, /stats exposure."""
from __future__ import annotations

import json
import math
import os
import stat
import time

import pytest
from fastapi.testclient import TestClient

from fusionrank.serving.app import create_app
from fusionrank.serving.wal import read_all

ADMIN, EVENTS = "admin-h", "events-h"
A = {"X-API-Key": ADMIN}
E = {"X-API-Key": EVENTS}


@pytest.fixture(scope="module")
def svc_client(tiny_model, tmp_path_factory):
    from serving_fixtures import make_service

    svc = make_service(tiny_model[0], tmp_path_factory.mktemp("hard"))
    with TestClient(create_app(svc, ADMIN, EVENTS, events_rate=1000, events_burst=1000), raise_server_exceptions=False) as c:
        yield svc, c


def _photo(tiny_fashion):
    return tiny_fashion.root / "images" / "1000.jpg"


GENERIC = "image: not a readable media file in an allowed media folder"


@pytest.mark.parametrize("make", [
    lambda root, tmp: "/etc/passwd",
    lambda root, tmp: str(root / "images" / ".." / ".." / ".." / "etc" / "hostname"),
    lambda root, tmp: "../../../../etc/passwd",
    lambda root, tmp: str(tmp / "outside.jpg"),  # a real photo, outside every root
    lambda root, tmp: str(root / "images" / "link.jpg"),  # a symlink in a root pointing outside it
    lambda root, tmp: str(root / "images" / "no-such.jpg"),  # missing: the same answer as unreadable
    lambda root, tmp: "file:///etc/passwd",
])
def test_media_outside_the_roots_is_refused_without_naming_it(svc_client, tiny_fashion, tmp_path, make):
    svc, c = svc_client
    (tmp_path / "outside.jpg").write_bytes(_photo(tiny_fashion).read_bytes())
    link = tiny_fashion.root / "images" / "link.jpg"
    if not link.is_symlink():
        link.symlink_to(tmp_path / "outside.jpg")
    try:
        path = make(tiny_fashion.root, tmp_path)
        r = c.put("/products/m-1", json={"title": "x", "image": path}, headers=A)
        assert r.status_code == 422 and r.json()["detail"] == GENERIC, r.text
        assert c.get("/products/m-1").status_code == 404
    finally:
        link.unlink()


def test_upload_roots_and_relative_paths(svc_client, tiny_fashion, tmp_path, monkeypatch):
    svc, c = svc_client
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "p.jpg").write_bytes(_photo(tiny_fashion).read_bytes())
    assert c.put("/products/u-1", json={"title": "x", "image": str(tmp_path / "up" / "p.jpg")}, headers=A).status_code == 422
    monkeypatch.setenv("FUSIONRANK_UPLOAD_ROOTS", str(tmp_path / "up"))
    r = c.put("/products/u-1", json={"title": "Upload Shirt", "image": "p.jpg"}, headers=A)  # relative to a root
    assert r.status_code == 200, r.text
    assert r.json()["product"]["image"] == str((tmp_path / "up" / "p.jpg").resolve())
    assert c.get("/products/u-1/image").headers["content-type"] == "image/jpeg"
    # the root is withdrawn: the stored path is no longer served, with the same 404 as a missing file
    monkeypatch.delenv("FUSIONRANK_UPLOAD_ROOTS")
    r = c.get("/products/u-1/image")
    assert r.status_code == 404 and r.json()["detail"] == "product 'u-1' has no image file"


def test_served_media_is_decoded_and_re_encoded(svc_client, tiny_fashion, tmp_path, monkeypatch):
    svc, c = svc_client
    monkeypatch.setenv("FUSIONRANK_UPLOAD_ROOTS", str(tmp_path))
    secret = b"SECRET-APPENDED-BYTES"
    (tmp_path / "trail.jpg").write_bytes(_photo(tiny_fashion).read_bytes() + secret)
    assert c.put("/products/t-1", json={"title": "x", "image": str(tmp_path / "trail.jpg")}, headers=A).status_code == 200
    r = c.get("/products/t-1/image")
    assert r.status_code == 200 and secret not in r.content and r.content[:2] == b"\xff\xd8"
    assert r.headers["x-content-type-options"] == "nosniff"
    # a text file named .jpg, and a photo used as a clip: refused at PUT
    (tmp_path / "notes.jpg").write_text("id_rsa contents")
    r = c.put("/products/t-2", json={"title": "x", "image": str(tmp_path / "notes.jpg")}, headers=A)
    assert r.status_code == 422 and r.json()["detail"] == "image: cannot decode the file as an image"
    r = c.put("/products/t-2", json={"title": "x", "audio": str(tmp_path / "trail.jpg")}, headers=A)
    assert r.status_code == 422 and r.json()["detail"] == "audio: cannot decode the file as an audio clip"
    # a product whose stored path was swapped for something else afterwards: not served
    (tmp_path / "trail.jpg").write_text("now a text file")
    r = c.get("/products/t-1/image")
    assert r.status_code == 404 and r.json()["detail"] == "product 't-1' has no image file"


def test_a_stored_path_outside_the_roots_is_never_served(svc_client, tmp_path):
    """A change logged by an older version could hold any path: GET checks the roots again."""
    svc, c = svc_client
    pid = str(svc.index.records["product_id"][3])
    row = svc.index.row_of[pid]
    old = svc.index.records["image"][row]
    svc.index.records["image"][row] = "/etc/passwd"
    try:
        r = c.get(f"/products/{pid}/image")
        assert r.status_code == 404 and "passwd" not in r.text
    finally:
        svc.index.records["image"][row] = old


@pytest.mark.parametrize("pid", ["a&amp;b", "ｆｕｌｌ", "a\u00a0b", "x\u200by"])
def test_an_id_is_stored_exactly_as_given_or_refused(svc_client, pid):
    """Ids that a normaliser would change (entities, full-width, NBSP, zero-width): never stored under another id."""
    from fusionrank.ingest.clean import clean_text

    svc, c = svc_client
    r = c.put(f"/products/{pid}", json={"title": "x"}, headers=A)
    if r.status_code == 200:
        assert r.json()["product"]["product_id"] == pid and c.get(f"/products/{pid}").json()["product_id"] == pid
        other = clean_text(pid)[0]
        assert other == pid or svc.index.product(other) is None     # nothing stored under the normalised id
    else:
        assert r.status_code == 422 and r.json()["detail"].startswith("product_id:"), r.text
        assert svc.index.product(pid) is None


def test_ids_are_stored_exactly_as_given(svc_client):
    svc, c = svc_client
    for pid in ["Ab-1", "ü-é", "a b", "1.0", "007"]:
        assert c.put(f"/products/{pid}", json={"title": "Exact Id"}, headers=A).status_code == 200, pid
        assert c.get(f"/products/{pid}").json()["product_id"] == pid
        assert c.delete(f"/products/{pid}", headers=A).status_code == 204


def test_unknown_fields_are_kept_as_attributes(svc_client):
    svc, c = svc_client
    r = c.put("/products/f-1", json={"title": "Mesh Runner", "fabric": "mesh", "attributes": {"fit": "slim"},
                                     "sizes": [40, 41]}, headers=A)
    assert r.status_code == 200, r.text
    got = c.get("/products/f-1").json()["attributes"]
    assert got == {"fit": "slim", "fabric": "mesh", "sizes": "[40, 41]"}
    logged = [e for e in read_all(svc.index._log_path) if e.get("op") == "upsert"][-1]
    assert logged["attributes"] == got


@pytest.mark.parametrize("body", [b'{"title": "x", "weight": NaN}', b'{"title": "x", "attributes": {}, "dims": [1, Infinity]}'])
def test_non_finite_numbers_in_a_product_are_refused(svc_client, body):
    svc, c = svc_client
    r = c.put("/products/nan-1", content=body, headers={**A, "content-type": "application/json"})
    assert r.status_code == 422 and "NaN and Infinity" in r.json()["detail"], r.text
    assert svc.index.product("nan-1") is None


def _search(c):
    s = c.get("/search", params={"q": "blue shirt", "k": 3}).json()
    return {"type": "click", "search_id": s["search_id"], "model_version": s["model_version"],
            "product_id": s["results"][0]["product_id"], "position": 1}


@pytest.mark.parametrize("field, value, text", [
    ("timestamp", "NaN", "timestamp"), ("timestamp", "Infinity", "timestamp"), ("value", "-Infinity", "value"),
    ("value", "NaN", "value"), ("value", "1e300", "value"), ("timestamp", "1e300", "timestamp"),
    ("timestamp", "-5", "timestamp"), ("timestamp", str(time.time() + 10 * 86400), "more than a day in the future"),
])
def test_non_finite_numbers_and_absurd_times_are_refused(svc_client, field, value, text):
    svc, c = svc_client
    ev = _search(c)
    before = svc.events.counts()["events"]
    body = json.dumps({"events": [ev]})[:-3] + f', "{field}": {value}}}]}}'
    r = c.post("/events", content=body, headers={**E, "content-type": "application/json"})
    assert r.status_code == 422 and text in r.json()["detail"], r.text
    assert svc.events.counts()["events"] == before
    ok = {**ev, "timestamp": time.time(), "value": 12.5}
    assert c.post("/events", json={"events": [ok]}, headers=E).status_code == 200
    stored = list(svc.events.iter_events())
    assert len(stored) == before + 1 and all(math.isfinite(e.get("value") or 0) for e in stored)


def test_events_key_only_for_searches_this_service_issued(svc_client, tiny_model, tmp_path):
    svc, c = svc_client
    ev = _search(c)
    forged = {**ev, "search_id": "0" * 32}
    r = c.post("/events", json={"events": [forged]}, headers=E)
    assert r.status_code == 422 and "is not a search this service issued" in r.json()["detail"]
    assert c.post("/events", json={"events": [forged]}, headers=A).status_code == 200  # the admin key may backfill
    # after a restart the event store still vouches for the ids it issued
    from fusionrank.serving import SearchService

    again = SearchService(svc.index, svc.model, data_dir=svc.data_dir, log=lambda m: None)
    assert again.record_events([ev], require_known=True) == {"accepted": 1}
    with pytest.raises(ValueError):
        again.record_events([forged], require_known=True)


def test_events_key_is_rate_limited_per_client(tiny_model, tmp_path):
    from serving_fixtures import make_service

    svc = make_service(tiny_model[0], tmp_path)
    with TestClient(create_app(svc, ADMIN, EVENTS, events_rate=0.5, events_burst=3), raise_server_exceptions=False) as c:
        ev = _search(c)
        codes = [c.post("/events", json={"events": [ev]}, headers=E).status_code for _ in range(6)]
        assert codes[:3] == [200, 200, 200] and set(codes[3:]) == {429}
        r = c.post("/events", json={"events": [ev]}, headers=E)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert c.post("/events", json={"events": [ev]}, headers=A).status_code == 200  # the admin key is not limited


def test_stats_hides_the_model_path_without_the_admin_key(svc_client):
    svc, c = svc_client
    public = c.get("/stats").json()
    assert "model_path" not in public and svc.model.path not in json.dumps(public)
    assert "changes.jsonl" in public["logs"] and public["logs"]["repaired_total"] == 0
    assert c.get("/stats", headers=A).json()["model_path"] == svc.model.path
    assert "model_path" not in c.get("/stats", headers=E).json()


def test_long_url_gets_414(svc_client):
    svc, c = svc_client
    r = c.get("/search", params={"q": "x" * 9000})
    assert r.status_code == 414 and "URL too long" in r.json()["detail"]
    assert c.get("/products/" + "y" * 9000).status_code == 414


def test_data_logs_are_private(svc_client):
    svc, c = svc_client
    _search(c)
    assert stat.S_IMODE(os.stat(svc.data_dir).st_mode) == 0o700
    for name in ("events.sqlite", "events.key"):
        assert stat.S_IMODE(os.stat(svc.data_dir / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(svc.index._log_path).st_mode) == 0o600
