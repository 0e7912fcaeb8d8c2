"""The serving index: product records, embeddings, BM25 and ANN indexes, updatable in place.

:class:`SearchIndex` holds one catalogue variant (one title field) for the
service. It is built from an ingested catalogue and its embedding store (through
:class:`~fusionrank.features.ProductIndex`, so the texts and vectors are the ones
the ranker was trained on), saved to a directory, and loaded at start.

Products are rows. ``upsert`` appends a new row (and retires the old one when the
id exists); ``delete`` retires a row. Every change updates the BM25 statistics and
the ANN indexes at once, so the next search sees it, and is appended to a change
log (``changes.jsonl``) that ``load`` replays; ``save`` writes a fresh snapshot
and truncates the log. Reads and writes take one lock; a search holds it only
for retrieval and feature computation (a few ms), not for ranking.

Features are computed exactly as :meth:`ProductIndex.slates` computes them for
training (``tests/serving/test_index.py`` compares the two).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .. import schema as S
from ..errors import FusionrankError
from ..features import MODALITIES, MODALITY_EMBEDDING, SCALAR_FEATURES, Slates, finish_features
from ..retrieval.hybrid import CandidateConfig, rrf_merge
from .ann import AnnIndex
from .lexical import LexicalField, LexScores

# display / record columns kept per product (the indexed title is ``indexed_title``)
INDEXED_TITLE = "indexed_title"
TRANSCRIPT_TEXT = "transcript"
RECORD_COLUMNS: tuple[str, ...] = (S.PRODUCT_ID, S.TITLE, INDEXED_TITLE, S.DESCRIPTION, S.BRAND, S.COLOR, S.CATEGORY,
                                   S.IMAGE, S.AUDIO, TRANSCRIPT_TEXT)
TABLES: tuple[str, ...] = tuple(MODALITY_EMBEDDING.values())  # title, image_proj, transcript
LEX_FIELDS: tuple[str, ...] = ("title", "transcript")
FORMAT_VERSION = 1


@dataclass
class ServingConfig:
    title_field: str = S.TITLE
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    bm25: dict = field(default_factory=lambda: {"k1": 1.2, "b": 0.75})
    ann: dict = field(default_factory=lambda: {"codec": "sq8", "nprobe": 64, "nlist": None})

    def as_dict(self) -> dict:
        d = asdict(self)
        d["candidates"]["sources"] = list(d["candidates"]["sources"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ServingConfig":
        d = dict(d)
        c = dict(d.get("candidates") or {})
        if "sources" in c:
            c["sources"] = tuple(c["sources"])
        d["candidates"] = CandidateConfig(**c)
        return cls(**d)


@dataclass
class Retrieved:
    """Candidates for one query and the lexical scores needed for their features."""

    rows: np.ndarray
    lex: dict[str, LexScores]  # field -> BM25 of the query
    qlen: dict[str, int]
    sources: dict[str, int]


def _b64(v: np.ndarray) -> str:
    return base64.b64encode(np.asarray(v, np.float32).tobytes()).decode()


def _unb64(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), np.float32)


class SearchIndex:
    def __init__(self, config: ServingConfig, dims: dict[str, int]):
        self.config = config
        self.dims = dict(dims)
        self.lock = threading.RLock()
        self.n_rows = 0
        self.cap = 0
        self.records: dict[str, np.ndarray] = {c: np.empty(0, object) for c in RECORD_COLUMNS}
        self.cat_code = np.zeros(0, np.int32)  # per row: code of its lower-cased category (0 = none), for filters
        self._cat_codes: dict[str, int] = {}
        self.lex_text: dict[str, np.ndarray] = {f: np.empty(0, object) for f in LEX_FIELDS}
        self.emb: dict[str, np.ndarray] = {t: np.zeros((0, dims[t]), np.float32) for t in TABLES}
        self.emb_mask: dict[str, np.ndarray] = {t: np.zeros(0, bool) for t in TABLES}
        self.live = np.zeros(0, bool)
        self.row_of: dict[str, int] = {}
        self.lexical: dict[str, LexicalField] = {}
        self.ann: dict[str, AnnIndex] = {}
        self.version = 0  # bumped on every change
        self._bitmaps: dict[str, tuple[int, np.ndarray, float]] = {}
        self._log_path: Path | None = None
        self._category_names: dict[str, str] = {}  # lower-cased -> as first seen
        self._cat_count: dict[str, int] = {}

    # construction --------------------------------------------------------------
    @classmethod
    def build(cls, records: dict[str, Sequence], lex_texts: dict[str, Sequence[str]], emb: dict[str, np.ndarray],
              emb_mask: dict[str, np.ndarray], config: ServingConfig | None = None, log=print) -> "SearchIndex":
        """An index over ``P`` products given as columns (``records``), BM25 texts, and embedding tables."""
        config = config or ServingConfig()
        t0 = time.perf_counter()
        P = len(records[S.PRODUCT_ID])
        self = cls(config, {t: emb[t].shape[1] for t in TABLES})
        for c in RECORD_COLUMNS:
            v = records.get(c)
            self.records[c] = np.asarray(list(v) if v is not None else [None] * P, dtype=object)
        ids = [str(p) for p in self.records[S.PRODUCT_ID]]
        if len(set(ids)) != P:
            raise FusionrankError("duplicate product ids in the index input")
        self.records[S.PRODUCT_ID] = np.asarray(ids, dtype=object)
        self.row_of = {p: i for i, p in enumerate(ids)}
        self.cat_code = self._codes(self.records[S.CATEGORY])
        for f in LEX_FIELDS:
            self.lex_text[f] = np.asarray([t or "" for t in lex_texts[f]], dtype=object)
            self.lexical[f] = LexicalField.build(self.lex_text[f], **config.bm25)
        for t in TABLES:
            self.emb[t] = np.ascontiguousarray(emb[t], np.float32)
            self.emb_mask[t] = np.asarray(emb_mask[t], bool).copy()
        self.live = np.ones(P, bool)
        self.n_rows = self.cap = P
        a = config.ann
        for t in self._dense_tables():
            rows = np.flatnonzero(self.emb_mask[t])
            t1 = time.perf_counter()
            self.ann[t] = AnnIndex(self.dims[t], a.get("nlist"), a.get("nprobe", 64), a.get("codec", "sq8")).build(self.emb[t][rows], rows)
            log(f"  ANN {t}: {len(rows):,} vectors, {self.ann[t].nlist} lists, {time.perf_counter() - t1:.1f} s")
        self._refresh_category_names()
        log(f"serving index: {P:,} products built in {time.perf_counter() - t0:.1f} s")
        return self

    @classmethod
    def from_product_index(cls, pidx, config: ServingConfig | None = None, log=print) -> "SearchIndex":
        """The serving index of a :class:`~fusionrank.features.ProductIndex` (same texts and vectors)."""
        p = pidx.products
        n = len(p)

        def col(c):
            if c not in p.columns:
                return [None] * n
            v = p[c].astype(object)
            return v.where(p[c].notna(), None).tolist()

        records = {c: col(c) for c in (S.PRODUCT_ID, S.TITLE, S.DESCRIPTION, S.BRAND, S.COLOR, S.CATEGORY, S.IMAGE, S.AUDIO)}
        records[INDEXED_TITLE] = list(pidx.titles)
        records[TRANSCRIPT_TEXT] = [t or None for t in pidx._texts["transcript"]]
        config = config or ServingConfig(title_field=pidx.config.title_field, candidates=pidx.config.candidates,
                                         bm25=dict(pidx.config.bm25))
        return cls.build(records, {f: pidx._texts[f] for f in LEX_FIELDS}, {t: pidx.emb[t] for t in TABLES},
                         {t: pidx.emb_mask[t] for t in TABLES}, config, log)

    def _dense_tables(self) -> list[str]:
        return [s.split(":", 1)[1] for s in self.config.candidates.sources if s.startswith("dense:")]

    def _codes(self, categories) -> np.ndarray:
        """Integer codes of categories (case-insensitive; 0 for none), assigning new codes as needed."""
        out = np.zeros(len(categories), np.int32)
        for i, c in enumerate(categories):
            if c is not None and str(c).strip():
                out[i] = self._cat_codes.setdefault(str(c).lower(), len(self._cat_codes) + 1)
        return out

    def _refresh_category_names(self) -> None:
        """Count live products per (lower-cased) category from scratch; writes then keep the counts."""
        live = self.live[:self.n_rows]
        cats = pd.Series(self.records[S.CATEGORY][:self.n_rows][live], dtype=object).dropna().astype(str)
        cats = cats[cats.str.strip() != ""]
        self._cat_count = cats.str.lower().value_counts().to_dict()
        self._category_names = {}
        for c in pd.unique(cats):
            self._category_names.setdefault(c.lower(), c)

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

    # reads ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.live[:self.n_rows].sum())

    @property
    def category_names(self) -> list[str]:
        return [self._category_names[k] for k in sorted(self._category_names)]

    def has_category(self, category: str) -> bool:
        return category.lower() in self._category_names

    def product(self, product_id: str) -> dict[str, Any] | None:
        with self.lock:
            r = self.row_of.get(str(product_id))
            return None if r is None else self.record(r)

    def record(self, row: int) -> dict[str, Any]:
        d = {c: self.records[c][row] for c in RECORD_COLUMNS}
        d["modalities"] = {m: bool(self.emb_mask[MODALITY_EMBEDDING[m]][row]) for m in MODALITIES}
        return d

    def _allowed(self, category: str | None) -> tuple[np.ndarray | None, np.ndarray | None, float]:
        """(row mask, packed bitmap for faiss, allowed fraction) of a category filter, cached per index version."""
        if not category:
            return None, None, 1.0
        key = category.lower()
        hit = self._bitmaps.get(key)
        if hit is None or hit[0] != self.version:
            mask = (self.cat_code[:self.n_rows] == self._cat_codes.get(key, -1)) & self.live[:self.n_rows]
            bits = np.packbits(mask, bitorder="little")
            frac = float(mask.sum()) / max(1, len(self))
            self._bitmaps[key] = hit = (self.version, bits, frac, mask)  # type: ignore[assignment]
        return hit[3], hit[1], hit[2]  # type: ignore[misc]

    def retrieve(self, query: str, q_emb: np.ndarray, category: str | None = None) -> Retrieved:
        """Hybrid candidates: BM25 per field and ANN per embedding table, merged by RRF."""
        cfg = self.config.candidates
        with self.lock:
            allowed, bits, frac = self._allowed(category)
            lex, qlen, lists, weights, sources = {}, {}, [], [], {}
            for f in LEX_FIELDS:
                terms = self.lexical[f].query_terms(query)
                qlen[f] = max(1, len(terms))
                lex[f] = self.lexical[f].score(terms, allowed)
            for src in cfg.sources:
                kind, name = src.split(":", 1)
                if kind == "bm25":
                    top = lex[name].top(cfg.depth)
                elif kind == "dense":
                    # a few extra, then ties broken by lower row, as the training-time exact search does
                    top, sc = self.ann[name].search(q_emb, cfg.depth + 16, bits, frac)
                    top = top[np.lexsort((top, -sc))][:cfg.depth]
                else:
                    raise FusionrankError(f"unknown candidate source {src!r}; valid kinds: bm25:<field>, dense:<table>")
                lists.append(top)
                weights.append(float(cfg.weights.get(src, 1.0)))
                sources[src] = len(top)
            rows = rrf_merge(lists, cfg.n, cfg.rrf_k, weights)
        return Retrieved(rows, lex, qlen, sources)

    def slate(self, query: str, q_emb: np.ndarray, got: Retrieved) -> tuple[Slates, dict[str, np.ndarray]]:
        """Features of the candidates (one query) and their embedding tables (rows re-indexed 0..N-1)."""
        rows = got.rows
        N = len(rows)
        col = {f: j for j, f in enumerate(SCALAR_FEATURES)}
        x = np.zeros((1, max(N, 1), len(SCALAR_FEATURES)), np.float32)
        with self.lock:
            tables = {t: self.emb[t][rows] for t in TABLES}
            masks = np.stack([self.emb_mask[t][rows] for t in TABLES], 1)
            for f in LEX_FIELDS:
                x[0, :N, col[f"bm25_{f}"]] = got.lex[f].at(rows)
                x[0, :N, col[f"overlap_{f}"]] = got.lex[f].matched(rows) / got.qlen[f]
        q = np.asarray(q_emb, np.float32)
        for t, name in (("title", "cos_title"), ("image_proj", "cos_image"), ("transcript", "cos_transcript")):
            x[0, :N, col[name]] = (tables[t] @ q) * masks[:, TABLES.index(t)]
        valid = np.zeros((1, max(N, 1)), bool)
        valid[0, :N] = True
        mask = np.zeros((1, max(N, 1), len(MODALITIES)), bool)
        mask[0, :N] = masks
        finish_features(x, valid, mask)
        r = np.full((1, max(N, 1)), -1, np.int64)
        r[0, :N] = np.arange(N)
        return Slates(["q"], [query], r, x, mask, q[None, :]), tables

    # writes --------------------------------------------------------------------
    def _grow(self, n: int) -> None:
        if n > self.cap:
            self._reserve(max(n, int(self.cap * 1.25) + 64))

    def _reserve(self, cap: int) -> None:
        """Make every per-row array ``cap`` rows long (new rows empty); the copy reads any array, mmap included."""
        def resized(a: np.ndarray, fill) -> np.ndarray:
            out = np.full((cap,) + a.shape[1:], fill, dtype=a.dtype)
            out[:len(a)] = a
            return out

        for c in RECORD_COLUMNS:
            self.records[c] = resized(self.records[c], None)
        self.cat_code = resized(self.cat_code, 0)
        for f in LEX_FIELDS:
            self.lex_text[f] = resized(self.lex_text[f], "")
        for t in TABLES:
            self.emb[t] = resized(self.emb[t], 0.0)
            self.emb_mask[t] = resized(self.emb_mask[t], False)
        self.live = resized(self.live, False)
        self.cap = cap

    def _retire(self, row: int) -> None:
        for f in LEX_FIELDS:
            self.lexical[f].delete(row, self.lex_text[f][row])
        for t, a in self.ann.items():
            if self.emb_mask[t][row]:
                a.remove(np.array([row]))
        self.live[row] = False
        self._count_category(self.records[S.CATEGORY][row], -1)

    def upsert(self, record: dict[str, Any], lex_texts: dict[str, str], vectors: dict[str, np.ndarray | None],
               _log: bool = True) -> int:
        """Add or replace one product; returns its new row. Visible to the next search."""
        pid = str(record[S.PRODUCT_ID])
        for t in TABLES:
            v = vectors.get(t)
            if v is not None and np.asarray(v).shape != (self.dims[t],):
                raise FusionrankError(f"vector {t!r} of product {pid!r} has shape {np.asarray(v).shape}, expected ({self.dims[t]},)")
        if vectors.get("title") is None:
            raise FusionrankError(f"product {pid!r} has no title embedding")
        with self.lock:
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
            for t in TABLES:
                v = vectors.get(t)
                self.emb_mask[t][row] = v is not None
                self.emb[t][row] = 0 if v is None else np.asarray(v, np.float32)
            self.live[row] = True
            self.n_rows = row + 1
            for f in LEX_FIELDS:
                self.lex_text[f][row] = lex_texts.get(f) or ""
                self.lexical[f].add(row, self.lex_text[f][row])
            for t, a in self.ann.items():
                if self.emb_mask[t][row]:
                    a.add(self.emb[t][row][None, :], np.array([row]))
            self.row_of[pid] = row
            self.version += 1
            self._count_category(cat, +1)
            if _log:
                self._append_log({"op": "upsert", "record": {c: record.get(c) for c in RECORD_COLUMNS}, "lex": lex_texts,
                                  "vectors": {t: (None if vectors.get(t) is None else _b64(vectors[t])) for t in TABLES}})
        return row

    def delete(self, product_id: str, _log: bool = True) -> bool:
        """Remove a product; False if it is not in the index."""
        pid = str(product_id)
        with self.lock:
            row = self.row_of.pop(pid, None)
            if row is None:
                return False
            self._retire(row)
            self.version += 1
            if _log:
                self._append_log({"op": "delete", "product_id": pid})
        return True

    def _append_log(self, entry: dict) -> None:
        if self._log_path is None:
            return
        with open(self._log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def compacted(self, log=print) -> "SearchIndex":
        """A new index holding only the live products (rows renumbered, IVF centroids re-learned).

        Removed and replaced products keep their rows until this runs; it costs a full build
        (8 s at 44k, ~3 min at 1M on two cores), so it is an offline step: ``fusionrank compact-index``.
        """
        with self.lock:
            n = self.n_rows
            live = self.live[:n]
            records = {c: self.records[c][:n][live] for c in RECORD_COLUMNS}
            texts = {f: self.lex_text[f][:n][live] for f in LEX_FIELDS}
            emb = {t: self.emb[t][:n][live] for t in TABLES}
            mask = {t: self.emb_mask[t][:n][live] for t in TABLES}
        return SearchIndex.build(records, texts, emb, mask, self.config, log=log)

    # persistence ---------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write a snapshot (atomically: a new folder renamed over the old one) and start an empty change log."""
        d = Path(directory)
        with self.lock:
            tmp = d.with_name(d.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            n = self.n_rows
            meta = pd.DataFrame({c: pd.Series(self.records[c][:n], dtype=object) for c in RECORD_COLUMNS})
            for f in LEX_FIELDS:
                meta[f"lex_{f}"] = pd.Series(self.lex_text[f][:n], dtype=object)
            meta["live"] = self.live[:n]
            for c in meta.columns:
                if c != "live":
                    meta[c] = meta[c].astype("string")
            meta.to_parquet(tmp / "records.parquet", index=False)
            for t in TABLES:
                np.save(tmp / f"emb.{t}.npy", self.emb[t][:n])
                np.save(tmp / f"mask.{t}.npy", self.emb_mask[t][:n])
            for f, lx in self.lexical.items():
                lx.save(tmp / f"lex.{f}")
            for t, a in self.ann.items():
                a.save(tmp / f"ann.{t}.faiss")
            (tmp / "index.json").write_text(json.dumps({"format": FORMAT_VERSION, "config": self.config.as_dict(),
                                                        "dims": self.dims, "rows": n, "products": len(self)}, indent=2))
            (tmp / "changes.jsonl").write_text("")
            old = d.with_name(d.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if d.exists():
                d.rename(old)
            tmp.rename(d)
            shutil.rmtree(old, ignore_errors=True)
            self._log_path = d / "changes.jsonl"
        return d

    @classmethod
    def load(cls, directory: str | Path, log=print) -> "SearchIndex":
        """Load a snapshot and replay its change log."""
        d = Path(directory)
        if not (d / "index.json").exists():
            raise FusionrankError(f"{d}: not a search index (no index.json); build one with `fusionrank serve` or SearchIndex.save")
        t0 = time.perf_counter()
        meta = json.loads((d / "index.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise FusionrankError(f"{d}: index format {meta.get('format')} is not supported (expected {FORMAT_VERSION}); rebuild it")
        config = ServingConfig.from_dict(meta["config"])
        self = cls(config, meta["dims"])
        rec = pd.read_parquet(d / "records.parquet")
        n = len(rec)
        for c in RECORD_COLUMNS:
            self.records[c] = rec[c].astype(object).where(rec[c].notna(), None).to_numpy(dtype=object)
        for f in LEX_FIELDS:
            self.lex_text[f] = rec[f"lex_{f}"].fillna("").astype(object).to_numpy(dtype=object)
        self.live = rec["live"].to_numpy(bool).copy()
        self.cat_code = self._codes(self.records[S.CATEGORY])
        for t in TABLES:  # memory-mapped: _reserve below copies them once, straight into their final size
            self.emb[t] = np.load(d / f"emb.{t}.npy", mmap_mode="r")
            self.emb_mask[t] = np.load(d / f"mask.{t}.npy")
        # room for new products: growing a 1M-row table later would copy all of it during a write
        self.cap = n
        self._reserve(n + max(1024, n // 20))
        for f in LEX_FIELDS:
            self.lexical[f] = LexicalField.load(d / f"lex.{f}")
        a = config.ann
        for t in self._dense_tables():
            self.ann[t] = AnnIndex.load(d / f"ann.{t}.faiss", a.get("nprobe", 64), a.get("codec", "sq8"))
        self.n_rows = n
        self.row_of = {str(p): i for i, p in enumerate(self.records[S.PRODUCT_ID][:n]) if self.live[i]}
        self._refresh_category_names()
        replayed = 0
        log_path = d / "changes.jsonl"
        if log_path.exists():
            for line in log_path.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:  # a write cut short by a crash: the last line only
                    break
                if e["op"] == "upsert":
                    self.upsert(e["record"], e["lex"], {t: (None if v is None else _unb64(v)) for t, v in e["vectors"].items()},
                                _log=False)
                elif e["op"] == "delete":
                    self.delete(e["product_id"], _log=False)
                replayed += 1
        self._log_path = log_path
        log(f"serving index: {len(self):,} products loaded from {d} in {time.perf_counter() - t0:.1f} s"
            + (f" ({replayed} logged change(s) replayed)" if replayed else ""))
        return self

    @property
    def directory(self) -> Path | None:
        """The folder this index was saved to or loaded from (None if neither)."""
        return None if self._log_path is None else self._log_path.parent

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held per part (arrays and indexes; Python string objects of the records not counted)."""
        n = self.cap
        return {"embeddings": int(sum(self.emb[t].nbytes + self.emb_mask[t].nbytes for t in TABLES)),
                "ann": int(sum(a.memory_bytes() for a in self.ann.values())),
                "bm25": int(sum(lx.memory_bytes() for lx in self.lexical.values())),
                "rows": int(self.live.nbytes + 8 * n * (len(RECORD_COLUMNS) + 1 + len(LEX_FIELDS)))}
