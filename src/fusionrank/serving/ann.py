"""Updatable approximate nearest-neighbour search over one embedding table (faiss IVF).

faiss's inverted-file indexes take ``add_with_ids`` and ``remove_ids``, so a
product can be added, replaced or removed without retraining or rebuilding; the
coarse quantiser (``nlist`` centroids, k-means on a sample) is learned once at
build time. Vectors are L2-normalised, so inner product = cosine.

``codec="sq8"`` (default) stores each vector as 8-bit scalars (4x smaller than
``flat``); the ranker's cosine features are computed from the exact float32
embeddings, so quantisation only affects which products become candidates.
A filter (e.g. a category) is applied inside the search with an
:class:`faiss.IDSelectorBitmap`; ``nprobe`` grows with the inverse of the allowed
fraction so that filtered searches still reach enough candidates.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import FusionrankError

CODECS = {"flat": "Flat", "sq8": "SQ8"}


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

    def search(self, q: np.ndarray, k: int, allowed_bits: np.ndarray | None = None, allowed_fraction: float = 1.0
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows for one query ``q [D]``: ``(rows, scores)``, without padding."""
        import faiss

        if self.index is None or self.ntotal == 0 or not self.index.is_trained:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        nprobe = min(self.nlist, max(self.nprobe, int(math.ceil(self.nprobe / max(allowed_fraction, 1e-6)))))
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        if allowed_bits is not None:
            sel = faiss.IDSelectorBitmap(len(allowed_bits) * 8, faiss.swig_ptr(allowed_bits))
            params.sel = sel
        D, I = self.index.search(np.ascontiguousarray(q.reshape(1, -1), np.float32), k, params=params)
        ok = I[0] >= 0
        return I[0][ok].astype(np.int64), D[0][ok]

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
