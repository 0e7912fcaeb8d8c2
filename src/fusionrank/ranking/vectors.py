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
    return ranked_scored(rows, scores, k)[0]


def ranked_scored(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, scores)`` of the ``k`` best ``rows`` by score, ties to the lower row (the tie rule of every source).

    Over many rows the ``k``-th best score is found by ``argpartition`` and only the rows above it, and the lowest
    of those at it, are sorted."""
    if len(rows) > 4 * k > 0:
        kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
        if not np.isnan(kth):
            gt, eq = np.flatnonzero(scores > kth), np.flatnonzero(scores == kth)
            if len(gt) + len(eq) > k:  # ties at the cut: the lower rows
                eq = eq[np.argsort(rows[eq], kind="stable")[:k - len(gt)]]
            sel = np.concatenate([gt, eq])
            rows, scores = rows[sel], scores[sel]
    o = np.lexsort((rows, -scores))[:k]
    return rows[o], scores[o]


class ExactVectors:
    """Exact inner-product search over ``tables.emb[table]`` (rows with a vector that are live; float16 read as float32)."""

    def __init__(self, tables, table: str):
        self.tables, self.table = tables, table

    def search(self, q: np.ndarray, k: int, allowed: RowFilter | None = None) -> list[np.ndarray]:
        """Top ``k`` rows for each query ``q [B, D]`` (fewer where fewer rows qualify)."""
        return [r for r, _ in self.search_scored(q, k, allowed)]

    def search_scored(self, q: np.ndarray, k: int, allowed: RowFilter | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(rows, inner products)`` of the top ``k`` rows for each query ``q [B, D]``."""
        from .retrieve import topk_rows

        t = self.tables
        n = t.n_rows
        ok = t.emb_mask[self.table][:n] & t.live[:n]
        if allowed is not None:
            ok = ok & allowed.mask[:n]
        q = np.ascontiguousarray(np.atleast_2d(q), np.float32)
        if not ok.any() or k <= 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(len(q))]
        s = t.emb[self.table].inner(q, n)
        top = topk_rows(s, min(k, int(ok.sum())), np.broadcast_to(ok, s.shape))
        return [(r[r >= 0], sb[r[r >= 0]]) for r, sb in zip(top, s)]

    def add(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        """Nothing to do: the search reads the catalogue's table itself."""

    def remove(self, rows: np.ndarray) -> int:
        return len(rows)

    def save(self, path: Path) -> None:
        """Nothing to save: the table is saved with the catalogue."""

    def memory_bytes(self) -> int:
        return 0


def _with_ties(index, q: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:
    """faiss's top ``k`` and every vector that scores as the ``k``-th does (so that ties at the cut can go to the lower
    row: faiss keeps an arbitrary few of them). A few extra first; more while the last one fetched still ties.

    faiss keeps the first tied vectors it meets, list by list; rows in different lists can tie (e.g. alike 8-bit
    codes), and a catalogue and its shards then kept different ones (1 query in 30 at 44k products, before this).
    """
    kk = k + 16
    while True:
        D, I = index.search(q, kk, params=params)
        filled = I[:, -1] >= 0
        if kk >= index.ntotal or not (filled & (D[:, -1] >= D[:, min(k, kk) - 1])).any():
            return D, I
        kk = min(2 * kk, int(index.ntotal))


def auto_nlist(n: int) -> int:
    """About ``4 sqrt(n)`` lists, at least 39 training points per list, at least 1."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))


class AnnIndex:
    """A faiss IVF index over rows of one table.

    Loaded with ``mmap=True`` (every worker process of ``fusionrank serve --workers``), the saved
    inverted lists are memory-mapped read-only (faiss ``IO_FLAG_MMAP``), so the processes share
    their pages. Such a base cannot take writes: vectors added later go to a private *delta*
    index with the same trained coarse quantiser and scalar quantiser (so a vector gets the codes
    it would get in the base), removed rows are marked in a bitmap that every search excludes,
    and a search merges the base's and the delta's results.
    """

    def __init__(self, dim: int, nlist: int | None = None, nprobe: int = 64, codec: str = "sq8"):
        if codec not in CODECS:
            raise FusionrankError(f"unknown ANN codec {codec!r}; valid: {', '.join(CODECS)}")
        self.dim, self.nlist, self.nprobe, self.codec = dim, nlist, nprobe, codec
        self.index = None
        self.read_only = False  # the base is a read-only memory map: writes go to delta / dead
        self.delta = None
        self.dead = np.zeros(0, np.uint8)  # packed bits (little) of removed rows, with a read-only base
        self.n_dead = 0  # removed rows of the read-only base (the delta removes its own)

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
        if self.index is None:
            return 0
        return int(self.index.ntotal) + (0 if self.delta is None else int(self.delta.ntotal)) - self.n_dead

    def like(self) -> "AnnIndex":
        """An empty index trained as this one is (same centroids, scalar-quantiser ranges, ``nprobe``): a vector
        added to it gets the codes and the scores it gets here. The shards of a split catalogue hold such copies."""
        out = AnnIndex(self.dim, self.nlist, self.nprobe, self.codec)
        out.index = self._empty_like_base()
        return out

    def part(self, rows: np.ndarray) -> "AnnIndex":
        """An index trained as this one holding only the entries of ``rows`` (live, with a vector here), renumbered:
        ``rows[j]`` becomes row ``j``. The entries' codes are copied, not encoded again, so a part scores each of its
        vectors exactly as the whole does, whatever the vectors' storage (a float16 table rounds them; the codes
        were made from the float32 vectors as given). What :func:`~fusionrank.serving.shards.split` builds shards with.
        """
        import faiss

        rows = np.asarray(rows, np.int64)
        out = self.like()
        if self.index is None or not self.index.is_trained or not len(rows):
            return out
        top = int(rows.max()) + 1
        new = np.full(top, -1, np.int64)
        new[rows] = np.arange(len(rows))
        dead = np.unpackbits(self.dead, bitorder="little")[:top] if self.n_dead else None
        dst = faiss.extract_index_ivf(out.index)
        for index in (self.index, self.delta):
            if index is None or not index.ntotal:
                continue
            src = faiss.extract_index_ivf(index)
            lists, size = src.invlists, src.invlists.code_size
            for li in range(src.nlist):
                n = lists.list_size(li)
                if not n:
                    continue
                ids = faiss.rev_swig_ptr(lists.get_ids(li), n).copy()
                codes = faiss.rev_swig_ptr(lists.get_codes(li), n * size).copy().reshape(n, size)
                ok = ids < top
                ok[ok] = new[ids[ok]] >= 0
                if dead is not None and index is self.index:
                    ok[ok] = dead[ids[ok]] == 0
                if ok.any():
                    keep_ids = np.ascontiguousarray(new[ids[ok]])
                    keep_codes = np.ascontiguousarray(codes[ok])
                    dst.invlists.add_entries(li, len(keep_ids), faiss.swig_ptr(keep_ids), faiss.swig_ptr(keep_codes))
                    dst.ntotal += len(keep_ids)
        out.index.ntotal = dst.ntotal
        return out

    def _empty_like_base(self):
        """An empty IVF index trained as the base is: the same centroids and scalar-quantiser ranges."""
        import faiss

        base = faiss.downcast_index(faiss.extract_index_ivf(self.index))
        out = faiss.index_factory(self.dim, f"IVF{base.nlist},{CODECS[self.codec]}", faiss.METRIC_INNER_PRODUCT)
        if not base.is_trained or base.quantizer.ntotal < base.nlist:  # built from a table with no vectors: it trains
            return out  # on the first vectors added, as the base does
        ivf = faiss.downcast_index(faiss.extract_index_ivf(out))
        ivf.quantizer.add(base.quantizer.reconstruct_n(0, base.nlist))
        if hasattr(base, "sq"):
            ivf.sq.trained = base.sq.trained
        ivf.is_trained = True
        return out

    def add(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), np.float32)
        rows = np.asarray(rows, np.int64)
        if self.read_only:
            if self.delta is None:
                self.delta = self._empty_like_base()
            self.delta.add_with_ids(vectors, rows)
            return
        if not self.index.is_trained:  # built from an empty table: train on what arrives
            self.index.train(vectors)
        self.index.add_with_ids(vectors, rows)

    def remove(self, rows: np.ndarray) -> int:
        import faiss

        rows = np.asarray(rows, np.int64)
        if self.read_only:
            need = int(rows.max()) // 8 + 1 if len(rows) else 0
            if need > len(self.dead):
                self.dead = np.concatenate([self.dead, np.zeros(max(need - len(self.dead), len(self.dead) // 4 + 64), np.uint8)])
            newly = 0
            for r in rows:
                if not self.dead[r >> 3] & (1 << (r & 7)):
                    self.dead[r >> 3] |= np.uint8(1 << (r & 7))
                    newly += 1
            gone = int(self.delta.remove_ids(faiss.IDSelectorBatch(rows))) if self.delta is not None else 0
            self.n_dead += newly - gone  # rows of the base that searches must now skip
            return newly
        return int(self.index.remove_ids(faiss.IDSelectorBatch(rows)))

    def _selector(self, allowed: RowFilter | None):
        """The faiss selector of a search and the objects it points into (kept alive by the caller)."""
        import faiss

        keep = []
        sel = None
        if allowed is not None:
            sel = faiss.IDSelectorBitmap(len(allowed.bits) * 8, faiss.swig_ptr(allowed.bits))
            keep.append(allowed.bits)
        if self.n_dead:
            dead = self.dead
            live = faiss.IDSelectorNot(faiss.IDSelectorBitmap(len(dead) * 8, faiss.swig_ptr(dead)))
            keep += [dead, live]
            sel = live if sel is None else faiss.IDSelectorAnd(sel, live)
        keep.append(sel)
        return sel, keep

    def search(self, q: np.ndarray, k: int, allowed: RowFilter | None = None) -> list[np.ndarray]:
        """Top ``k`` rows for each query ``q [B, D]``, ties to the lower row (as :class:`ExactVectors`)."""
        return [r for r, _ in self.search_scored(q, k, allowed)]

    def search_scored(self, q: np.ndarray, k: int, allowed: RowFilter | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(rows, approximate inner products)`` of the top ``k`` rows for each query ``q [B, D]``.

        ``nprobe`` grows with the inverse of ``allowed.fraction`` (a shard is given the whole catalogue's fraction, so
        that it probes the lists the unsplit index probes).
        """
        import faiss

        q = np.ascontiguousarray(np.atleast_2d(q), np.float32)
        if self.index is None or self.ntotal == 0 or not self.index.is_trained:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(len(q))]
        frac = 1.0 if allowed is None else allowed.fraction
        nprobe = min(self.nlist, max(self.nprobe, int(math.ceil(self.nprobe / max(frac, 1e-6)))))
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        sel, keep = self._selector(allowed)
        if sel is not None:
            params.sel = sel
        D, I = _with_ties(self.index, q, k, params)
        if self.delta is not None and self.delta.ntotal:
            D2, I2 = _with_ties(self.delta, q, k, params)
            D, I = np.concatenate([D, D2], 1), np.concatenate([I, I2], 1)
        del keep
        out = []
        for d, i in zip(D, I):
            ok = i >= 0
            out.append(ranked_scored(i[ok].astype(np.int64), d[ok], k))
        return out

    def save(self, path: Path) -> None:
        import faiss

        if self.read_only:
            raise FusionrankError(f"{path}: a memory-mapped index shared by worker processes is not saved; stop the "
                                  "service and write a snapshot with one process (`fusionrank compact-index`)")
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, nprobe: int = 64, codec: str = "sq8", mmap: bool = False) -> "AnnIndex":
        """Read a saved index; ``mmap``: its inverted lists stay in the file, mapped read-only (shared by processes)."""
        import faiss

        idx = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY) if mmap else faiss.read_index(str(path))
        if mmap:
            # the mapped lists are faiss's on-disk lists, which by default start up to 32 threads per search to read
            # the probed lists ahead and join them at the next search: threads a forked worker would join without
            # owning them (a crash), and pointless for a file in the page cache. Read where the search reads instead.
            faiss.downcast_InvertedLists(faiss.extract_index_ivf(idx).invlists).prefetch_nthread = 0
        self = cls(idx.d, faiss.extract_index_ivf(idx).nlist, nprobe, codec)
        self.index = idx
        self.read_only = mmap
        return self

    def memory_bytes(self) -> int:
        """Bytes held by the index's codes and ids (faiss's own estimate of its payload)."""
        if self.index is None:
            return 0
        import faiss

        ivf = faiss.extract_index_ivf(self.index)
        n = ivf.ntotal + (0 if self.delta is None else self.delta.ntotal)
        return int(n * (ivf.code_size + 8) + ivf.nlist * self.dim * 4 + self.dead.nbytes)
