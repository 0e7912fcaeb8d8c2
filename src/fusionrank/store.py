"""Persistent, columnar embedding store keyed by product id and content hash.

One Parquet file per *feature* (e.g. ``title.minilm``, ``image.efficientnet_lite0``,
``audio.whisper_tiny_en``) under the store root, with columns::

    product_id  str
    hash        str      hash of the input content (text, or file bytes) + encoder signature
    vector      fixed_size_list<float32>[dim]   (vector features)
    text        str                              (text features, e.g. transcripts)

A product that lacks a modality, or whose input failed to encode, has no row:
``matrix(feature, ids)`` returns zeros plus an explicit boolean ``mask``, so a
missing modality is never passed off as data. Writes are atomic (temp file + rename).

:class:`ContentStore` holds the values already encoded, keyed by content hash only (no
product id), so that every store under one ``FUSIONRANK_HOME`` can reuse them: one
SQLite database per encoder under ``<home>/content/``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema as S
from .errors import FusionrankError

HASH = "hash"
VECTOR = "vector"
TEXT_VALUE = "text"


def text_hash(text: str, signature: str) -> str:
    return hashlib.sha1(f"{signature}\x00{text}".encode("utf-8", "surrogatepass")).hexdigest()


def text_hashes(texts: Iterable[str], signature: str) -> list[str]:
    """``[text_hash(t, signature) for t in texts]``, a third faster (for checking 44k titles)."""
    prefix, sha1 = f"{signature}\x00".encode(), hashlib.sha1
    return [sha1(prefix + t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts]


def file_hash(path: str, signature: str) -> str | None:
    """Hash of a file's bytes plus the encoder signature; ``None`` if unreadable."""
    try:
        h = hashlib.sha1(signature.encode())
        with open(path, "rb") as f:
            h.update(f.read())
        return h.hexdigest()
    except OSError:
        return None


@dataclass
class Feature:
    """A loaded feature table: ids, hashes and either a matrix or a list of texts."""

    name: str
    ids: np.ndarray
    hashes: np.ndarray
    vectors: np.ndarray | None = None
    texts: list[str] | None = None
    meta: dict | None = None

    def __len__(self) -> int:
        return len(self.ids)


class EmbeddingStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Feature]] = {}

    def path(self, feature: str) -> Path:
        if not feature or "/" in feature or feature.startswith("."):
            raise FusionrankError(f"invalid feature name {feature!r}")
        return self.root / f"{feature}.parquet"

    def features(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.parquet"))

    def exists(self, feature: str) -> bool:
        return self.path(feature).exists()

    def load(self, feature: str) -> Feature:
        p = self.path(feature)
        if not p.exists():
            raise FusionrankError(f"feature {feature!r} is not in the store at {self.root}; encoded features: {', '.join(self.features()) or '(none)'}")
        mtime = p.stat().st_mtime
        hit = self._cache.get(feature)
        if hit and hit[0] == mtime:
            return hit[1]
        t = pq.read_table(p)
        md = t.schema.metadata or {}
        meta = json.loads(md.get(b"fusionrank", b"{}"))
        ids = np.asarray(t.column(S.PRODUCT_ID).to_pylist(), dtype=object)
        hashes = np.asarray(t.column(HASH).to_pylist(), dtype=object)
        if VECTOR in t.column_names:
            col = t.column(VECTOR).combine_chunks()
            dim = col.type.list_size
            vecs = col.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False) if len(col) else np.zeros((0, dim), np.float32)
            f = Feature(feature, ids, hashes, vectors=vecs, meta=meta)
        else:
            f = Feature(feature, ids, hashes, texts=t.column(TEXT_VALUE).to_pylist(), meta=meta)
        self._cache[feature] = (mtime, f)
        return f

    def hashes(self, feature: str) -> dict[str, str]:
        if not self.exists(feature):
            return {}
        f = self.load(feature)
        return dict(zip(f.ids, f.hashes))

    def write(self, feature: str, ids: Sequence[str], hashes: Sequence[str], vectors: np.ndarray | None = None,
              texts: Sequence[str] | None = None, meta: dict | None = None) -> None:
        """Replace a feature table atomically."""
        if (vectors is None) == (texts is None):
            raise FusionrankError("write needs exactly one of vectors or texts")
        cols = {S.PRODUCT_ID: pa.array(list(ids), pa.string()), HASH: pa.array(list(hashes), pa.string())}
        if vectors is not None:
            v = np.ascontiguousarray(vectors, dtype=np.float32)
            if v.ndim != 2 or v.shape[0] != len(ids):
                raise FusionrankError(f"vectors must be (n, dim) with n = {len(ids)}; got {v.shape}")
            cols[VECTOR] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
        else:
            cols[TEXT_VALUE] = pa.array(list(texts), pa.string())
        table = pa.table(cols).replace_schema_metadata({"fusionrank": json.dumps(meta or {})})
        p = self.path(feature)
        tmp = p.with_suffix(f".parquet.tmp{os.getpid()}")
        with self._lock:
            pq.write_table(table, tmp)
            tmp.replace(p)
            self._cache.pop(feature, None)

    def upsert(self, feature: str, ids: Sequence[str], hashes: Sequence[str], vectors: np.ndarray | None = None,
               texts: Sequence[str] | None = None, keep: Iterable[str] | None = None, meta: dict | None = None) -> None:
        """Merge new rows into a feature; rows not in ``keep`` (if given) are dropped."""
        if self.exists(feature):
            old = self.load(feature)
            new_ids = set(ids)
            keep_set = set(keep) if keep is not None else None
            sel = np.array([(i not in new_ids) and (keep_set is None or i in keep_set) for i in old.ids], dtype=bool)
            ids = list(old.ids[sel]) + list(ids)
            hashes = list(old.hashes[sel]) + list(hashes)
            if vectors is not None:
                new_dim = np.asarray(vectors).shape[1] if len(vectors) else None
                if new_dim is not None and (old.vectors is None or old.vectors.shape[1] != new_dim):
                    raise FusionrankError(f"feature {feature!r}: dimension changed; delete {self.path(feature)} to rebuild")
                vectors = np.concatenate([old.vectors[sel], np.asarray(vectors, np.float32).reshape(-1, old.vectors.shape[1])])
            else:
                texts = [t for t, s in zip(old.texts or [], sel) if s] + list(texts or [])
        self.write(feature, ids, hashes, vectors=vectors, texts=texts, meta=meta)

    def matrix(self, feature: str, ids: Sequence[str], dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Vectors aligned to ``ids`` and a boolean mask of which ids have one."""
        if not self.exists(feature):
            if dim is None:
                raise FusionrankError(f"feature {feature!r} is not in the store at {self.root}")
            return np.zeros((len(ids), dim), np.float32), np.zeros(len(ids), bool)
        f = self.load(feature)
        pos = pd.Index(f.ids).get_indexer(pd.Index(list(ids)))
        mask = pos >= 0
        out = np.zeros((len(ids), f.vectors.shape[1]), np.float32)
        out[mask] = f.vectors[pos[mask]]
        return out, mask

    def text_map(self, feature: str) -> dict[str, str]:
        if not self.exists(feature):
            return {}
        f = self.load(feature)
        return dict(zip(f.ids, f.texts))


class ContentStore:
    """Encoded values keyed by content hash, shared by the embedding stores of every workspace.

    ``<root>/<encoder>.sqlite`` holds one table ``items(hash PRIMARY KEY, dim, vector, text)``:
    float32 bytes for vector encoders, the text for text-output encoders (speech-to-text).
    The key is the store's own content hash, which already includes the encoder signature,
    so the outputs of several settings of one encoder live side by side and a changed
    setting never reuses a stale value. It is keyed by encoder, not feature, because one
    text encoder serves several fields (``title``, ``title_sparse``, ``transcript``).

    Only encoders whose output depends on nothing but their input and their settings
    belong here; trained ones (the image->text projection, PCA) stay per store. Every
    write is one SQLite transaction: a crash mid-write rolls back to the last commit and
    concurrent encodes wait for each other's locks instead of tearing the table.
    """

    CHUNK = 900  # bound parameters per query (well under SQLite's limit)

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, encoder: str) -> Path:
        if not encoder or "/" in encoder or encoder.startswith("."):
            raise FusionrankError(f"invalid encoder name {encoder!r}")
        return self.root / f"{encoder}.sqlite"

    def _connect(self, encoder: str, create: bool = False) -> sqlite3.Connection | None:
        p = self.path(encoder)
        if not p.exists():
            if not create:
                return None
            self.root.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(p, timeout=120)
        if create:
            try:  # readers keep reading while a writer commits; a local cache dir supports it
                con.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError:
                pass
            con.execute("CREATE TABLE IF NOT EXISTS items (hash TEXT PRIMARY KEY, dim INTEGER, vector BLOB, text TEXT)")
            con.commit()
        return con

    def _select(self, encoder: str, columns: str, hashes: Iterable[str]) -> Iterable[tuple]:
        con = self._connect(encoder)
        if con is None:
            return
        keys = list(dict.fromkeys(h for h in hashes if h is not None))
        with closing(con):
            for i in range(0, len(keys), self.CHUNK):
                part = keys[i:i + self.CHUNK]
                yield from con.execute(f"SELECT {columns} FROM items WHERE hash IN ({','.join('?' * len(part))})", part)

    def lookup(self, encoder: str, hashes: Iterable[str]) -> dict[str, np.ndarray | str]:
        """The stored value of each of ``hashes`` that is here (vectors as float32 arrays)."""
        out: dict[str, np.ndarray | str] = {}
        for h, dim, vec, text in self._select(encoder, "hash, dim, vector, text", hashes):
            out[h] = np.frombuffer(vec, np.float32, count=dim) if vec is not None else text
        return out

    def missing(self, encoder: str, hashes: Iterable[str]) -> set[str]:
        """Those of ``hashes`` that are not stored."""
        want = {h for h in hashes if h is not None}
        return want - {r[0] for r in self._select(encoder, "hash", want)}

    def add(self, encoder: str, hashes: Sequence[str], values: Sequence[np.ndarray | str]) -> None:
        """Store values (vectors or texts) under their hashes; hashes already present are kept as they are."""
        if not len(hashes):
            return

        def row(h: str, v: np.ndarray | str) -> tuple:
            if isinstance(v, str):
                return h, None, None, v
            a = np.ascontiguousarray(v, dtype=np.float32).reshape(-1)
            return h, int(a.size), a.tobytes(), None

        con = self._connect(encoder, create=True)
        with closing(con), con:  # one transaction: all rows or none, whatever stops it half-way
            con.executemany("INSERT OR IGNORE INTO items (hash, dim, vector, text) VALUES (?, ?, ?, ?)",
                            (row(h, v) for h, v in zip(hashes, values)))

    def count(self, encoder: str) -> int:
        con = self._connect(encoder)
        if con is None:
            return 0
        with closing(con):
            return con.execute("SELECT COUNT(*) FROM items").fetchone()[0]
