"""The durable event store: searches served, the slates shown, shopper events, embedding rows.

One class, :class:`EventStore`, with its SQL written once; a tiny :class:`Dialect` covers
what differs between the two engines (placeholder, auto-increment key, binary type):

- **SQLite** (the embedded default: a file path or ``sqlite:///PATH``), in WAL mode with
  ``synchronous=FULL``, so a commit is on disk when the call returns. One connection per
  thread; writes are serialised by a lock (SQLite has one writer anyway) and start with
  ``BEGIN IMMEDIATE``. WAL checkpoints run in a background thread of the store, not in
  the committing request. The file (and its ``-wal``/``-shm`` companions, which SQLite
  creates with the database file's mode) is 0600, a folder created for it 0700.
- **PostgreSQL** (``postgresql://...``, psycopg 3): a small pool of connections; the
  server's default ``synchronous_commit=on`` makes a commit durable on return.

**Searches are committed without waiting for the disk** (:meth:`EventStore.log_searches`: SQLite
``synchronous=NORMAL`` for that transaction, PostgreSQL ``SET LOCAL synchronous_commit = off``), so
the search path pays no fsync. A logged search survives its process being killed at any point
(the operating system, or the PostgreSQL server, holds the committed bytes). After a power cut or
an operating-system crash, only the last searches that no acknowledged event names can be
missing: both engines' write-ahead logs are sequential, so the durable commit of an event flushes
every search committed before it, including the one the event names. Events and everything else
are durable on return.

Tables (see :mod:`fusionrank.feedback.schema` for what each record means): ``meta``
(schema version, a check value of the hash key), ``queries``, ``slates`` (content-keyed,
arrays as raw little-endian float32/bool bytes plus their shapes), ``events``
(auto-increment ``id``) and ``vectors``. Raw client and session ids are never stored:
:meth:`EventStore.hash_id` turns them into keyed HMAC-SHA256 hashes first.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import re
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .schema import ACTIONS, DEFAULT_GRID_COLUMNS, Event, SearchLog, ServedSlate, slate_key

__all__ = ["EventStore", "open_store", "hash_key_for", "events_url_for", "open_service_store", "SCHEMA_VERSION",
           "URL_SCHEMES", "StoreError", "parse_url"]

SCHEMA_VERSION = 2
#: Columns added to an existing table after version 1, by schema version: nullable, so a store of an older
#: version is upgraded in place when it is opened (both engines). Version 2: interleaved searches
#: (``interleaved_with`` = the candidate model version, ``teams`` = JSON list, one team per shown product).
ADDED_COLUMNS: dict[int, tuple[tuple[str, str, str], ...]] = {
    2: (("queries", "interleaved_with", "TEXT"), ("queries", "teams", "TEXT")),
}
URL_SCHEMES = ("sqlite:///PATH", "postgresql://USER@HOST:PORT/DB", "a file path (SQLite)")
FILE_MODE, DIR_MODE = 0o600, 0o700
KEY_FILE = "events.key"
_DAY = 86400.0


class StoreError(ValueError):
    """A store that cannot be opened as asked (bad URL, schema from a newer version, another hash key)."""


@dataclass(frozen=True)
class Dialect:
    """What differs between the engines; every statement is written with ``?`` placeholders."""

    name: str
    placeholder: str
    id_column: str
    blob: str
    add_column: str  # ALTER TABLE statement adding a column (PostgreSQL skips one that exists, under concurrency too)

    def sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)


SQLITE = Dialect("sqlite", "?", "INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB", "ALTER TABLE {table} ADD COLUMN {column} {type}")
POSTGRES = Dialect("postgresql", "%s", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "BYTEA",
                   "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {type}")

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queries (
    query_id TEXT PRIMARY KEY, user_query TEXT NOT NULL, client_id TEXT, session_id TEXT,
    timestamp DOUBLE PRECISION NOT NULL, model_version TEXT NOT NULL, index_version INTEGER NOT NULL,
    k INTEGER NOT NULL, category TEXT, grid_columns INTEGER NOT NULL, randomised INTEGER NOT NULL,
    total_ms DOUBLE PRECISION, slate_key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS slates (
    slate_key TEXT PRIMARY KEY, n INTEGER NOT NULL, product_ids TEXT NOT NULL, scores {blob} NOT NULL,
    features {blob} NOT NULL, n_features INTEGER NOT NULL, mask {blob} NOT NULL, n_modalities INTEGER NOT NULL,
    query_vector {blob} NOT NULL, dim INTEGER NOT NULL, vector_keys TEXT NOT NULL, logged_ranks TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id {id_column}, action_name TEXT NOT NULL, query_id TEXT NOT NULL, object_id TEXT NOT NULL,
    position INTEGER, grid_row INTEGER, grid_col INTEGER, timestamp DOUBLE PRECISION NOT NULL,
    received DOUBLE PRECISION NOT NULL, client_id TEXT, session_id TEXT, model_version TEXT,
    value DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS vectors (
    vector_key TEXT PRIMARY KEY, dims TEXT NOT NULL, data {blob} NOT NULL, created DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS events_query_id ON events (query_id);
CREATE INDEX IF NOT EXISTS events_received ON events (received);
CREATE INDEX IF NOT EXISTS queries_timestamp ON queries (timestamp);
"""

_QUERY_COLUMNS = ("query_id", "user_query", "client_id", "session_id", "timestamp", "model_version", "index_version",
                  "k", "category", "grid_columns", "randomised", "total_ms", "slate_key", "interleaved_with", "teams")
_SLATE_COLUMNS = ("slate_key", "n", "product_ids", "scores", "features", "n_features", "mask", "n_modalities",
                  "query_vector", "dim", "vector_keys", "logged_ranks")
_EVENT_COLUMNS = ("action_name", "query_id", "object_id", "position", "grid_row", "grid_col", "timestamp", "received",
                  "client_id", "session_id", "model_version", "value")
_INSERT_QUERY = (f"INSERT INTO queries ({', '.join(_QUERY_COLUMNS)}) VALUES ({', '.join('?' * len(_QUERY_COLUMNS))}) "
                 "ON CONFLICT DO NOTHING")
_INSERT_SLATE = (f"INSERT INTO slates ({', '.join(_SLATE_COLUMNS)}) VALUES ({', '.join('?' * len(_SLATE_COLUMNS))}) "
                 "ON CONFLICT DO NOTHING")
_INSERT_VECTOR = "INSERT INTO vectors (vector_key, dims, data, created) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
_INSERT_EVENT = f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(_EVENT_COLUMNS))})"
#: click_log's integer count columns, one per action aggregated from ``events``.
_CHUNK = 50_000  # rows fetched at a time by the log readers

COUNT_ACTIONS = ("click", "add_to_cart", "purchase")


# --------------------------------------------------------------------------- encoding
def _f32(a: Any) -> bytes:
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def _slate_row(key: str, s: ServedSlate) -> tuple:
    n = len(s.product_ids)
    feats = np.asarray(s.features, dtype=np.float32)
    mask = np.asarray(s.mask, dtype=np.bool_)
    qv = np.asarray(s.query_vector, dtype=np.float32).reshape(-1)
    scores = np.asarray(s.scores, dtype=np.float32).reshape(-1)
    if scores.shape[0] != n or len(s.vector_keys) != n or len(s.logged_ranks) != n:
        raise ValueError(f"slate of {n} products has {scores.shape[0]} scores, {len(s.vector_keys)} vector keys and "
                         f"{len(s.logged_ranks)} logged ranks; each must have one per product")
    if feats.ndim != 2 or feats.shape[0] != n or mask.ndim != 2 or mask.shape[0] != n:
        raise ValueError(f"slate of {n} products has features {feats.shape} and mask {mask.shape}; want [n, F] and [n, K]")
    nf, nk = feats.shape[1], mask.shape[1]
    return (key, n, json.dumps(list(map(str, s.product_ids))), _f32(scores), _f32(feats), nf,
            np.ascontiguousarray(mask).tobytes(), nk, _f32(qv), int(qv.shape[0]),
            json.dumps(list(map(str, s.vector_keys))), json.dumps([int(r) for r in s.logged_ranks]))


def _slate_of(row: Sequence) -> ServedSlate:
    _key, n, pids, scores, feats, nf, mask, nk, qv, dim, vkeys, ranks = row
    return ServedSlate(
        product_ids=json.loads(pids),
        scores=np.frombuffer(bytes(scores), dtype="<f4").astype(np.float32).reshape(n),
        features=np.frombuffer(bytes(feats), dtype="<f4").astype(np.float32).reshape(n, nf),
        mask=np.frombuffer(bytes(mask), dtype=np.bool_).copy().reshape(n, nk),
        query_vector=np.frombuffer(bytes(qv), dtype="<f4").astype(np.float32).reshape(dim),
        vector_keys=json.loads(vkeys), logged_ranks=json.loads(ranks))


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


# --------------------------------------------------------------------------- the store
class EventStore:
    """Searches, slates, events and vectors in one SQL database (use :func:`open_store`).

    Thread-safe: every public method may be called from any thread. Each write method is
    one transaction and returns once it is committed (durable; searches: see :meth:`log_searches`).
    """

    dialect: Dialect
    #: commit searches waiting for the disk as well (off: see the module's docstring for what that risks)
    durable_searches: bool = False

    def __init__(self, hash_key: bytes, retention_days: float | None = None):
        if not isinstance(hash_key, (bytes, bytearray)) or len(hash_key) < 16:
            raise StoreError("the event store's hash key must be at least 16 bytes")
        self._key = bytes(hash_key)
        self.retention_days = retention_days or None
        self._closed = False

    # engine-specific -------------------------------------------------------
    @contextmanager
    def _tx(self, write: bool = True, durable: bool = True) -> Iterator[Any]:
        """A DB-API cursor inside one transaction. ``durable=False`` (searches only): the commit does not wait for the
        disk (see the module's docstring for what that risks and what it does not)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "EventStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # helpers ----------------------------------------------------------------
    def _x(self, cur, statement: str, params: Sequence = ()) -> Any:
        cur.execute(self.dialect.sql(statement), tuple(params))
        return cur

    def _xm(self, cur, statement: str, rows: list[tuple]) -> None:
        if rows:
            cur.executemany(self.dialect.sql(statement), rows)

    def _init_schema(self) -> None:
        with self._tx() as cur:
            for stmt in _DDL.format(blob=self.dialect.blob, id_column=self.dialect.id_column).split(";"):
                if stmt.strip():
                    self._x(cur, stmt)
            self._add_columns(cur)
            check = hmac.new(self._key, b"fusionrank-events-key-check", hashlib.sha256).hexdigest()[:16]
            self._x(cur, "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING", ("schema_version", str(SCHEMA_VERSION)))
            self._x(cur, "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING", ("hash_key_check", check))
            meta = dict(self._x(cur, "SELECT key, value FROM meta").fetchall())
            if int(meta["schema_version"]) < SCHEMA_VERSION:  # the columns were added above
                self._x(cur, "UPDATE meta SET value = ? WHERE key = ?", (str(SCHEMA_VERSION), "schema_version"))
        if int(meta["schema_version"]) > SCHEMA_VERSION:
            raise StoreError(f"the event store has schema version {meta['schema_version']}; this fusionrank reads "
                             f"version {SCHEMA_VERSION} and older (upgrade fusionrank)")
        if meta["hash_key_check"] != check:
            raise StoreError("the event store was written with another hash key (FUSIONRANK_EVENTS_HASH_KEY or "
                             "events.key); with this one its client and session hashes would not match")

    def _add_columns(self, cur) -> None:
        """Add the columns of :data:`ADDED_COLUMNS` a table lacks (inside the schema transaction: SQLite's write lock
        serialises two openers; PostgreSQL's ``IF NOT EXISTS`` makes the second a no-op)."""
        have: dict[str, set[str]] = {}
        for version in sorted(ADDED_COLUMNS):
            for table, column, typ in ADDED_COLUMNS[version]:
                if table not in have:
                    have[table] = {d[0] for d in self._x(cur, f"SELECT * FROM {table} WHERE 1 = 0").description}
                if column not in have[table]:
                    self._x(cur, self.dialect.add_column.format(table=table, column=column, type=typ))
                    have[table].add(column)

    # hashing ---------------------------------------------------------------
    def hash_id(self, raw: str | None) -> str | None:
        """Keyed HMAC-SHA256 of a client or session id (32 hex digits); ``None`` stays ``None``."""
        if raw is None:
            return None
        return hmac.new(self._key, str(raw).encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    # searches ----------------------------------------------------------------
    def _search_rows(self, logs: Iterable[SearchLog]) -> tuple[list[tuple], list[tuple]]:
        qrows, srows, seen = [], [], set()
        for s in logs:
            key = slate_key(s.slate, s.model_version)
            if key not in seen:
                seen.add(key)
                srows.append(_slate_row(key, s.slate))
            qrows.append((str(s.query_id), str(s.user_query), self.hash_id(s.client_id), self.hash_id(s.session_id),
                          float(s.timestamp), str(s.model_version), int(s.index_version), int(s.k), s.category,
                          int(s.grid_columns or DEFAULT_GRID_COLUMNS), int(bool(s.randomised)), _opt_float(s.total_ms), key,
                          s.interleaved_with, None if s.teams is None else json.dumps(list(s.teams))))
        return qrows, srows

    def log_search(self, s: SearchLog) -> None:
        """Store one search (its ``queries`` row and, if new, its slate) in one transaction (see :meth:`log_searches`)."""
        self.log_searches([s])

    def log_searches(self, logs: Sequence[SearchLog]) -> None:
        """Store many searches in one transaction (``executemany``); a query id already stored is left as it was.

        The product vectors a search carries (``SearchLog.vectors``: first served with it) go in the same transaction.
        Committed without waiting for the disk: it survives a killed process; after a power cut, it survives if an
        event committed after it did (see the module's docstring).
        """
        qrows, srows = self._search_rows(logs)
        if not qrows:
            return
        vrows = [self._vector_row(k, rows) for s in logs for k, rows in (s.vectors or {}).items()]
        with self._tx(durable=self.durable_searches) as cur:
            if vrows:
                self._xm(cur, _INSERT_VECTOR, vrows)
            self._xm(cur, _INSERT_SLATE, srows)
            self._xm(cur, _INSERT_QUERY, qrows)

    def recent_searches(self, limit: int) -> list[tuple[str, str, list[str]]]:
        """The last ``limit`` searches as ``(query_id, model_version, product_ids)``, newest last."""
        if limit <= 0:
            return []
        with self._tx(write=False) as cur:
            rows = self._x(cur, "SELECT q.query_id, q.model_version, s.product_ids FROM queries q "
                                "JOIN slates s ON s.slate_key = q.slate_key ORDER BY q.timestamp DESC, q.query_id DESC "
                                "LIMIT ?", (int(limit),)).fetchall()
        return [(qid, mv, json.loads(p)) for qid, mv, p in reversed(rows)]

    def searches(self, query_ids: Iterable[str]) -> dict[str, tuple[str, list[str]]]:
        """``{query_id: (model_version, product_ids)}`` of the stored searches among ``query_ids`` (unknown ones absent)."""
        ids = list(dict.fromkeys(map(str, query_ids)))
        out: dict[str, tuple[str, list[str]]] = {}
        with self._tx(write=False) as cur:
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                rows = self._x(cur, "SELECT q.query_id, q.model_version, s.product_ids FROM queries q JOIN slates s "
                                    f"ON s.slate_key = q.slate_key WHERE q.query_id IN ({', '.join('?' * len(part))})",
                               part).fetchall()
                out.update({qid: (mv, json.loads(p)) for qid, mv, p in rows})
        return out

    def slates(self, keys: Iterable[str]) -> dict[str, ServedSlate]:
        """The stored slates of ``keys`` (unknown keys are absent from the result)."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, ServedSlate] = {}
        with self._tx(write=False) as cur:
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                rows = self._x(cur, f"SELECT {', '.join(_SLATE_COLUMNS)} FROM slates WHERE slate_key IN "
                                    f"({', '.join('?' * len(part))})", part).fetchall()
                out.update((r[0], _slate_of(r)) for r in rows)
        return out

    # vectors -----------------------------------------------------------------
    @staticmethod
    def _vector_row(key: str, rows: list[np.ndarray]) -> tuple:
        arrs = [np.asarray(r, dtype=np.float32).reshape(-1) for r in rows]
        return (str(key), json.dumps([int(a.shape[0]) for a in arrs]), b"".join(_f32(a) for a in arrs), time.time())

    def put_vectors(self, key: str, rows: list[np.ndarray]) -> None:
        """Store one product's embedding rows (one 1-D float32 array per table) under ``key``; a known key is kept."""
        with self._tx() as cur:
            self._x(cur, _INSERT_VECTOR, self._vector_row(key, rows))

    def put_many_vectors(self, items: Iterable[tuple[str, list[np.ndarray]]]) -> int:
        """Store many products' embedding rows in one transaction (known keys are kept); returns how many were given."""
        rows = [self._vector_row(k, r) for k, r in items]
        if rows:
            with self._tx() as cur:
                self._xm(cur, _INSERT_VECTOR, rows)
        return len(rows)

    def vector_keys(self) -> set[str]:
        """Every vector key the store holds."""
        with self._tx(write=False) as cur:
            return {r[0] for r in self._x(cur, "SELECT vector_key FROM vectors").fetchall()}

    def vectors(self, keys: Iterable[str]) -> dict[str, list[np.ndarray]]:
        keys = list(dict.fromkeys(keys))
        out: dict[str, list[np.ndarray]] = {}
        with self._tx(write=False) as cur:
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                for k, dims, data in self._x(cur, f"SELECT vector_key, dims, data FROM vectors WHERE vector_key IN "
                                                  f"({', '.join('?' * len(part))})", part).fetchall():
                    flat = np.frombuffer(bytes(data), dtype="<f4").astype(np.float32)
                    bounds = np.cumsum([0, *json.loads(dims)])
                    out[k] = [flat[a:b].copy() for a, b in zip(bounds[:-1], bounds[1:])]
        return out

    # events ------------------------------------------------------------------
    def _event_rows(self, events: Sequence[Event], now: float) -> list[tuple]:
        rows = []
        for i, e in enumerate(events):
            if e.action_name not in ACTIONS:
                raise ValueError(f"events[{i}].action_name: {e.action_name!r} is not one of {', '.join(ACTIONS)}")
            for name in ("query_id", "object_id"):
                v = getattr(e, name)
                if not isinstance(v, str) or not v:
                    raise ValueError(f"events[{i}].{name}: must be a non-empty string, got {v!r}")
            if e.position is not None and int(e.position) < 1:
                raise ValueError(f"events[{i}].position: ranks start at 1, got {e.position!r}")
            received = float(e.received) if e.received else now
            ts = float(e.timestamp) if e.timestamp is not None else received
            value = _opt_float(e.value)
            if value is not None and not np.isfinite(value):
                raise ValueError(f"events[{i}].value: must be a finite number, got {e.value!r}")
            rows.append((e.action_name, e.query_id, e.object_id, _opt_int(e.position), _opt_int(e.grid_row),
                         _opt_int(e.grid_col), ts, received, self.hash_id(e.client_id), self.hash_id(e.session_id),
                         e.model_version, value))
        return rows

    def record_events(self, events: Sequence[Event]) -> int:
        """Store ``events`` all or none, in one transaction; durable on return. Returns how many were stored.

        ValueError naming the index and field of the first bad event (nothing is stored then).
        """
        rows = self._event_rows(events, time.time())
        if not rows:
            return 0
        with self._tx() as cur:
            self._xm(cur, _INSERT_EVENT, rows)
        return len(rows)

    # reading for learning ------------------------------------------------------
    def _query_filter(self, since: float | None, model_versions: Sequence[str] | None, alias: str = "",
                      until: float | None = None, interleaved: bool | None = False,
                      candidates: Sequence[str] | None = None) -> tuple[str, list]:
        where, params = [], []
        if since is not None:
            where.append(f"{alias}timestamp >= ?")
            params.append(float(since))
        if until is not None:
            where.append(f"{alias}timestamp < ?")
            params.append(float(until))
        if interleaved is not None:
            where.append(f"{alias}interleaved_with IS {'NOT ' if interleaved else ''}NULL")
        for column, values in (("model_version", model_versions), ("interleaved_with", candidates)):
            if values is None:
                continue
            values = list(values)
            if not values:
                where.append("1 = 0")
            else:
                where.append(f"{alias}{column} IN ({', '.join('?' * len(values))})")
                params += values
        return (" WHERE " + " AND ".join(where)) if where else "", params

    def click_log(self, since: float | None = None, model_versions: Sequence[str] | None = None,
                  until: float | None = None, interleaved: bool | None = False):
        """One row per (search, shown product), with the events on it counted.

        Columns: ``query_id, user_query, timestamp, model_version, slate_key, rank`` (1-based,
        as shown), ``logged_rank`` (before any randomisation), ``grid_row, grid_col`` (from the
        search's ``grid_columns``), ``product_id, score, randomised`` and the integer counts
        ``click, add_to_cart, purchase`` (events joined on ``query_id`` and ``object_id``).
        Searches with ``since <= timestamp < until`` and, if given, served by one of ``model_versions``.
        Interleaved searches are left out by default (``interleaved=False``): their lists mix two
        rankers, so neither's position bias nor its logging policy describes them; ``True`` keeps
        only them, ``None`` keeps every search.
        """
        import pandas as pd

        where, params = self._query_filter(since, model_versions, until=until, interleaved=interleaved)
        qwhere, _ = self._query_filter(since, model_versions, alias="q.", until=until, interleaved=interleaved)
        counts_sql = ", ".join(f"SUM(CASE WHEN e.action_name = '{a}' THEN 1 ELSE 0 END)" for a in COUNT_ACTIONS)
        import pyarrow as pa

        # read in chunks, each turned into columns at once: a million searches' rows as Python tuples would take
        # several times the memory of the log they become
        qcols = ["query_id", "user_query", "timestamp", "model_version", "slate_key", "grid_columns", "randomised"]
        qparts: dict[str, list] = {c: [] for c in qcols}
        skeys: list[str] = []
        lens_parts, pid_parts, score_parts, logged_parts = [], [], [], []
        with self._tx(write=False) as cur:
            self._x(cur, f"SELECT {', '.join(qcols)} FROM queries{where} ORDER BY timestamp, query_id", params)
            types = [pa.string(), pa.string(), pa.float64(), pa.string(), pa.string(), pa.int64(), pa.bool_()]
            while rows := cur.fetchmany(_CHUNK):
                for j, (c, t) in enumerate(zip(qcols, types)):
                    qparts[c].append(pa.array([bool(r[j]) for r in rows] if c == "randomised" else [r[j] for r in rows], t))
            self._x(cur, "SELECT slate_key, product_ids, scores, logged_ranks FROM slates WHERE slate_key IN "
                         f"(SELECT slate_key FROM queries{where})", params)
            while rows := cur.fetchmany(_CHUNK):  # slates flattened: product ids, scores, logged ranks end to end
                skeys += [r[0] for r in rows]
                pids = [json.loads(r[1]) for r in rows]
                lens_parts.append(np.fromiter((len(x) for x in pids), dtype=np.int64, count=len(pids)))
                pid_parts.append(pa.array([x for ps in pids for x in ps], pa.string()))
                score_parts.append(np.frombuffer(b"".join(bytes(r[2]) for r in rows), dtype="<f4").astype(np.float32))
                logged_parts.append(np.fromiter((x for r in rows for x in json.loads(r[3])), dtype=np.int64))
                del pids
            ev = self._x(cur, f"SELECT e.query_id, e.object_id, {counts_sql} FROM events e JOIN queries q "
                              f"ON q.query_id = e.query_id{qwhere} GROUP BY e.query_id, e.object_id", params).fetchall()
        cols = ["query_id", "user_query", "timestamp", "model_version", "slate_key", "rank", "logged_rank", "grid_row",
                "grid_col", "product_id", "score", "randomised", *COUNT_ACTIONS]
        if not qparts["query_id"]:
            text = ("query_id", "user_query", "model_version", "slate_key", "product_id")
            return pd.DataFrame({c: pd.Series(dtype="str" if c in text else np.float64 if c == "timestamp" else
                                              np.float32 if c == "score" else bool if c == "randomised" else np.int64)
                                 for c in cols})

        def text(parts) -> pd.api.extensions.ExtensionArray:
            return pd.Series(pa.chunked_array(parts, pa.string()), dtype="str").array

        qf = pd.DataFrame({c: text(qparts[c]) if t == pa.string() else pa.chunked_array(qparts[c], t).to_numpy()
                           for c, t in zip(qcols, types)})
        del qparts
        lens = np.concatenate(lens_parts) if lens_parts else np.zeros(0, np.int64)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(lens) else np.zeros(0, np.int64)
        flat_pid = text(pid_parts) if pid_parts else pd.array([], dtype="str")
        flat_score = np.concatenate(score_parts) if score_parts else np.zeros(0, np.float32)
        flat_logged = np.concatenate(logged_parts) if logged_parts else np.zeros(0, np.int64)
        del pid_parts, score_parts, logged_parts
        slot = pd.Index(skeys).get_indexer(qf["slate_key"])
        if (slot < 0).any():  # cannot happen through this class: a search and its slate are written in one transaction
            raise StoreError(f"{int((slot < 0).sum())} stored search(es) name a slate that is not stored")
        n = lens[slot]
        total = int(n.sum())
        qrow = np.repeat(np.arange(len(qf)), n)
        first = np.repeat(np.cumsum(n) - n, n)
        rank0 = np.arange(total) - first
        flat = np.repeat(starts[slot], n) + rank0
        gc = qf["grid_columns"].to_numpy(np.int64)[qrow]
        def per_search(col: str):  # string columns taken as arrays (no per-row Python objects)
            return qf[col].array.take(qrow)

        out = pd.DataFrame({
            "query_id": per_search("query_id"),
            "user_query": per_search("user_query"),
            "timestamp": qf["timestamp"].to_numpy(np.float64)[qrow],
            "model_version": per_search("model_version"),
            "slate_key": per_search("slate_key"),
            "rank": rank0 + 1,
            "logged_rank": flat_logged[flat],
            "grid_row": rank0 // gc + 1,
            "grid_col": rank0 % gc + 1,
            "product_id": flat_pid.take(flat),
            "score": flat_score[flat],
            "randomised": qf["randomised"].to_numpy(np.int64)[qrow].astype(bool),
        })
        # each (search, product) pair's counts put in place by one integer key per impression (search row, product
        # code): a merge would copy the whole log once more, the largest allocation of this function
        counts = {a: np.zeros(total, np.int64) for a in COUNT_ACTIONS}
        if ev:
            ef = pd.DataFrame(ev, columns=["query_id", "product_id", *COUNT_ACTIONS])
            pcode, products = pd.factorize(flat_pid)
            stride = np.int64(len(products) + 1)
            at = pd.Index(qrow * stride + pcode[flat]).get_indexer(
                pd.Index(qf["query_id"]).get_indexer(ef["query_id"]).astype(np.int64) * stride
                + pd.Index(products).get_indexer(ef["product_id"]))
            ok = at >= 0  # an event on a product its search did not show (the store refuses them) counts nowhere
            for a in COUNT_ACTIONS:
                np.add.at(counts[a], at[ok], ef[a].to_numpy(np.int64)[ok])
        for a in COUNT_ACTIONS:
            out[a] = counts[a]
        return out[cols]

    def interleaving_log(self, since: float | None = None, until: float | None = None,
                         model_versions: Sequence[str] | None = None,
                         candidates: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every interleaved search (oldest first) with its shown products, their teams, and the actions on them.

        Each item: ``query_id``, ``session_id`` (hashed), ``timestamp``, ``model_version`` (team ``a``),
        ``interleaved_with`` (team ``b``), ``product_ids`` and ``teams`` (shown order), and ``actions``:
        ``(product_id, action_name)`` pairs of the search's events other than impressions. Only the searches
        ranked by one of ``model_versions`` and interleaved with one of ``candidates`` when given.
        """
        where, params = self._query_filter(since, model_versions, alias="q.", until=until, interleaved=True,
                                           candidates=candidates)
        with self._tx(write=False) as cur:
            rows = self._x(cur, "SELECT q.query_id, q.session_id, q.timestamp, q.model_version, q.interleaved_with, q.teams, "
                                f"s.product_ids FROM queries q JOIN slates s ON s.slate_key = q.slate_key{where} "
                                "ORDER BY q.timestamp, q.query_id", params).fetchall()
            ev = self._x(cur, "SELECT e.query_id, e.object_id, e.action_name FROM events e JOIN queries q "
                              f"ON q.query_id = e.query_id{where} AND e.action_name <> 'impression' ORDER BY e.id",
                              params).fetchall()
        actions: dict[str, list[tuple[str, str]]] = {}
        for qid, pid, a in ev:
            actions.setdefault(qid, []).append((pid, a))
        return [{"query_id": qid, "session_id": sess, "timestamp": float(ts), "model_version": mv, "interleaved_with": b,
                 "teams": json.loads(teams), "product_ids": json.loads(pids), "actions": actions.get(qid, [])}
                for qid, sess, ts, mv, b, teams, pids in rows]

    def iter_queries(self, batch: int = 5000) -> Iterator[dict[str, Any]]:
        """Every stored search with its shown product ids (and, if interleaved, the candidate and teams), oldest first."""
        with self._tx(write=False) as cur:
            self._x(cur, "SELECT q.query_id, q.user_query, q.client_id, q.session_id, q.timestamp, q.model_version, "
                         "q.index_version, q.k, q.category, q.grid_columns, q.randomised, q.slate_key, q.interleaved_with, "
                         "q.teams, s.product_ids "
                         "FROM queries q JOIN slates s ON s.slate_key = q.slate_key ORDER BY q.timestamp, q.query_id")
            names = ("query_id", "user_query", "client_id", "session_id", "timestamp", "model_version", "index_version",
                     "k", "category", "grid_columns", "randomised", "slate_key", "interleaved_with", "teams", "product_ids")
            while rows := cur.fetchmany(batch):
                for r in rows:
                    d = dict(zip(names, r))
                    d["product_ids"] = json.loads(d["product_ids"])
                    d["randomised"] = bool(d["randomised"])
                    d["teams"] = None if d["teams"] is None else json.loads(d["teams"])
                    yield d

    def iter_events(self, batch: int = 5000) -> Iterator[dict[str, Any]]:
        """Every stored event in id order, with the grid columns of its search (None if the search is gone).

        An event stored without a position gets the product's shown rank in its search, when
        the search is still stored and showed the product (``position_from_slate`` is then True).
        """
        with self._tx(write=False) as cur:
            self._x(cur, f"SELECT e.id, {', '.join('e.' + c for c in _EVENT_COLUMNS)}, q.grid_columns, "
                         "CASE WHEN e.position IS NULL THEN s.product_ids END FROM events e "
                         "LEFT JOIN queries q ON q.query_id = e.query_id LEFT JOIN slates s ON s.slate_key = q.slate_key "
                         "ORDER BY e.id")
            names = ("id", *_EVENT_COLUMNS, "grid_columns")
            while rows := cur.fetchmany(batch):
                for r in rows:
                    d = dict(zip(names, r[:-1]))
                    d["position_from_slate"] = False
                    if r[-1] is not None:
                        shown = json.loads(r[-1])
                        if d["object_id"] in shown:
                            d["position"], d["position_from_slate"] = shown.index(d["object_id"]) + 1, True
                    yield d

    # housekeeping ------------------------------------------------------------
    def purge(self, now: float | None = None) -> dict[str, int]:
        """Delete searches and events older than the retention, then slates and vectors nothing refers to.

        An event goes when it was received before the cut-off or its search goes. Vectors
        are kept while a slate names them, and for the retention period after they were put
        (a product's new rows may be stored before any slate shows it). With no retention
        (None or 0) nothing is deleted. Returns the rows deleted per table.
        """
        out = {"queries": 0, "events": 0, "slates": 0, "vectors": 0}
        if not self.retention_days:
            return out
        cutoff = (time.time() if now is None else float(now)) - float(self.retention_days) * _DAY
        with self._tx() as cur:
            out["events"] = self._x(cur, "DELETE FROM events WHERE received < ? OR query_id IN "
                                         "(SELECT query_id FROM queries WHERE timestamp < ?)", (cutoff, cutoff)).rowcount
            out["queries"] = self._x(cur, "DELETE FROM queries WHERE timestamp < ?", (cutoff,)).rowcount
            out["slates"] = self._x(cur, "DELETE FROM slates WHERE slate_key NOT IN (SELECT slate_key FROM queries)").rowcount
            old = [r[0] for r in self._x(cur, "SELECT vector_key FROM vectors WHERE created < ?", (cutoff,)).fetchall()]
            if old:
                used: set[str] = set()
                for (vk,) in self._x(cur, "SELECT vector_keys FROM slates").fetchall():
                    used.update(json.loads(vk))
                gone = [(k,) for k in old if k not in used]
                self._xm(cur, "DELETE FROM vectors WHERE vector_key = ?", gone)
                out["vectors"] = len(gone)
        return out

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        with self._tx(write=False) as cur:
            return {t: int(self._x(cur, f"SELECT COUNT(*) FROM {t}").fetchone()[0])
                    for t in ("queries", "slates", "events", "vectors")}


class SQLiteEventStore(EventStore):
    dialect = SQLITE

    def __init__(self, path: str | Path, hash_key: bytes, retention_days: float | None = None):
        super().__init__(hash_key, retention_days)
        self.path = Path(path).expanduser()
        self.url = f"sqlite:///{self.path}"
        _make_private_dirs(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)  # before SQLite creates it with the umask's mode
        os.close(fd)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop_checkpoints = threading.Event()
        self._checkpointed = time.monotonic()  # when the checkpointer last ran
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name=f"checkpoint {self.path.name}", daemon=True)
        self._init_schema()  # before the thread starts: a file that is not a database fails here, with no thread left
        self._checkpointer.start()
        for suffix in ("-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                try:
                    p.chmod(FILE_MODE)
                except OSError:
                    pass

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"the event store {self.path} is closed")
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            c.execute("PRAGMA busy_timeout=30000")
            c.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it, off the committing request
            c.execute("PRAGMA journal_size_limit=67108864")  # the WAL file shrinks back to 64 MB after a checkpoint
            self._local.conn = c
            self._local.durable = True
            with self._conns_lock:
                self._conns.append(c)
        return c

    #: the checkpointer's period (s), and how long it may fall behind before a committing writer checkpoints itself
    CHECKPOINT_EVERY_S, CHECKPOINT_LATE_S = 0.5, 30.0

    def _checkpoint_loop(self) -> None:
        """Copy the WAL into the database file every :attr:`CHECKPOINT_EVERY_S` (PASSIVE: never waits for a reader or a
        writer), so commits on the request path do not pay for it."""
        try:
            c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        except sqlite3.Error:
            return
        try:
            while not self._stop_checkpoints.wait(self.CHECKPOINT_EVERY_S):
                try:
                    c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self._checkpointed = time.monotonic()
                except sqlite3.Error:  # busy or closing: the next round tries again
                    pass
        finally:
            c.close()

    @contextmanager
    def _tx(self, write: bool = True, durable: bool = True) -> Iterator[Any]:
        c = self._conn()
        if write:
            with self._write_lock:
                if self._local.durable != durable:  # per connection, outside a transaction
                    c.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                    self._local.durable = durable
                cur = c.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                except BaseException:
                    c.rollback()
                    raise
                c.commit()
                if time.monotonic() - self._checkpointed > self.CHECKPOINT_LATE_S or not self._checkpointer.is_alive():
                    c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # the checkpointer is not running, or stalled
        else:
            cur = c.cursor()
            cur.execute("BEGIN")  # one snapshot for every statement of a read
            try:
                yield cur
            finally:
                c.rollback()

    def close(self) -> None:
        self._stop_checkpoints.set()
        if self._checkpointer.is_alive() and self._checkpointer is not threading.current_thread():
            self._checkpointer.join(timeout=5)
        with self._conns_lock:
            self._closed = True
            for c in self._conns:
                try:
                    c.close()
                except sqlite3.ProgrammingError:  # closed from another thread's connection: SQLite allows it
                    pass
            self._conns.clear()


class PostgresEventStore(EventStore):
    dialect = POSTGRES

    def __init__(self, url: str, hash_key: bytes, retention_days: float | None = None, pool_size: int = 8):
        try:
            import psycopg
        except ImportError as e:  # pragma: no cover - the serve extra pins it
            raise ImportError("a postgresql:// event store needs psycopg; install fusionrank[serve]") from e
        super().__init__(hash_key, retention_days)
        self._psycopg = psycopg
        self.url = url
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        self._init_schema()

    def _acquire(self):
        if self._closed:
            raise StoreError("the event store is closed")
        self._slots.acquire()
        try:
            try:
                c = self._idle.get_nowait()
            except queue.Empty:
                c = self._psycopg.connect(self.url, autocommit=False)
                with self._all_lock:
                    self._all.append(c)
            if c.closed or c.broken:
                c = self._psycopg.connect(self.url, autocommit=False)
                with self._all_lock:
                    self._all.append(c)
            return c
        except BaseException:
            self._slots.release()
            raise

    def _release(self, c) -> None:
        self._idle.put(c)
        self._slots.release()

    @contextmanager
    def _tx(self, write: bool = True, durable: bool = True) -> Iterator[Any]:
        c = self._acquire()
        try:
            with c.cursor() as cur:
                try:
                    if write and not durable:
                        cur.execute("SET LOCAL synchronous_commit = off")
                    yield cur
                except BaseException:
                    c.rollback()
                    raise
                if write:
                    c.commit()
                else:
                    c.rollback()
        finally:
            self._release(c)

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            for c in self._all:
                try:
                    c.close()
                except Exception:
                    pass
            self._all.clear()


def _make_private_dirs(d: Path) -> None:
    """Create ``d`` and missing parents with mode 0700 (folders that exist keep their mode)."""
    missing = []
    p = d
    while not p.exists():
        missing.append(p)
        p = p.parent
    for q in reversed(missing):
        try:
            q.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass
        os.chmod(q, DIR_MODE)


def parse_url(url: str | Path) -> tuple[str, str]:
    """``(engine, target)`` of an event store URL: ``("sqlite", PATH)`` or ``("postgresql", URL)``; StoreError otherwise."""
    u = str(url)
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", u)
    if m is None:
        if not u.strip():
            raise StoreError(f"empty event store URL; use one of: {', '.join(URL_SCHEMES)}")
        return "sqlite", u
    scheme = m.group(1).lower()
    if scheme == "sqlite":
        path = u[len(m.group(0)):]
        if not path.startswith("/"):
            raise StoreError(f"{u!r}: a sqlite URL needs an absolute path after the scheme, like sqlite:////tmp/events.sqlite "
                             "(three slashes then the path)")
        return "sqlite", path
    if scheme in ("postgresql", "postgres"):
        return "postgresql", u
    raise StoreError(f"unknown event store URL scheme {scheme!r}; use one of: {', '.join(URL_SCHEMES)}")


def open_store(url: str | Path, hash_key: bytes, retention_days: float | None = None) -> EventStore:
    """Open (creating if needed) the event store at ``url``: a file path, ``sqlite:///PATH`` or ``postgresql://...``."""
    engine, target = parse_url(url)
    if engine == "sqlite":
        try:
            return SQLiteEventStore(target, hash_key, retention_days)
        except sqlite3.DatabaseError as e:  # a damaged or foreign file: say which, change nothing
            raise StoreError(f"{target}: not a readable event store ({e}); nothing was changed. Move the file aside "
                             f"(or restore it from a backup) to start a new store") from None
    return PostgresEventStore(target, hash_key, retention_days)


# --------------------------------------------------------------------------- the service's defaults
def hash_key_for(data_dir: str | Path) -> bytes:
    """The hash key: ``FUSIONRANK_EVENTS_HASH_KEY`` if set, else 32 random bytes kept in ``<data_dir>/events.key`` (0600)."""
    from ..settings import get_settings

    secret = get_settings().events_hash_key
    if secret is not None and secret.get_secret_value():
        return secret.get_secret_value().encode("utf-8")
    d = Path(data_dir)
    _make_private_dirs(d)
    path = d / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) < 16:
            raise StoreError(f"{path} holds {len(key)} bytes; a hash key needs at least 16 (delete it to make a new one, "
                             "which makes earlier client and session hashes unmatchable)")
        return key
    key = secrets.token_bytes(32)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def events_url_for(data_dir: str | Path) -> str:
    """``FUSIONRANK_EVENTS_URL`` if set, else ``<data_dir>/events.sqlite``."""
    from ..settings import get_settings

    return get_settings().events_url or str(Path(data_dir) / "events.sqlite")


def open_service_store(data_dir: str | Path) -> EventStore:
    """The store a service with ``data_dir`` uses, with the settings' URL, hash key and retention."""
    from ..settings import get_settings

    return open_store(events_url_for(data_dir), hash_key_for(data_dir), get_settings().events_retention_days)


def open_existing(url: str | Path, key_file: str | Path | None = None, retention_days: float | None = None) -> EventStore:
    """Open an event store that already exists, with its hash key: ``key_file``, else
    ``FUSIONRANK_EVENTS_HASH_KEY``, else the ``events.key`` beside a SQLite store. Errors say what is missing."""
    from ..errors import FusionrankError
    from ..settings import get_settings

    engine, target = parse_url(url)
    s = get_settings()
    path = Path(target) if engine == "sqlite" else None
    if path is not None and not path.is_file():
        raise FusionrankError(f"no event store at {path}")
    if key_file is not None:
        if not Path(key_file).is_file():
            raise FusionrankError(f"key file {key_file}: no such file")
        key = Path(key_file).read_bytes()
    elif s.events_hash_key is not None and s.events_hash_key.get_secret_value():
        key = s.events_hash_key.get_secret_value().encode("utf-8")
    else:
        if path is None or not (path.parent / KEY_FILE).is_file():
            raise FusionrankError("the event store's hash key is needed: pass a key file, or set FUSIONRANK_EVENTS_HASH_KEY")
        key = (path.parent / KEY_FILE).read_bytes()
    try:
        return open_store(url, key, s.events_retention_days if retention_days is None else retention_days)
    except (StoreError, ImportError):
        raise
    except Exception as e:  # a server that refuses the connection, a file that is not a database
        raise FusionrankError(f"cannot open the event store {url}: {e}") from None
