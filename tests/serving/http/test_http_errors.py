"""Validation errors become one readable ``detail`` sentence: the field's dotted name, the message, the
rejected input when it is short and scalar, at most five clauses."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from fusionrank.serving.app import create_app
from fusionrank.serving.http.errors import readable


@pytest.mark.parametrize("err, text", [
    ({"type": "missing", "loc": ("query", "q"), "msg": "Field required"}, "q: required"),
    ({"type": "int_parsing", "loc": ("query", "k"), "msg": "Input should be a valid integer", "input": "ten"},
     "k: Input should be a valid integer (got 'ten')"),
    ({"type": "string_too_long", "loc": ("query", "q"), "msg": "String should have at most 256 characters",
      "input": "x" * 257}, "q: String should have at most 256 characters"),
    ({"type": "literal_error", "loc": ("body", "events", 0, "type"), "msg": "Input should be 'click'", "input": "like"},
     "events.0.type: Input should be 'click' (got 'like')"),
    ({"type": "model_attributes_type", "loc": ("body",), "msg": "Input should be a valid dictionary", "input": [1]},
     "request: Input should be a valid dictionary"),
])
def test_readable(err, text):
    assert readable(err) == text


def test_at_most_five_clauses(service_factory):
    body = {"title": 1, "description": 2, "brand": 3, "color": 4, "category": 5, "image": 6, "audio": 7}
    with TestClient(create_app(service_factory("errors"), "admin", "ev")) as c:
        r = c.put("/products/p", json=body, headers={"X-API-Key": "admin"})
    assert r.status_code == 422
    assert r.json()["detail"].split("; ") == [f"{f}: Input should be a valid string (got {v})"
                                             for f, v in list(body.items())[:5]]
