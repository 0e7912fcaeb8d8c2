"""Nearest-neighbour search over one embedding table of the catalogue: exact, or faiss IVF.

Both kinds answer :meth:`search` the same way (rows ranked by inner product, ties to
the lower row) and follow the catalogue's writes, so the candidate generator does not
know which one it holds:

- :class:`ExactVectors` scores the catalogue's own table with one matrix product per
  batch of queries (what evaluation uses by default: no approximation);
- :class:`AnnIndex` is a faiss inverted-file index for large catalogues.

faiss's inverted-file indexes take ``add_with_ids`` and ``remove_ids``, so a
product can be added, replaced or removed without retraining or rebuilding; the
coarse quantiser (``nlist`` centroids, k-means on a sample) is learned once at
build time. Vectors are L2-normalised, so inner product = cosine.

``codec="sq8"`` (default) stores each vector as 8-bit scalars (4x smaller than
``flat``); the ranker's cosine features are computed from the catalogue's embedding
tables (float32, or float16 with ``table_dtype``), so quantisation only affects which
products become candidates.
A filter (e.g. a category) is applied inside the search with an
:class:`faiss.IDSelectorBitmap`; ``nprobe`` grows with the inverse of the allowed
fraction so that filtered searches still reach enough candidates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FusionrankError

CODECS = {"flat": "Flat", "sq8": "SQ8"}  # IVF codes; "exact" is :class:`ExactVectors`
VECTOR_CODECS = ("exact", *CODECS)


@dataclass
class RowFilter:
    """Rows a search may return (e.g. one category): a bool mask over rows, its packed bits for faiss, its share."""

    mask: np.ndarray
    bits: np.ndarray
    fraction: float


def ranked(rows: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best ``rows`` by score, ties to the lower row."""
    return rows[np.lexsort((rows, -scores))][:k]


class ExactVectors:
    """Exact inner-product search over ``tables.emb[table]`` (rows with a vector that are live; float16 read as float32)."""

    def __init__(self, tables, table: str):
        self.tables, self.table = tables, table

    def search(self, q: np.ndarray, k: int, allowed: RowFilter | None = None) -> list[np.ndarray]:
        """Top ``k`` rows for each query ``q [B, D]`` (fewer where fewer rows qualify)."""
        from .retrieve import topk_rows

        t = self.tables
        n = t.n_rows
        ok = t.emb_mask[self.table][:n] & t.live[:n]
        if allowed is not None:
            ok = ok & allowed.mask[:n]
        q = np.ascontiguousarray(np.atleast_2d(q), np.float32)
        if not ok.any() or k <= 0:
            return [np.zeros(0, np.int64) for _ in range(len(q))]
        s = t.emb[self.table].inner(q, n)
        top = topk_rows(s, min(k, int(ok.sum())), np.broadcast_to(ok, s.shape))
        return [r[r >= 0] for r in top]

    def add(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        """Nothing to do: the search reads the catalogue's table itself."""

    def remove(self, rows: np.ndarray) -> int:
        return len(rows)

    def save(self, path: Path) -> None:
        """Nothing to save: the table is saved with the catalogue."""

    def memory_bytes(self) -> int:
        return 0


def auto_nlist(n: int) -> int:
    """About ``4 sqrt(n)`` lists, at least 39 training points per list, at least 1."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))


class AnnIndex:
    def __init__(self, dim: int, nlist: int | None = None, nprobe: int = 64, codec: str = "sq8"):
        if codec not in CODECS:
            raise FusionrankError(f"unknown ANN codec {codec!r}; valid: {', '.join(CODECS)}")
        self.dim, self.nlist, self.nprobe, self.codec = dim, nlist, nprobe, codec
        self.index = None

    def build(self, vectors: np.ndarray, rows: np.ndarray, train_sample: int = 100_000, seed: int = 0) -> "AnnIndex":
        import faiss

        vectors = np.ascontiguousarray(vectors, np.float32)
        nlist = self.nlist or auto_nlist(len(vectors))
        self.nlist = nlist
        idx = faiss.index_factory(self.dim, f"IVF{nlist},{CODECS[self.codec]}", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors if len(vectors) <= train_sample else vectors[rng.choice(len(vectors), train_sample, replace=False)]
        if len(sample):
            idx.train(sample)
            idx.add_with_ids(vectors, np.asarray(rows, np.int64))
        self.index = idx
        return self

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def add(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        if not self.index.is_trained:  # built from an empty table: train on what arrives
            self.index.train(np.ascontiguousarray(vectors, np.float32))
        self.index.add_with_ids(np.ascontiguousarray(np.atleast_2d(vectors), np.float32), np.asarray(rows, np.int64))

    def remove(self, rows: np.ndarray) -> int:
        import faiss

        return int(self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(rows, np.int64))))

    def search(self, q: np.ndarray, k: int, allowed: RowFilter | None = None) -> list[np.ndarray]:
        """Top ``k`` rows for each query ``q [B, D]``, ties to the lower row (as :class:`ExactVectors`)."""
        import faiss

        q = np.ascontiguousarray(np.atleast_2d(q), np.float32)
        if self.index is None or self.ntotal == 0 or not self.index.is_trained:
            return [np.zeros(0, np.int64) for _ in range(len(q))]
        frac = 1.0 if allowed is None else allowed.fraction
        nprobe = min(self.nlist, max(self.nprobe, int(math.ceil(self.nprobe / max(frac, 1e-6)))))
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        if allowed is not None:
            params.sel = faiss.IDSelectorBitmap(len(allowed.bits) * 8, faiss.swig_ptr(allowed.bits))
        # a few extra, so that ties at the cut go to the lower row
        D, I = self.index.search(q, k + 16, params=params)
        out = []
        for d, i in zip(D, I):
            ok = i >= 0
            out.append(ranked(i[ok].astype(np.int64), d[ok], k))
        return out

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, nprobe: int = 64, codec: str = "sq8") -> "AnnIndex":
        import faiss

        idx = faiss.read_index(str(path))
        self = cls(idx.d, faiss.extract_index_ivf(idx).nlist, nprobe, codec)
        self.index = idx
        return self

    def memory_bytes(self) -> int:
        """Bytes held by the index's codes and ids (faiss's own estimate of its payload)."""
        if self.index is None:
            return 0
        import faiss

        ivf = faiss.extract_index_ivf(self.index)
        return int(ivf.ntotal * (ivf.code_size + 8) + ivf.nlist * self.dim * 4)
