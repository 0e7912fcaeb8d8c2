"""An updatable BM25 inverted index that scores exactly like :class:`~fusionrank.encoders.BM25Encoder`.

Training computes BM25 features with :class:`BM25Encoder` fitted on the whole
catalogue. A service must let products come and go without a rebuild, so this
index keeps term frequencies and document lengths (not precomputed weights) and
applies the statistics (``idf`` from live document frequencies, ``avgdl`` over
live documents) at query time, as Lucene does. An index after any sequence of
adds and deletes therefore scores the same as a ``BM25Encoder`` fitted from
scratch on the live documents; ``tests/serving/test_lexical.py`` checks that.

Postings live in a CSR matrix ``[terms, rows]`` (the *main* segment) plus small
per-term lists for rows added since (the *delta*), merged into main once the
delta grows past a fraction of it. Deleted rows keep their postings until the next
merge but are dropped from every result by the ``live`` mask.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ..encoders.text import tokenize


class LexicalField:
    def __init__(self, k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.vocab: dict[str, int] = {}
        self.df = np.zeros(0, np.float64)
        self.main = sp.csr_matrix((0, 0), dtype=np.float32)  # [terms, rows] term frequencies
        self.delta: dict[int, tuple[list[int], list[float]]] = {}
        self.delta_postings = 0
        self.dl = np.zeros(0, np.float32)  # document length (tokens) per row
        self.live = np.zeros(0, bool)
        self.n_rows = 0
        self.n_live = 0
        self.sum_dl = 0.0

    # construction ----------------------------------------------------------
    @classmethod
    def build(cls, docs: Sequence[str], k1: float = 1.2, b: float = 0.75) -> "LexicalField":
        self = cls(k1, b)
        indptr, indices, data, lens = [0], [], [], []
        vocab = self.vocab
        for t in docs:
            toks = tokenize(t or "")
            lens.append(len(toks))
            counts: dict[int, int] = {}
            for w in toks:
                j = vocab.get(w)
                if j is None:
                    j = vocab[w] = len(vocab)
                counts[j] = counts.get(j, 0) + 1
            indices.extend(counts)
            data.extend(counts.values())
            indptr.append(len(indices))
        n = len(docs)
        tf = sp.csr_matrix((np.asarray(data, np.float32), np.asarray(indices, np.int64), np.asarray(indptr, np.int64)),
                           shape=(n, len(vocab)))
        self.main = tf.T.tocsr()
        self.df = np.diff(self.main.indptr).astype(np.float64)
        self.dl = np.asarray(lens, np.float32)
        self.live = np.ones(n, bool)
        self.n_rows = self.n_live = n
        self.sum_dl = float(self.dl.sum())
        return self

    def _grow(self, n: int) -> None:
        if n > len(self.dl):
            cap = max(n, int(len(self.dl) * 1.5) + 16)
            self.dl = np.concatenate([self.dl, np.zeros(cap - len(self.dl), np.float32)])
            self.live = np.concatenate([self.live, np.zeros(cap - len(self.live), bool)])

    def add(self, row: int, text: str) -> None:
        """Index ``text`` as catalogue row ``row`` (a new row; rows are never reused)."""
        if row < self.n_rows:
            raise ValueError(f"row {row} already indexed (rows are append-only)")
        self._grow(row + 1)
        toks = tokenize(text or "")
        counts: dict[int, int] = {}
        for w in toks:
            j = self.vocab.get(w)
            if j is None:
                j = self.vocab[w] = len(self.vocab)
            counts[j] = counts.get(j, 0) + 1
        if len(self.vocab) > len(self.df):
            self.df = np.concatenate([self.df, np.zeros(len(self.vocab) - len(self.df))])
        for j, c in counts.items():
            d = self.delta.setdefault(j, ([], []))
            d[0].append(row)
            d[1].append(float(c))
            self.df[j] += 1
        self.delta_postings += len(counts)
        self.dl[row] = len(toks)
        self.live[row] = True
        self.n_rows = row + 1
        self.n_live += 1
        self.sum_dl += len(toks)
        if self.delta_postings > max(10_000, 0.05 * self.main.nnz):
            self.merge()

    def delete(self, row: int, text: str) -> None:
        """Drop row ``row`` (indexed with ``text``) from every later result and statistic."""
        if row >= self.n_rows or not self.live[row]:
            return
        for w in set(tokenize(text or "")):
            j = self.vocab.get(w)
            if j is not None:
                self.df[j] -= 1
        self.live[row] = False
        self.n_live -= 1
        self.sum_dl -= float(self.dl[row])

    def merge(self) -> None:
        """Fold the delta postings into the main CSR segment (and drop deleted rows' postings)."""
        V, P = len(self.vocab), self.n_rows
        m = self.main
        t_main = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        terms = [t_main] + [np.full(len(d[0]), j) for j, d in self.delta.items()]
        docs = [m.indices.astype(np.int64)] + [np.asarray(d[0], np.int64) for d in self.delta.values()]
        tfs = [m.data] + [np.asarray(d[1], np.float32) for d in self.delta.values()]
        t, d, f = np.concatenate(terms), np.concatenate(docs), np.concatenate(tfs).astype(np.float32)
        keep = self.live[d]
        self.main = sp.csr_matrix((f[keep], (t[keep], d[keep])), shape=(V, P))
        self.main.sort_indices()
        self.delta, self.delta_postings = {}, 0

    # queries ---------------------------------------------------------------
    def query_terms(self, query: str) -> np.ndarray:
        """Term ids of the query's distinct tokens that occur in at least one live document."""
        ids = {self.vocab[w] for w in tokenize(query) if w in self.vocab}
        return np.asarray(sorted(j for j in ids if self.df[j] > 0), np.int64)

    def score(self, terms: np.ndarray, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """BM25 of every live row matching any of ``terms``.

        Returns ``(rows, bm25, matched)`` for the matching rows: their BM25 score and
        how many of the query terms they contain.
        """
        if not len(terms) or not self.n_live:
            z = np.zeros(0, np.int64)
            return z, np.zeros(0, np.float32), np.zeros(0, np.float32)
        n = self.n_live
        avgdl = max(self.sum_dl / n, 1e-9)
        idf = np.log1p((n - self.df[terms] + 0.5) / (self.df[terms] + 0.5)).astype(np.float32)
        parts_r, parts_w = [], []
        m = self.main
        for j, w in zip(terms, idf):
            r, tf = [], []
            if j < m.shape[0]:
                a, b_ = m.indptr[j], m.indptr[j + 1]
                r.append(m.indices[a:b_])
                tf.append(m.data[a:b_])
            if j in self.delta:
                r.append(np.asarray(self.delta[j][0], np.int64))
                tf.append(np.asarray(self.delta[j][1], np.float32))
            if not r:
                continue
            rows, tfs = np.concatenate(r), np.concatenate(tf)
            norm = self.k1 * (1 - self.b + self.b * self.dl[rows] / avgdl)
            parts_r.append(rows)
            parts_w.append(w * tfs * (self.k1 + 1) / (tfs + norm))
        if not parts_r:
            z = np.zeros(0, np.int64)
            return z, np.zeros(0, np.float32), np.zeros(0, np.float32)
        rows, wts = np.concatenate(parts_r), np.concatenate(parts_w)
        if len(parts_r) == 1:  # one term: its postings are already distinct and sorted
            urows, s, c = rows, wts, np.ones(len(rows), np.float32)
        elif len(rows) * 8 < self.n_rows:  # few postings: sort them
            urows, inv = np.unique(rows, return_inverse=True)
            s = np.bincount(inv, weights=wts, minlength=len(urows))
            c = np.bincount(inv, minlength=len(urows))
        else:  # long posting lists (common terms, big catalogues): accumulate over all rows, O(rows + postings)
            c_all = np.bincount(rows, minlength=self.n_rows)
            urows = np.flatnonzero(c_all)
            s = np.bincount(rows, weights=wts, minlength=self.n_rows)[urows]
            c = c_all[urows]
        keep = self.live[urows]
        if allowed is not None:
            keep &= allowed[urows]
        return urows[keep].astype(np.int64), np.asarray(s, np.float32)[keep], np.asarray(c, np.float32)[keep]

    # persistence -------------------------------------------------------------
    def save(self, d: Path) -> None:
        self.merge()
        d.mkdir(parents=True, exist_ok=True)
        sp.save_npz(d / "postings.npz", self.main)
        np.savez(d / "stats.npz", df=self.df, dl=self.dl[:self.n_rows], live=self.live[:self.n_rows])
        (d / "vocab.json").write_text(json.dumps({"k1": self.k1, "b": self.b, "vocab": self.vocab}))

    @classmethod
    def load(cls, d: Path) -> "LexicalField":
        meta = json.loads((d / "vocab.json").read_text())
        self = cls(meta["k1"], meta["b"])
        self.vocab = meta["vocab"]
        self.main = sp.load_npz(d / "postings.npz").tocsr()
        z = np.load(d / "stats.npz")
        self.df, self.dl, self.live = z["df"], z["dl"].astype(np.float32), z["live"].astype(bool)
        self.n_rows = len(self.dl)
        self.n_live = int(self.live.sum())
        self.sum_dl = float(self.dl[self.live].sum())
        return self

    def memory_bytes(self) -> int:
        m = self.main
        return int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes + self.df.nbytes + self.dl.nbytes + self.live.nbytes)
