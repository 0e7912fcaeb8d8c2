"""The serving index: the catalogue tables, updatable in place, with a change log and snapshots.

:class:`SearchIndex` is :class:`~fusionrank.ranking.catalog.CatalogTables` (the same
records, embedding tables, BM25 fields and vector search that training and evaluation
read, through the same candidate generator and feature builder) plus writes. It is
built from an ingested catalogue and its embedding store, saved to a directory, and
loaded at start.

Products are rows. ``upsert`` appends a new row (and retires the old one when the id
exists); ``delete`` retires a row. Every change updates the BM25 statistics and the
vector indexes at once, so the next search sees it, and is appended to a change log
(``changes.jsonl``, a checksummed :class:`~fusionrank.serving.wal.RecordLog`, fsync-ed
before the write returns) that ``load`` replays, repairing a torn tail and reporting
damaged lines; ``save`` writes a fresh snapshot and starts an empty log. Reads and writes take one lock; a search holds it only for
retrieval and feature computation (a few ms), not for ranking.

**Shared by worker processes** (``load(..., shared=True)``, ``fusionrank serve --workers N``): every
worker maps the same snapshot read-only (embedding tables as numpy memory maps, IVF lists with
faiss's ``IO_FLAG_MMAP``), so the pages are shared, and the change log is the one order of writes:

- a write takes an exclusive ``flock`` on ``changes.jsonl``, first applies what other workers
  appended (:meth:`catch_up`), then appends its own record (fsync-ed) and applies it, then
  releases the lock and is acknowledged. Every worker applies the same changes in the same
  order to the same snapshot, so rows and versions agree across workers;
- before every search a worker compares the log's size with how far it has read (one
  ``stat``) and applies the new complete records: an acknowledged write is visible to the next
  search on every worker. New rows go to each worker's private part of the tables (a few
  hundred bytes per written product), never into the mapped snapshot.

A shared index does not write snapshots (``save`` refuses); restart with one process for that.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import schema as S
from ..errors import FusionrankError
from ..encoders.attributes import colour_evidence
from ..modalities import CATALOG_TABLES, COLOUR_TABLE, LEXICAL_FIELDS
from ..ranking.catalog import INDEXED_TITLE, RECORD_COLUMNS, TRANSCRIPT_TEXT, CatalogConfig, CatalogTables, storage_of
from ..ranking.lexical import LexicalField
from ..ranking.tables import EmbeddingTable, TextColumn
from ..ranking.vectors import AnnIndex, ExactVectors
from .wal import RecordLog, encode_record, fsync_dir, read_from, scan

__all__ = ["SearchIndex", "CatalogConfig", "INDEXED_TITLE", "TRANSCRIPT_TEXT", "RECORD_COLUMNS"]

RECORDS_ARROW = "records.arrow"  # the records' text columns, uncompressed, memory-mapped by worker processes
FORMAT_VERSION = 2  # 2: emb.<table>.npy holds only the rows whose mask is set, in table_dtype; 1: every row, float32
READ_FORMATS = (1, 2)


def _b64(v: np.ndarray) -> str:
    return base64.b64encode(np.asarray(v, np.float32).tobytes()).decode()


def _unb64(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), np.float32)



def _load_table(path: Path, mask: np.ndarray, dtype: str) -> EmbeddingTable:
    """A saved table: memory-mapped (format 2), or compacted from a format-1 file that holds every row."""
    stored = np.load(path, mmap_mode="r")
    if stored.ndim == 2 and len(stored) == len(mask) and len(mask) != int(mask.sum()):
        return EmbeddingTable.from_rows(stored, mask, dtype)  # format 1: a dense float32 table
    return EmbeddingTable.from_stored(stored, mask, dtype, source=str(path))


def _finish_interrupted_save(d: Path, log) -> None:
    """After a crash between ``save``'s two renames, ``d`` is missing: take the new snapshot if complete, else the old one."""
    if (d / "index.json").exists():
        return
    tmp, old = d.with_name(d.name + ".tmp"), d.with_name(d.name + ".old")
    if (tmp / "index.json").exists() and (tmp / "changes.jsonl").exists():
        use = tmp  # complete: it holds every change logged before it was written
    elif (old / "index.json").exists():
        use = old
    else:
        return
    if d.exists():
        shutil.rmtree(d)
    use.rename(d)
    fsync_dir(d.parent)
    log(f"{d}: a snapshot write was interrupted by a crash; recovered the {'new' if use is tmp else 'previous'} snapshot")


class SearchIndex(CatalogTables):
    """Catalogue tables that take writes (``upsert``, ``delete``), log them, and save/load snapshots."""

    sharded = False  # one index (a split catalogue is served through :class:`~fusionrank.serving.shards.ShardedIndex`)

    def __init__(self, config: CatalogConfig, dims: dict[str, int]):
        super().__init__(config, dims)
        self._log_path: Path | None = None
        self._log: RecordLog | None = None
        self.attributes: dict[str, dict[str, str]] = {}  # extra fields of products written through PUT
        self.log_repair: dict[str, Any] = {}
        self.replay_errors = 0
        self.shared = False  # loaded by one of several worker processes (see the module docstring)
        self._log_offset = 0  # bytes of the change log applied (shared: where catch_up continues)
        self.caught_up = 0  # changes applied from other workers' appends

    # writes --------------------------------------------------------------------
    def _grow(self, n: int) -> None:
        if n > self.cap:
            self._reserve(max(n, int(self.cap * 1.25) + 64))

    def _reserve(self, cap: int) -> None:
        """Make every per-row array ``cap`` rows long (new rows empty); the copy reads any array, mmap included."""
        def resized(a: np.ndarray, fill) -> np.ndarray:
            if isinstance(a, TextColumn):  # a shared text column grows its private tail only
                a.reserve(cap)
                return a
            out = np.full((cap,) + a.shape[1:], fill, dtype=a.dtype)
            out[:len(a)] = a
            return out

        for c in RECORD_COLUMNS:
            self.records[c] = resized(self.records[c], None)
        self.cat_code = resized(self.cat_code, 0)
        for f in LEXICAL_FIELDS:
            self.lex_text[f] = resized(self.lex_text[f], "")
        for t in CATALOG_TABLES:
            self.emb[t].reserve(cap)  # the slot map only: stored vectors are never copied
            self.emb_mask[t] = resized(self.emb_mask[t], False)
        self.live = resized(self.live, False)
        self.cap = cap

    def _count_category(self, category: Any, delta: int) -> None:
        if category is None or not str(category).strip():
            return
        key = str(category).lower()
        n = self._cat_count.get(key, 0) + delta
        if n > 0:
            self._cat_count[key] = n
            self._category_names.setdefault(key, str(category))
        else:
            self._cat_count.pop(key, None)
            self._category_names.pop(key, None)

    def _retire(self, row: int) -> None:
        for f in LEXICAL_FIELDS:
            self.lexical[f].delete(row, self.lex_text[f][row])
        for t, a in self.vectors.items():
            if self.emb_mask[t][row]:
                a.remove(np.array([row]))
        self.live[row] = False
        self._count_category(self.records[S.CATEGORY][row], -1)

    def upsert(self, record: dict[str, Any], lex_texts: dict[str, str], vectors: dict[str, np.ndarray | None],
               _log: bool = True, attributes: dict[str, str] | None = None) -> int:
        """Add or replace one product; returns its new row. Visible to the next search."""
        if _log:
            self.catch_up()
        pid = str(record[S.PRODUCT_ID])
        if COLOUR_TABLE not in vectors:  # a caller without photo evidence: the colours its indexed title (or transcript) states
            spoken = record.get(TRANSCRIPT_TEXT) if self.config.transcript_attributes else None
            vectors = {**vectors, COLOUR_TABLE: colour_evidence(record.get(INDEXED_TITLE) or record.get(S.TITLE), None, spoken)}
        for t in CATALOG_TABLES:
            v = vectors.get(t)
            if v is not None and np.asarray(v).shape != (self.dims[t],):
                raise FusionrankError(f"vector {t!r} of product {pid!r} has shape {np.asarray(v).shape}, expected ({self.dims[t]},)")
        if vectors.get("title") is None:
            raise FusionrankError(f"product {pid!r} has no title embedding")
        entry = None
        if _log:  # encoded first: a record that cannot be logged (NaN, ...) is refused before it changes anything
            entry = {"op": "upsert", "record": {c: record.get(c) for c in RECORD_COLUMNS}, "lex": lex_texts,
                     "vectors": {t: (None if vectors.get(t) is None else _b64(vectors[t])) for t in CATALOG_TABLES}}
            if attributes:
                entry["attributes"] = attributes
            encode_record(entry)
        with self.lock:
            if entry is not None:
                self._append_log(entry)  # on disk before the change is visible or acknowledged
            old = self.row_of.get(pid)
            if old is not None:
                self._retire(old)
            row = self.n_rows
            self._grow(row + 1)
            for c in RECORD_COLUMNS:
                self.records[c][row] = record.get(c)
            self.records[S.PRODUCT_ID][row] = pid
            cat = record.get(S.CATEGORY)
            self.cat_code[row] = self._codes([cat])[0]
            for t in CATALOG_TABLES:
                v = vectors.get(t)
                self.emb_mask[t][row] = v is not None
                self.emb[t].set(row, None if v is None else np.asarray(v, np.float32))
            self.live[row] = True
            self.n_rows = row + 1
            for f in LEXICAL_FIELDS:
                self.lex_text[f][row] = lex_texts.get(f) or ""
                self.lexical[f].add(row, self.lex_text[f][row])
            for t, a in self.vectors.items():
                if self.emb_mask[t][row]:  # codes from the vector as given, as at build time
                    a.add(np.asarray(vectors[t], np.float32)[None, :], np.array([row]))
            self.row_of[pid] = row
            self.version += 1
            self._count_category(cat, +1)
            if attributes:
                self.attributes[pid] = dict(attributes)
            else:
                self.attributes.pop(pid, None)
        return row

    def delete(self, product_id: str, _log: bool = True) -> bool:
        """Remove a product; False if it is not in the index."""
        if _log:
            self.catch_up()
        pid = str(product_id)
        with self.lock:
            if pid not in self.row_of:
                return False
            if _log:
                self._append_log({"op": "delete", "product_id": pid})
            row = self.row_of.pop(pid)
            self._retire(row)
            self.attributes.pop(pid, None)
            self.version += 1
        return True

    def _append_log(self, entry: dict) -> None:
        if self._log is None:
            return
        if not self.shared:
            self._log.append(entry)
            return
        fd = os.open(self._log_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one writer at a time across the worker processes
            self.catch_up()  # what the others appended comes first, in the same order everywhere
            if os.fstat(fd).st_size > self._log_offset:
                # a worker died in the middle of an append (never acknowledged): cut that torn line off (a copy is
                # kept) so that this record starts a line of its own instead of being glued to it
                scan(self._log_path, repair=True, log=print)
            self._log.append(entry)
            self._log_offset = os.fstat(fd).st_size  # ours is the last record: nobody appends while we hold the lock
        finally:
            os.close(fd)  # releases the lock

    def catch_up(self) -> int:
        """Apply the changes other worker processes appended to the log since this one last read it (shared only).

        One ``stat`` when there is nothing new. Returns how many changes were applied.
        """
        if not self.shared or self._log_path is None:
            return 0
        try:
            if os.stat(self._log_path).st_size <= self._log_offset:
                return 0
        except FileNotFoundError:
            return 0
        with self.lock:
            records, end, bad = read_from(self._log_path, self._log_offset)
            for off in bad:
                self.replay_errors += 1
                print(f"{self._log_path.name}: a damaged record at byte offset {off} was skipped")
            n = self._replay(records, print)
            self._log_offset = end
            self.caught_up += n
        return n

    def _replay(self, records: list[dict], log) -> int:
        """Apply logged changes in order (at load, and in shared mode as other workers append them)."""
        replayed = 0
        for i, e in enumerate(records):
            try:  # one bad entry never stops the replay of the acknowledged changes after it
                if e["op"] == "upsert":
                    self.upsert(e["record"], e["lex"], {t: (None if v is None else _unb64(v)) for t, v in e["vectors"].items()},
                                _log=False, attributes=e.get("attributes"))
                elif e["op"] == "delete":
                    self.delete(e["product_id"], _log=False)
                else:
                    raise KeyError(f"op {e.get('op')!r}")
                replayed += 1
            except Exception as ex:  # noqa: BLE001 - reported and counted
                self.replay_errors += 1
                log(f"{self._log_path.name if self._log_path else 'changes'}: change {i + 1} could not be replayed "
                    f"({type(ex).__name__}: {ex}); skipped")
        return replayed

    def product(self, product_id: str) -> dict[str, Any] | None:
        p = super().product(product_id)
        if p is not None and str(product_id) in self.attributes:
            p["attributes"] = dict(self.attributes[str(product_id)])
        return p

    def media_dirs(self) -> list[str]:
        """The folders holding the products' photos and clips (where the service may serve media from)."""
        from .media import folders_of

        return folders_of(self)

    def compacted(self, log=print) -> "SearchIndex":
        """A new index holding only the live products (rows renumbered, IVF centroids re-learned).

        Removed and replaced products keep their rows until this runs; it costs a full build
        (8 s at 44k, ~3 min at 1M on two cores), so it is an offline step: ``fusionrank compact-index``.
        """
        with self.lock:
            n = self.n_rows
            live = self.live[:n]
            records = {c: self.records[c][:n][live] for c in RECORD_COLUMNS}
            texts = {f: self.lex_text[f][:n][live] for f in LEXICAL_FIELDS}
            emb = {t: self.emb[t][np.flatnonzero(live)] for t in CATALOG_TABLES}
            mask = {t: self.emb_mask[t][:n][live] for t in CATALOG_TABLES}
        return SearchIndex.build(records, texts, emb, mask, self.config, log=log)

    # persistence ---------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write a snapshot (atomically: a new folder renamed over the old one) and start an empty change log."""
        if self.shared:
            raise FusionrankError("an index shared by worker processes does not write snapshots; stop the service and "
                                  "restart it with one process (or run `fusionrank compact-index`) to write one")
        d = Path(directory)
        with self.lock:
            tmp = d.with_name(d.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            n = self.n_rows
            meta = pd.DataFrame({c: pd.Series(self.records[c][:n], dtype=object) for c in RECORD_COLUMNS})
            for f in LEXICAL_FIELDS:
                meta[f"lex_{f}"] = pd.Series(self.lex_text[f][:n], dtype=object)
            meta["live"] = self.live[:n]
            for c in meta.columns:
                if c != "live":
                    meta[c] = meta[c].astype("string")
            meta.to_parquet(tmp / "records.parquet", index=False)
            # the same columns as an uncompressed Arrow file: worker processes map it instead of holding Python strings
            import pyarrow as pa
            import pyarrow.feather as feather

            feather.write_feather(pa.Table.from_pandas(meta.drop(columns=["live"]), preserve_index=False),
                                  tmp / RECORDS_ARROW, compression="uncompressed", chunksize=max(1, n))  # one batch: mapped without a copy
            for t in CATALOG_TABLES:  # the vectors of the rows that have one, in row order, in the table's dtype
                np.save(tmp / f"emb.{t}.npy", self.emb[t].stored(n)[1])
                np.save(tmp / f"mask.{t}.npy", self.emb_mask[t][:n])
            for f, lx in self.lexical.items():
                lx.save(tmp / f"lex.{f}")
            for t, a in self.vectors.items():
                a.save(tmp / f"ann.{t}.faiss")
            (tmp / "index.json").write_text(json.dumps({"format": FORMAT_VERSION, "config": self.config.model_dump(mode="json"),
                                                        "dims": self.dims, "rows": n, "products": len(self)}, indent=2))
            live_attrs = {p: a for p, a in self.attributes.items() if p in self.row_of}
            (tmp / "attributes.json").write_text(json.dumps(live_attrs))
            (tmp / "changes.jsonl").write_text("")  # written last: its presence marks a complete snapshot folder
            os.chmod(tmp / "changes.jsonl", 0o600)
            for f in tmp.rglob("*"):  # on disk before the swap: a crash after it never finds a half-written snapshot
                if f.is_file():
                    with open(f, "rb+") as fh:
                        os.fsync(fh.fileno())
            old = d.with_name(d.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if self._log is not None:
                self._log.close()
                self._log = None
            if d.exists():
                d.rename(old)
            tmp.rename(d)
            fsync_dir(d.parent)
            shutil.rmtree(old, ignore_errors=True)
            self._log_path = d / "changes.jsonl"
            self._log = RecordLog(self._log_path)
        return d

    @staticmethod
    def saved_config(directory: str | Path) -> CatalogConfig:
        """How the index saved in ``directory`` was built (title field, candidates, BM25, vector search, table storage),
        read without loading it."""
        f = Path(directory) / "index.json"
        if not f.exists():
            raise FusionrankError(f"{directory}: not a search index (no index.json); build one with `fusionrank index MODEL_DIR`")
        return CatalogConfig.model_validate(json.loads(f.read_text())["config"])

    @classmethod
    def load(cls, directory: str | Path, log=print, shared: bool = False) -> "SearchIndex":
        """Load a snapshot and replay its change log.

        ``shared``: one of several worker processes over this folder (see the module docstring); the
        IVF lists are memory-mapped too, and the log is read without repairs (the process that
        started the workers repaired it with a plain ``load`` first).
        """
        d = Path(directory)
        if not shared:
            _finish_interrupted_save(d, log)
        if not (d / "index.json").exists():
            raise FusionrankError(f"{d}: not a search index (no index.json); build one with `fusionrank serve` or SearchIndex.save")
        t0 = time.perf_counter()
        meta = json.loads((d / "index.json").read_text())
        if meta.get("format") not in READ_FORMATS:
            raise FusionrankError(f"{d}: index format {meta.get('format')} is not supported (expected one of "
                                  f"{', '.join(map(str, READ_FORMATS))}); rebuild it with `fusionrank index MODEL_DIR`")
        config = CatalogConfig.model_validate(meta["config"])
        missing = [t for t in CATALOG_TABLES if t not in meta["dims"]]
        if missing:  # saved by a version that had fewer tables: the ranker's features would read nothing there
            raise FusionrankError(f"{d}: the index was saved without the {', '.join(map(repr, missing))} table(s) that "
                                  f"this version ranks with; rebuild it with `fusionrank index MODEL_DIR`")
        self = cls(config, meta["dims"])
        rec = pd.read_parquet(d / "records.parquet", columns=None if not (shared and (d / RECORDS_ARROW).exists()) else ["live"])
        n = len(rec)
        if "product_id" in rec.columns:
            for c in RECORD_COLUMNS:
                self.records[c] = rec[c].astype(object).where(rec[c].notna(), None).to_numpy(dtype=object)
            for f in LEXICAL_FIELDS:
                self.lex_text[f] = rec[f"lex_{f}"].fillna("").astype(object).to_numpy(dtype=object)
        else:  # shared: the text columns stay in the memory-mapped Arrow file
            import pyarrow as pa

            cols = pa.ipc.open_file(pa.memory_map(str(d / RECORDS_ARROW), "r")).read_all().combine_chunks()
            for c in RECORD_COLUMNS:
                self.records[c] = TextColumn(cols.column(c).chunk(0) if cols.column(c).num_chunks else pa.array([], pa.string()))
            for f in LEXICAL_FIELDS:
                arr = cols.column(f"lex_{f}")
                arr = arr.chunk(0) if arr.num_chunks else pa.array([], pa.string())
                self.lex_text[f] = TextColumn(arr.fill_null("") if arr.null_count else arr)
        self.live = rec["live"].to_numpy(bool).copy()
        del rec
        import pyarrow as pa

        pa.default_memory_pool().release_unused()  # the parquet read's buffers: else every worker keeps them (~40 MB at 44k)
        self.cat_code = self._codes(self.records[S.CATEGORY])
        for t in CATALOG_TABLES:  # memory-mapped and never copied: every process that loads this snapshot shares the pages
            self.emb_mask[t] = np.load(d / f"mask.{t}.npy")
            self.emb[t] = _load_table(d / f"emb.{t}.npy", self.emb_mask[t], storage_of(config, t))
        # room for new products: growing a 1M-row table later would copy all of it during a write
        self.cap = n
        self._reserve(n + max(1024, n // 20))
        for f in LEXICAL_FIELDS:
            self.lexical[f] = LexicalField.load(d / f"lex.{f}")
        a = config.ann
        for t in self.dense_tables():
            self.vectors[t] = (ExactVectors(self, t) if a.codec == "exact"
                               else AnnIndex.load(d / f"ann.{t}.faiss", a.nprobe, a.codec, mmap=shared))
        self.n_rows = n
        self.row_of = {str(p): i for i, p in enumerate(self.records[S.PRODUCT_ID][:n]) if self.live[i]}
        self._refresh_category_names()
        if (d / "attributes.json").exists():
            self.attributes = {p: a for p, a in json.loads((d / "attributes.json").read_text()).items() if p in self.row_of}
        log_path = d / "changes.jsonl"
        self._log_path = log_path
        if shared:  # reading and applying under the writers' lock: no append is half-read
            fd = os.open(log_path, os.O_RDONLY | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            # scans, cuts a torn tail off (copy kept), reports damaged lines
            wal = RecordLog(log_path, log=log, repair=not shared)
            replayed = self._replay(wal.records, log)
        finally:
            if shared:
                os.close(fd)
        wal.release_records()
        self._log = wal
        self._log_offset = wal.repair.end
        self.shared = shared
        self.log_repair = {**wal.repair.as_dict(), "replay_errors": self.replay_errors}
        problems = wal.repair.message()
        log(f"serving index: {len(self):,} products loaded from {d} in {time.perf_counter() - t0:.1f} s"
            + (f" ({replayed} logged change(s) replayed)" if replayed else "")
            + (f"; REPAIRED: {problems}" if problems else "")
            + (f"; {self.replay_errors} change(s) could not be replayed" if self.replay_errors else ""))
        return self

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def directory(self) -> Path | None:
        """The folder this index was saved to or loaded from (None if neither)."""
        return None if self._log_path is None else self._log_path.parent
