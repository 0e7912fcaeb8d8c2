"""Export the event store as UBI 1.3 (User Behavior Insights) NDJSON, the files OpenSearch's UBI tools read.

:func:`export_ubi` writes, into ``out_dir``:

``ubi_queries.ndjson``       one query document per line (UBI ``query.request.schema.json``):
                             ``query_id``, ``user_query``, ``client_id`` (the stored keyed hash),
                             ``query_response_id`` (= ``query_id``: one response per search),
                             ``query_response_hit_ids`` (product ids in shown order),
                             ``timestamp`` (ISO-8601 UTC, ``Z``), ``application`` ``"fusionrank"``,
                             ``object_id_field`` ``"product_id"`` and ``query_attributes``
                             ``{model_version, category, session_id, k, index_version, randomised}``.
``ubi_events.ndjson``        one event per line (UBI ``event.schema.json``): ``action_name``,
                             ``query_id``, ``session_id``, ``client_id``, ``timestamp``,
                             ``application``, ``message_type`` (``IMPRESSION``, ``CLICK`` or
                             ``CONVERSION``) and ``event_attributes`` ``{object: {object_id,
                             object_id_field: "product_id"}, position: {ordinal, x, y}}`` where
                             ``x`` is the grid column and ``y`` the grid row (1-based); a purchase
                             with an order value adds ``event_attributes.value``.
``*.bulk.ndjson``            the same documents as OpenSearch ``_bulk`` bodies: each preceded by
                             ``{"index": {"_index": "ubi_queries"|"ubi_events", ...}}``
                             (``curl -H 'Content-Type: application/x-ndjson' --data-binary @FILE
                             http://HOST:9200/_bulk``).

Ids that were never given (no client or session) are left out rather than written as null,
which the schemas do not allow. UBI requires an event's position: an event stored without
one takes its product's shown rank in its search; an event whose search is gone (or did not
show the product) is left out and counted (``stats["events_without_position"]``). Files are written to a temporary name and renamed, mode 0600.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .schema import grid_cell

__all__ = ["export_ubi", "iso_utc", "MESSAGE_TYPES", "APPLICATION"]

APPLICATION = "fusionrank"
OBJECT_ID_FIELD = "product_id"
MESSAGE_TYPES = {"impression": "IMPRESSION", "click": "CLICK", "add_to_cart": "CONVERSION", "purchase": "CONVERSION"}


def iso_utc(ts: float) -> str:
    """``ts`` (seconds since the epoch) as ISO-8601 UTC with milliseconds and a trailing ``Z``."""
    return datetime.fromtimestamp(float(ts), tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def query_document(q: dict[str, Any]) -> dict[str, Any]:
    """The UBI query document of one row of :meth:`EventStore.iter_queries`."""
    attrs = _drop_none({"model_version": q["model_version"], "category": q["category"], "session_id": q["session_id"],
                        "k": q["k"], "index_version": q["index_version"], "randomised": q["randomised"],
                        "interleaved_with": q.get("interleaved_with"), "teams": q.get("teams")})
    return _drop_none({"application": APPLICATION, "query_id": q["query_id"], "client_id": q["client_id"],
                       "user_query": q["user_query"], "timestamp": iso_utc(q["timestamp"]),
                       "query_response_id": q["query_id"], "query_response_hit_ids": list(q["product_ids"]),
                       "object_id_field": OBJECT_ID_FIELD, "query_attributes": attrs})


def event_document(e: dict[str, Any]) -> dict[str, Any]:
    """The UBI event document of one row of :meth:`EventStore.iter_events`."""
    position: dict[str, Any] = {}
    if e["position"] is not None:
        position["ordinal"] = int(e["position"])
        row, col = e["grid_row"], e["grid_col"]
        if (row is None or col is None) and e.get("grid_columns"):
            r, c = grid_cell(int(e["position"]), int(e["grid_columns"]))
            row, col = (int(r) if row is None else row), (int(c) if col is None else col)
        if row is not None and col is not None:
            position["x"], position["y"] = int(col), int(row)
    attrs: dict[str, Any] = {"object": {"object_id": e["object_id"], "object_id_field": OBJECT_ID_FIELD},
                             "position": position}
    if e["action_name"] == "purchase" and e["value"] is not None:
        attrs["value"] = float(e["value"])
    if e.get("model_version"):
        attrs["model_version"] = e["model_version"]
    return _drop_none({"application": APPLICATION, "action_name": e["action_name"], "query_id": e["query_id"],
                       "session_id": e["session_id"], "client_id": e["client_id"], "timestamp": iso_utc(e["timestamp"]),
                       "message_type": MESSAGE_TYPES.get(e["action_name"], "OTHER"), "event_attributes": attrs})


class _Writer:
    """One NDJSON file written under a temporary name, fsync-ed and renamed into place on success (the folder fsync-ed)."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.f = os.fdopen(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8")
        self.lines = 0

    def write(self, doc: dict[str, Any]) -> None:
        self.f.write(json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False))
        self.f.write("\n")
        self.lines += 1

    def finish(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        from ..serving.wal import fsync_dir

        fsync_dir(self.path.parent)  # the rename too survives a crash

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def _export(docs: Iterable[tuple[dict, dict] | None], plain: Path, bulk: Path | None) -> int:
    writers = [_Writer(plain)] + ([_Writer(bulk)] if bulk else [])
    try:
        for item in docs:
            if item is None:
                continue
            action, doc = item
            writers[0].write(doc)
            if bulk:
                writers[1].write(action)
                writers[1].write(doc)
    except BaseException:
        for w in writers:
            w.abort()
        raise
    for w in writers:
        w.finish()
    return writers[0].lines


def export_ubi(store, out_dir: str | Path, bulk: bool = True, stats: dict[str, int] | None = None) -> dict[str, Path]:
    """Write the store's searches and events as UBI NDJSON into ``out_dir``; returns ``{name: path}``.

    Names: ``queries``, ``events`` and, with ``bulk``, ``queries_bulk``, ``events_bulk``. A
    ``stats`` dict, if given, receives the counts ``queries``, ``events`` and
    ``events_without_position`` (left out: UBI requires a position).
    """
    counts = stats if stats is not None else {}
    counts["events_without_position"] = 0

    def events():
        for e in store.iter_events():
            if e["position"] is None:
                counts["events_without_position"] += 1
                yield None
                continue
            yield {"index": {"_index": "ubi_events", "_id": f"fusionrank-{e['id']}"}}, event_document(e)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"queries": out / "ubi_queries.ndjson", "events": out / "ubi_events.ndjson"}
    if bulk:
        paths.update(queries_bulk=out / "ubi_queries.bulk.ndjson", events_bulk=out / "ubi_events.bulk.ndjson")
    counts["queries"] = _export((({"index": {"_index": "ubi_queries", "_id": q["query_id"]}}, query_document(q))
                                 for q in store.iter_queries()), paths["queries"], paths.get("queries_bulk"))
    counts["events"] = _export(events(), paths["events"], paths.get("events_bulk"))
    return paths
