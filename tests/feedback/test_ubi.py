"""UBI export: every line validates against the vendored UBI 1.3.0 JSON Schemas and reads back to what was stored."""
from __future__ import annotations

import copy
import json
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

jsonschema = pytest.importorskip("jsonschema")

from fusionrank.feedback.schema import Event, SearchLog, ServedSlate  # noqa: E402
from fusionrank.feedback.store import open_store  # noqa: E402
from fusionrank.feedback.ubi import export_ubi  # noqa: E402

UBI = Path(__file__).parent / "data" / "ubi"
HASH_KEY = b"0123456789abcdef0123456789abcdef"


def published(name: str) -> dict:
    return json.loads((UBI / name).read_text())


def validator(name: str):
    """The schema as published, except two ``oneOf`` whose branches overlap read as ``anyOf`` (see NOTICE.md)."""
    schema = copy.deepcopy(published(name))
    for field in ("action_name", "query_id"):
        prop = schema["properties"].get(field)
        if prop and "oneOf" in prop:
            prop["anyOf"] = prop.pop("oneOf")
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    assert {"date-time", "uuid"} <= set(cls.FORMAT_CHECKER.checkers), "date-time needs rfc3339-validator (test extra)"
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_published_event_schema_rejects_its_own_action_names():
    """Why the test reads two oneOf as anyOf: strictly, "click" matches both branches. Fails once upstream fixes it."""
    schema = published("event.schema.json")
    cls = jsonschema.validators.validator_for(schema)
    v = cls(schema, format_checker=cls.FORMAT_CHECKER)
    doc = {"action_name": "click", "timestamp": "2025-01-01T00:00:00Z", "event_attributes": {"position": {"ordinal": 1}}}
    assert any("is valid under each of" in e.message for e in v.iter_errors(doc))
    assert not list(validator("event.schema.json").iter_errors(doc))


@pytest.fixture
def filled_store(store_url):
    rng = np.random.default_rng(0)
    t = 1_735_000_000.25

    def slate(ids):
        n = len(ids)
        return ServedSlate(list(ids), rng.standard_normal(n).astype(np.float32), rng.standard_normal((n, 4)).astype(np.float32),
                           np.ones((n, 2), bool), rng.standard_normal(8).astype(np.float32), [f"v{i}" for i in ids],
                           list(range(1, n + 1)))

    st = open_store(store_url, HASH_KEY)
    q_dash = str(uuid.UUID(int=7))  # a UUID with dashes: the format branch of query_id
    st.log_searches([
        SearchLog("q1", "black shoes", t, "m1", slate(["a", "b", "c", "d", "e"]), client_id="c-1", session_id="s-1",
                  category="shoes", grid_columns=4),
        SearchLog(q_dash, "red dress ünïcode", t + 5, "m2", slate(["x", "y"]), grid_columns=2, randomised=True),
    ])
    st.record_events([
        Event("impression", "q1", "a", 1, timestamp=t + 1, client_id="c-1", session_id="s-1", model_version="m1"),
        Event("click", "q1", "e", 5, timestamp=t + 2, client_id="c-1", session_id="s-1", model_version="m1"),
        Event("add_to_cart", "q1", "e", 5, timestamp=t + 3, client_id="c-1", session_id="s-1", grid_row=2, grid_col=1),
        Event("purchase", "q1", "e", 5, timestamp=t + 4, value=49.5),
        Event("click", q_dash, "y", None, timestamp=t + 6),           # position found in the slate: 2
        Event("click", "gone", "z", None, timestamp=t + 7),            # no search, no position: left out
    ])
    yield st
    st.close()


def read_ndjson(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_validates_and_reads_back(filled_store, tmp_path):
    stats: dict = {}
    paths = export_ubi(filled_store, tmp_path / "ubi", stats=stats)
    assert {p.name for p in paths.values()} == {"ubi_queries.ndjson", "ubi_events.ndjson", "ubi_queries.bulk.ndjson",
                                                "ubi_events.bulk.ndjson"}
    assert stats == {"events_without_position": 1, "queries": 2, "events": 5}
    qv, ev = validator("query.request.schema.json"), validator("event.schema.json")
    queries, events = read_ndjson(paths["queries"]), read_ndjson(paths["events"])
    for doc in queries:
        assert not [e.message for e in qv.iter_errors(doc)], doc
    for doc in events:
        assert not [e.message for e in ev.iter_errors(doc)], doc

    q1 = queries[0]
    h = filled_store.hash_id
    assert q1["query_id"] == q1["query_response_id"] == "q1" and q1["user_query"] == "black shoes"
    assert q1["query_response_hit_ids"] == ["a", "b", "c", "d", "e"] and q1["application"] == "fusionrank"
    assert q1["client_id"] == h("c-1") and q1["query_attributes"]["session_id"] == h("s-1")
    assert q1["query_attributes"]["model_version"] == "m1" and q1["query_attributes"]["category"] == "shoes"
    assert q1["timestamp"] == "2024-12-24T00:26:40.250Z"
    assert datetime.fromisoformat(q1["timestamp"]).timestamp() == 1_735_000_000.25
    assert "client_id" not in queries[1] and queries[1]["user_query"] == "red dress ünïcode"

    assert [e["action_name"] for e in events] == ["impression", "click", "add_to_cart", "purchase", "click"]
    assert [e["message_type"] for e in events] == ["IMPRESSION", "CLICK", "CONVERSION", "CONVERSION", "CLICK"]
    click = events[1]
    assert click["event_attributes"]["object"] == {"object_id": "e", "object_id_field": "product_id"}
    assert click["event_attributes"]["position"] == {"ordinal": 5, "x": 1, "y": 2}  # rank 5 in 4 columns: row 2, column 1
    assert click["session_id"] == h("s-1") and click["client_id"] == h("c-1") and click["query_id"] == "q1"
    assert events[3]["event_attributes"]["value"] == 49.5 and "value" not in click["event_attributes"]
    assert events[4]["event_attributes"]["position"] == {"ordinal": 2, "x": 2, "y": 1}  # from the slate, 2 columns

    bulk = read_ndjson(paths["events_bulk"])
    assert bulk[1::2] == events and all(a["index"]["_index"] == "ubi_events" for a in bulk[0::2])
    qbulk = read_ndjson(paths["queries_bulk"])
    assert qbulk[1::2] == queries and [a["index"]["_id"] for a in qbulk[0::2]] == [q["query_id"] for q in queries]


def test_empty_store_exports_empty_files(store_url, tmp_path):
    with open_store(store_url, HASH_KEY) as st:
        paths = export_ubi(st, tmp_path / "out", bulk=False)
    assert set(paths) == {"queries", "events"} and all(p.read_text() == "" for p in paths.values())


def test_cli_events_export_stats_purge(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fusionrank.cli import app
    from fusionrank.feedback.store import hash_key_for

    monkeypatch.delenv("FUSIONRANK_EVENTS_HASH_KEY", raising=False)
    data = tmp_path / "data"
    with open_store(data / "events.sqlite", hash_key_for(data)) as st:  # the service's layout: events.key beside the store
        sl = ServedSlate(["a", "b"], np.zeros(2, np.float32), np.zeros((2, 1), np.float32), np.ones((2, 1), bool),
                         np.zeros(3, np.float32), ["va", "vb"], [1, 2])
        st.log_search(SearchLog("q1", "shoes", time.time() - 200 * 86400, "m1", sl))
        st.record_events([Event("click", "q1", "b", 2, received=time.time() - 200 * 86400)])
    url = f"sqlite:///{data / 'events.sqlite'}"
    r = CliRunner().invoke(app, ["events", "stats", "--store", url])
    assert r.exit_code == 0 and json.loads(r.stdout)["events"] == 1, r.output
    r = CliRunner().invoke(app, ["events", "export", "--store", url, "--format", "ubi", "--out", str(tmp_path / "ubi")])
    assert r.exit_code == 0 and len(read_ndjson(tmp_path / "ubi" / "ubi_events.ndjson")) == 1, r.output
    r = CliRunner().invoke(app, ["events", "purge", "--store", url])
    assert r.exit_code == 0 and json.loads(r.stdout)["deleted"]["queries"] == 1, r.output
    r = CliRunner().invoke(app, ["events", "stats", "--store", "mysql://h/db"])
    assert r.exit_code == 2 and "use one of: sqlite:///PATH, postgresql://" in " ".join(r.output.split())
    r = CliRunner().invoke(app, ["events", "export", "--store", url, "--format", "csv", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "valid formats: ubi" in r.output
