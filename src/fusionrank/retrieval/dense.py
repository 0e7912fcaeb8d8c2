"""Vector nearest-neighbour indexes over L2-normalised embeddings (inner product = cosine).

``exact`` is a faiss ``IndexFlatIP`` (used for evaluation: no approximation);
``hnsw`` is faiss HNSW (M=32, efSearch configurable) for serving large catalogues.
Rows without a vector (mask False) are never returned.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FusionrankError


class VectorIndex:
    def __init__(self, kind: str = "exact", m: int = 32, ef_search: int = 128, ef_construction: int = 80):
        if kind not in ("exact", "hnsw"):
            raise FusionrankError(f"unknown vector index kind {kind!r}; valid: exact, hnsw")
        self.kind, self.m, self.ef_search, self.ef_construction = kind, m, ef_search, ef_construction
        self.index = None
        self.rows_: np.ndarray | None = None  # index position -> catalogue row
        self._matrix: np.ndarray | None = None
        self.dim = 0

    def build(self, vectors: np.ndarray, mask: np.ndarray | None = None) -> "VectorIndex":
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        rows = np.flatnonzero(mask) if mask is not None else np.arange(len(vectors))
        self.dim = vectors.shape[1]
        self._matrix = np.ascontiguousarray(vectors[rows]) if self.kind == "exact" else None
        if self.kind == "exact":
            idx = faiss.IndexFlatIP(self.dim)
        else:
            idx = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
            idx.hnsw.efConstruction = self.ef_construction
            idx.hnsw.efSearch = self.ef_search
        if len(rows):
            idx.add(vectors[rows])
        self.index, self.rows_ = idx, rows.astype(np.int64)
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` catalogue rows per query: ``(rows[nq, k], scores[nq, k])``; -1 pads."""
        if self.index is None:
            raise FusionrankError("vector index is not built")
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, len(self.rows_))
        if k == 0:
            return np.full((len(q), 0), -1, np.int64), np.zeros((len(q), 0), np.float32)
        if self._matrix is not None:
            # exact search as one BLAS product + partial sort: much faster than faiss's
            # heap selection when k is in the hundreds
            from .hybrid import topk_rows

            full = q @ self._matrix.T
            pos = topk_rows(full, k, np.ones_like(full, dtype=bool))
            scores = np.take_along_axis(full, np.clip(pos, 0, None), 1)
        else:
            scores, pos = self.index.search(q, k)
        rows = np.where(pos >= 0, self.rows_[np.clip(pos, 0, None)], -1)
        return rows, scores

    def save(self, path: str | Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))
        np.save(str(path) + ".rows.npy", self.rows_)

    @classmethod
    def load(cls, path: str | Path, kind: str = "exact") -> "VectorIndex":
        import faiss

        v = cls(kind)
        v.index = faiss.read_index(str(path))
        v.rows_ = np.load(str(path) + ".rows.npy")
        v.dim = v.index.d
        if kind == "exact":
            v._matrix = v.index.reconstruct_n(0, v.index.ntotal)
        return v
