"""One embedding table of the catalogue: the vectors of the products that have a modality, as the ranker reads them.

A table is indexed by catalogue *row* and always answers in float32::

    table[rows]   # float32, rows.shape + (dim,); zeros for rows without a vector

That lookup is the one place where stored vectors become the ranker's numbers: the
feature builder (cosines), the neural and boosted rankers (query ⊙ embedding
interactions), exact vector search and feature logging all read through it, in
training, evaluation and serving alike.

Storage, per table:

- ``dtype``: ``float32`` or ``float16`` (:data:`TABLE_DTYPES`; ``[index] table_dtype``).
  float16 halves the bytes; a stored value is rounded once (relative error at most
  2^-11) and converted back to float32 exactly at lookup, only for the rows looked up.
  A table of probabilities (the colour evidence, an attribute table) can be stored as
  ``unit8``: one byte per value, the value rounded to a step of 1/255 (error at most
  1/510), read back as ``byte / 255``. With ``table_dtype = "float16"`` the attribute tables
  are stored so (:func:`fusionrank.ranking.catalog.storage_of`).
- only the rows that have the modality hold a vector (a *slot*): a catalogue where 30%
  of the products have a voice clip stores 30% of a transcript table, not 100% of zeros.
  ``slot[row]`` is the row's slot, -1 for none.
- slots live in two parts: ``base``, the snapshot's vectors as loaded (read-only; a
  memory map of the saved ``.npy`` is shared by every process that maps it), and
  ``tail``, a private array that grows with the products written since.
"""
from __future__ import annotations

import numpy as np

from ..errors import FusionrankError

TABLE_DTYPES: dict[str, type] = {"float32": np.float32, "float16": np.float16}
UNIT8 = "unit8"  # values in [0, 1] as bytes, steps of 1/255: tables of probabilities only
STORAGE: dict[str, type] = {**TABLE_DTYPES, UNIT8: np.uint8}


def table_dtype(name: str) -> np.dtype:
    """The numpy dtype of a ``table_dtype`` name; an unknown name is an error listing the valid ones."""
    if name not in TABLE_DTYPES:
        raise FusionrankError(f"unknown table_dtype {name!r}; valid: {', '.join(TABLE_DTYPES)}")
    return np.dtype(TABLE_DTYPES[name])


def storage_dtype(name: str) -> np.dtype:
    """The numpy dtype a table stored as ``name`` (a ``table_dtype``, or :data:`UNIT8`) keeps."""
    return np.dtype(STORAGE[name]) if name == UNIT8 else table_dtype(name)


class EmbeddingTable:
    """The vectors of one modality by catalogue row (see the module docstring)."""

    def __init__(self, dim: int, dtype: str = "float32"):
        self.dim = int(dim)
        self.dtype_name = dtype
        self.dtype = storage_dtype(dtype)
        self.scale = 1.0 / 255 if dtype == UNIT8 else None  # what a stored byte is worth
        self.slot = np.zeros(0, np.int32)
        self.base = np.zeros((0, self.dim), self.dtype)
        self.tail = np.zeros((0, self.dim), self.dtype)
        self.n_tail = 0

    # construction --------------------------------------------------------------
    @classmethod
    def from_rows(cls, emb: np.ndarray, present: np.ndarray, dtype: str = "float32") -> "EmbeddingTable":
        """A table of ``len(present)`` rows from a dense ``emb [rows, dim]`` (only rows with ``present`` are stored)."""
        present = np.asarray(present, bool)
        if len(emb) != len(present):
            raise FusionrankError(f"embedding table has {len(emb)} rows but its mask {len(present)}")
        self = cls(emb.shape[1], dtype)
        self.base = self._cast(np.asarray(emb)[present])
        self.slot = np.where(present, np.cumsum(present) - 1, -1).astype(np.int32)
        return self

    @classmethod
    def from_stored(cls, stored: np.ndarray, present: np.ndarray, dtype: str, source: str = "table") -> "EmbeddingTable":
        """A table over ``stored``, the vectors of the ``present`` rows in row order (kept as given: a memory map stays one)."""
        present = np.asarray(present, bool)
        if stored.ndim != 2 or len(stored) != int(present.sum()):
            raise FusionrankError(f"{source}: holds {stored.shape[0] if stored.ndim else 0} vectors but its mask marks "
                                  f"{int(present.sum())} rows as having one")
        self = cls(stored.shape[1], dtype)
        if stored.dtype == self.dtype:
            self.base = stored
        elif dtype == UNIT8 and stored.dtype.kind == "f":  # probabilities saved as floats (an index saved before unit8)
            self.base = self._cast(np.asarray(stored, np.float32))
        else:
            raise FusionrankError(f"{source}: vectors are {stored.dtype}, but table_dtype is {dtype!r}")
        self.slot = np.where(present, np.cumsum(present) - 1, -1).astype(np.int32)
        return self

    def _cast(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v)
        if self.scale is not None:
            if v.size and (v.min() < -1e-6 or v.max() > 1 + 1e-6):
                raise FusionrankError(f"a {UNIT8} table holds values in [0, 1]; got one of {float(v.min() if v.min() < 0 else v.max()):.3g}")
            return np.ascontiguousarray(np.rint(np.clip(v, 0, 1) * 255), np.uint8)
        if self.dtype == np.float16 and v.size and np.abs(v).max() > np.finfo(np.float16).max:
            raise FusionrankError(f"a vector has a value of magnitude {float(np.abs(v).max()):.3g}, beyond float16's range; "
                                  f"use table_dtype = \"float32\"")
        return np.ascontiguousarray(v, self.dtype)

    # reads ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.slot), self.dim)

    def __len__(self) -> int:
        return len(self.slot)

    def __getitem__(self, rows) -> np.ndarray:
        """float32 vectors of ``rows`` (an int, a slice or an int array of any shape); zeros where a row has none."""
        r = np.arange(len(self.slot))[rows] if isinstance(rows, slice) else np.asarray(rows)
        s = self.slot[r]
        out = np.zeros(s.shape + (self.dim,), np.float32)
        nb = len(self.base)
        b = (s >= 0) & (s < nb)
        if b.any():
            out[b] = self.base[s[b]]
        t = s >= nb
        if t.any():
            out[t] = self.tail[s[t] - nb]
        if self.scale is not None:
            out *= self.scale
        return out

    def stored(self, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, vectors)`` of the first ``n_rows`` rows that hold a vector, in row order, in the table's dtype."""
        s = self.slot[:n_rows]
        rows = np.flatnonzero(s >= 0)
        nb = len(self.base)
        ss = s[rows]
        if not (ss >= nb).any() and np.array_equal(ss, np.arange(len(ss))):
            return rows, self.base[:len(ss)]  # the snapshot as loaded: no copy
        out = np.empty((len(rows), self.dim), self.dtype)
        b = ss < nb
        out[b] = self.base[ss[b]]
        out[~b] = self.tail[ss[~b] - nb]
        return rows, out

    def inner(self, q: np.ndarray, n_rows: int, chunk: int = 65536) -> np.ndarray:
        """``q [B, dim] @ table[:n_rows].T`` as float32 ``[B, n_rows]`` (0 for rows without a vector).

        A score depends only on the query and the row's vector: each is one dot product in numpy's
        einsum loop, not a BLAS matrix product, whose kernels sum in an order that depends on the
        row's (and the query's) place in the matrices. So a product scores the same alone or among
        thousands of queries, in a table of 100 rows or 1M, in one shard of a split catalogue or in
        the whole (:mod:`fusionrank.serving.shards`), before and after other products are written.
        It costs about 4x a BLAS product (6 ms against 1.6 ms per query over 44k x 384 float32 rows
        on one core of the 2-core development machine); the service's default search is IVF.
        float16 slots are converted to float32 ``chunk`` rows at a time, never the whole table at once.
        """
        q = np.ascontiguousarray(np.atleast_2d(q), np.float32)
        rows, vecs = self.stored(n_rows)
        out = np.zeros((len(q), n_rows), np.float32)
        for i in range(0, len(rows), chunk):
            part = np.asarray(vecs[i:i + chunk], np.float32) * (self.scale or 1.0)
            out[:, rows[i:i + chunk]] = np.einsum("bd,nd->bn", q, part)
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the slot map and the vectors (the tail's spare capacity included)."""
        return int(self.slot.nbytes + self.base.nbytes + self.tail.nbytes)

    # writes --------------------------------------------------------------------
    def reserve(self, cap: int) -> None:
        """Room for ``cap`` rows in the slot map (new rows have no vector); vectors are never copied."""
        if cap > len(self.slot):
            slot = np.full(cap, -1, np.int32)
            slot[:len(self.slot)] = self.slot
            self.slot = slot

    def set(self, row: int, vector: np.ndarray | None) -> None:
        """Give ``row`` a vector (a new slot in the tail) or none. A row's slot is never rewritten in place."""
        if vector is None:
            self.slot[row] = -1
            return
        v = self._cast(np.asarray(vector, np.float32).reshape(self.dim))
        if self.n_tail == len(self.tail):
            grown = np.zeros((max(64, int(len(self.tail) * 1.5)), self.dim), self.dtype)
            grown[:self.n_tail] = self.tail[:self.n_tail]
            self.tail = grown
        self.tail[self.n_tail] = v
        self.slot[row] = len(self.base) + self.n_tail
        self.n_tail += 1


def dense_rows(tables: dict, n_rows: int) -> dict[str, np.ndarray]:
    """Every table's first ``n_rows`` rows as dense float32 arrays (the lookup above, for all rows)."""
    rows = np.arange(n_rows)
    return {t: e[rows] for t, e in tables.items()}


class TextColumn:
    """One text column of the records by row, over a memory-mapped Arrow array shared by worker processes.

    Rows of the snapshot are read from ``base`` (a ``pyarrow`` string array in a memory-mapped
    IPC file: no Python object per row, pages shared by every process that maps it); rows
    written since are kept in a private ``tail``. Reads as the object arrays it replaces: an
    int gives the value, a slice a view, an int or bool array an object array.
    """

    def __init__(self, base, tail: np.ndarray | None = None, start: int = 0, stop: int | None = None):
        self.base = base
        self.nb = len(base)
        self.tail = np.empty(0, object) if tail is None else tail
        self.start, self.stop = start, stop

    def _len_all(self) -> int:
        return self.nb + len(self.tail)

    def __len__(self) -> int:
        stop = self._len_all() if self.stop is None else min(self.stop, self._len_all())
        return max(0, stop - self.start)

    def _one(self, i: int):
        if i < self.nb:
            return self.base[i].as_py()
        return self.tail[i - self.nb]

    def __getitem__(self, key):
        if isinstance(key, slice):
            if key.step not in (None, 1):
                return np.asarray(self)[key]
            a, b, _ = key.indices(len(self))
            return TextColumn(self.base, self.tail, self.start + a, self.start + b) if b > a else np.empty(0, object)
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if i < 0:
                i += len(self)
            if not 0 <= i < len(self):
                raise IndexError(i)
            return self._one(self.start + i)
        k = np.asarray(key)
        if k.dtype == bool:
            k = np.flatnonzero(k)
        rows = k.reshape(-1) + self.start
        out = np.empty(len(rows), object)
        inb = rows < self.nb
        if inb.any():
            out[inb] = self.base.take(rows[inb]).to_pylist()
        for j in np.flatnonzero(~inb):
            out[j] = self.tail[rows[j] - self.nb]
        return out.reshape(k.shape)

    def __setitem__(self, row: int, value) -> None:
        i = self.start + int(row)
        if i < self.nb:
            raise ValueError(f"row {row} belongs to the memory-mapped snapshot and is never rewritten")
        self.tail[i - self.nb] = value

    def __iter__(self):
        stop = self.start + len(self)
        head = min(stop, self.nb)
        if head > self.start:
            yield from self.base.slice(self.start, head - self.start).to_pylist()
        for i in range(max(self.start, self.nb), stop):
            yield self.tail[i - self.nb]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(list(self), dtype=object)

    def reserve(self, cap: int) -> None:
        """Room for ``cap`` rows in all (new rows hold None until written)."""
        if cap - self.nb > len(self.tail):
            tail = np.full(cap - self.nb, None, dtype=object)
            tail[:len(self.tail)] = self.tail
            self.tail = tail
