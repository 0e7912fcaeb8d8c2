"""BM25 (Robertson & Zaragoza 2009), the one implementation: an updatable inverted index.

A service must let products come and go without a rebuild, so this index keeps term
frequencies and document lengths (not precomputed weights) and applies the
statistics (``idf`` from live document frequencies, ``avgdl`` over live documents)
at query time, as Lucene does. An index after any sequence of adds and deletes
therefore scores the same as one built from scratch on the live documents;
``tests/ranking/test_lexical.py`` checks that against an independent reference.
The ranking path scores with it, and :class:`~fusionrank.encoders.BM25Encoder`
(BM25 as sparse vectors) is a view of it.

``score(q, d) = sum over distinct query terms t in d of idf(t) * tf (k1 + 1) / (tf + k1 (1 - b + b |d| / avgdl))``
with the Lucene ``idf(t) = log(1 + (N - df + 0.5) / (df + 0.5))``.

Postings live in a CSR matrix ``[terms, rows]`` (the *main* segment) plus small
per-term lists for rows added since (the *delta*), merged into main once the
delta grows past a fraction of it. Deleted rows keep their postings until the next
merge but are dropped from every result by the ``live`` mask.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ..encoders.text import term_counts, tokenize
from .vectors import ranked_scored


@dataclass(frozen=True)
class Bm25Stats:
    """The corpus statistics a BM25 score is computed with: live documents, their mean length, and the document
    frequency ``df[i]`` of the query's ``i``-th term.

    A field scores with its own (:meth:`LexicalField.stats`); a shard of a split catalogue scores with the whole
    catalogue's (:class:`fusionrank.serving.shards.CorpusStats`), so that its scores equal the unsplit index's.
    """

    n_live: int
    avgdl: float
    df: np.ndarray


def bm25_idf(n_live: int, df: np.ndarray) -> np.ndarray:
    """Lucene's ``idf = log(1 + (N - df + 0.5) / (df + 0.5))`` (float32)."""
    df = np.asarray(df, np.float64)
    return np.log1p((n_live - df + 0.5) / (df + 0.5)).astype(np.float32)


class LexicalField:
    dense_fraction = 1 / 40  # postings above this share of the rows are accumulated densely
    avgdl_tolerance = 1e-4  # relative drift of avgdl before the cached posting weights are recomputed
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
        self._w_main: np.ndarray | None = None
        self._w_avgdl: float | None = None
        self._dead: tuple | None = None

    # construction ----------------------------------------------------------
    @classmethod
    def build(cls, docs: Sequence[str], k1: float = 1.2, b: float = 0.75, vocab: dict[str, int] | None = None
              ) -> "LexicalField":
        """Index ``docs`` as rows ``0..len(docs)-1``; ``vocab`` (copied): term ids to start from (a shard takes the
        whole catalogue's, so that its terms have the same ids and are summed in the same order)."""
        self = cls(k1, b)
        if vocab is not None:
            self.vocab = dict(vocab)
        tf, lens = term_counts(docs, self.vocab, grow=True)
        n = len(docs)
        self.main = tf.T.tocsr()
        self.df = np.diff(self.main.indptr).astype(np.float64)
        self.dl = np.asarray(lens, np.float32)
        self.live = np.ones(n, bool)
        self.n_rows = self.n_live = n
        self.sum_dl = float(self.dl.sum(dtype=np.float64))  # float64: a float32 sum of 1M lengths rounds
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
        tf, lens = term_counts([text], self.vocab, grow=True)
        if len(self.vocab) > len(self.df):
            self.df = np.concatenate([self.df, np.zeros(len(self.vocab) - len(self.df))])
        for j, c in zip(tf.indices.tolist(), tf.data.tolist()):
            d = self.delta.setdefault(j, ([], []))
            d[0].append(row)
            d[1].append(c)
            self.df[j] += 1
        self.delta_postings += tf.nnz
        self.dl[row] = lens[0]
        self.live[row] = True
        self.n_rows = row + 1
        self.n_live += 1
        self.sum_dl += float(lens[0])
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
        self._w_main = None  # postings changed: recompute the cached weights

    @property
    def avgdl(self) -> float:
        return max(self.sum_dl / self.n_live, 1e-9) if self.n_live else 1.0

    def idf(self, terms: np.ndarray) -> np.ndarray:
        """Lucene's idf of term ids over the live documents (float32)."""
        return bm25_idf(self.n_live, self.df[terms])

    def stats(self, terms: np.ndarray) -> Bm25Stats:
        """This field's own statistics for the query ``terms``."""
        return Bm25Stats(self.n_live, self.avgdl, self.df[np.asarray(terms, np.int64)])

    def doc_freqs(self) -> dict[str, int]:
        """Document frequency of every term some live row contains (what a shard reports for the global statistics)."""
        df = self.df
        return {w: int(df[j]) for w, j in self.vocab.items() if j < len(df) and df[j] > 0}

    def weights(self, texts: Sequence[str]) -> sp.csr_matrix:
        """BM25 weight of every known term in each text ``[len(texts), vocab]`` under the live statistics.

        A text's row dotted with a binary query row (:meth:`query_matrix`) is its BM25 score.
        """
        tf, lens = term_counts(texts, self.vocab, grow=False)
        tf = tf.tocsr()
        rows = np.repeat(np.arange(tf.shape[0]), np.diff(tf.indptr))
        tf.data = self.idf(tf.indices) * self._tf_part(tf.data, lens[rows], self.avgdl)
        return tf

    def query_matrix(self, queries: Sequence[str]) -> sp.csr_matrix:
        """Binary ``[len(queries), vocab]``: the distinct known terms of each query (a repeated term counts once)."""
        q, _ = term_counts(queries, self.vocab, grow=False)
        q.data[:] = 1.0
        return q

    def _tf_part(self, tf: np.ndarray, dl: np.ndarray, avgdl: float) -> np.ndarray:
        """BM25's saturated term frequency, ``tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl))``."""
        return (tf * (self.k1 + 1) / (tf + self.k1 * (1 - self.b + self.b * dl / avgdl))).astype(np.float32)

    def _main_weights(self, avgdl: float) -> np.ndarray:
        """The main segment's saturated tf per posting, for the current ``avgdl``.

        Cached. Writes move ``avgdl``; the cache is recomputed (O(postings), ~0.1 s per field
        at 1M products) by the first query after ``avgdl`` has drifted by more than
        ``avgdl_tolerance`` (relative) from the cached value. One write moves it by about
        1/N, so at 1M products the recompute comes once per ~100 writes rather than after
        each, and scores stay within ~1e-4 (relative) of an exact recompute. 0 = always exact.
        """
        stale = self._w_avgdl is None or abs(self._w_avgdl - avgdl) > self.avgdl_tolerance * avgdl
        if self._w_main is None or stale:
            m = self.main
            rows = m.indices
            self._w_main = self._tf_part(m.data, self.dl[rows], avgdl)
            self._w_avgdl = avgdl
        return self._w_main

    # queries ---------------------------------------------------------------
    def doc_freq(self, term: str) -> int:
        """How many live rows contain ``term``."""
        j = self.vocab.get(term)
        return 0 if j is None or j >= len(self.df) else int(self.df[j])

    def query_terms(self, query: str) -> np.ndarray:
        """Term ids of the query's distinct tokens that occur in at least one live document."""
        ids = {self.vocab[w] for w in tokenize(query) if w in self.vocab}
        return np.asarray(sorted(j for j in ids if self.df[j] > 0), np.int64)

    def score(self, terms: np.ndarray, allowed: np.ndarray | None = None, stats: Bm25Stats | None = None) -> "LexScores":
        """BM25 of every live (and ``allowed``) row for the query ``terms``, under ``stats`` (default: this field's)."""
        if not len(terms) or not self.n_live:
            return LexScores(self, terms, np.zeros(0, np.int64), np.zeros(0, np.float64), None)
        stats = stats or self.stats(terms)
        avgdl = stats.avgdl
        idf = bm25_idf(stats.n_live, stats.df)
        parts_r, parts_w = [], []
        m = self.main
        w_main = self._main_weights(avgdl)
        for j, w in zip(terms, idf):
            if j < m.shape[0]:
                a, b_ = m.indptr[j], m.indptr[j + 1]
                if b_ > a:
                    parts_r.append(m.indices[a:b_])
                    parts_w.append(w * w_main[a:b_])
            if j in self.delta:
                rows, tfs = np.asarray(self.delta[j][0], np.int64), np.asarray(self.delta[j][1], np.float32)
                parts_r.append(rows)
                parts_w.append(w * self._tf_part(tfs, self.dl[rows], avgdl))
        if not parts_r:
            return LexScores(self, terms, np.zeros(0, np.int64), np.zeros(0, np.float64), None)
        rows, wts = np.concatenate(parts_r), np.concatenate(parts_w)
        if len(rows) < self.dense_fraction * self.n_rows:  # few postings: a sparse result
            urows, inv = np.unique(rows, return_inverse=True)
            sc = np.bincount(inv, weights=wts, minlength=len(urows))
            keep = self.live[urows] if allowed is None else self.live[urows] & allowed[urows]
            return LexScores(self, terms, urows[keep].astype(np.int64), sc[keep], None)
        # long posting lists (common terms, big catalogues): a dense accumulator, O(rows + postings)
        acc = np.bincount(rows, weights=wts, minlength=self.n_rows)
        acc[self._dead_rows()] = 0.0
        if allowed is not None:
            acc *= allowed[:self.n_rows]
        return LexScores(self, terms, None, None, acc)

    def _dead_rows(self) -> np.ndarray:
        if self._dead is None or self._dead[0] != (self.n_rows, self.n_live):
            self._dead = ((self.n_rows, self.n_live), np.flatnonzero(~self.live[:self.n_rows]))
        return self._dead[1]

    def postings(self, j: int) -> np.ndarray:
        """Sorted rows (live or not) that contain term ``j``."""
        m = self.main
        main = m.indices[m.indptr[j]:m.indptr[j + 1]] if j < m.shape[0] else np.zeros(0, np.int32)
        if j in self.delta:  # delta rows are appended in increasing order, all after the main segment's
            return np.concatenate([main.astype(np.int64), np.asarray(self.delta[j][0], np.int64)])
        return main

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
        self.sum_dl = float(self.dl[self.live].sum(dtype=np.float64))
        return self

    def memory_bytes(self) -> int:
        m = self.main
        return int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes + self.df.nbytes + self.dl.nbytes + self.live.nbytes)


class LexScores:
    """BM25 scores of one query over a field: sparse (matching rows) or a dense accumulator over all rows."""

    def __init__(self, field: LexicalField, terms: np.ndarray, rows: np.ndarray | None, scores: np.ndarray | None,
                 dense: np.ndarray | None):
        self.field, self.terms = field, terms
        self._rows, self._scores, self.dense = rows, scores, dense

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, bm25)`` of every matching row, rows ascending."""
        if self.dense is not None:
            r = np.flatnonzero(self.dense)
            return r.astype(np.int64), self.dense[r].astype(np.float32)
        return self._rows, self._scores.astype(np.float32)

    def __len__(self) -> int:
        return int(np.count_nonzero(self.dense)) if self.dense is not None else len(self._rows)

    def top(self, depth: int) -> np.ndarray:
        """The ``depth`` best rows, by score then lower row (the training-time tie rule)."""
        return self.top_scored(depth)[0]

    def top_scored(self, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, bm25)`` of the ``depth`` best rows, by score then lower row."""
        if self.dense is not None:
            a = self.dense
            cand = None
            if len(a) > 64 * depth:  # exact shortcut: a threshold from a sample keeps >= depth rows
                # the sample's matching rows only: selecting among the many equal zeros of a big catalogue's
                # accumulator is numpy's slow case (2.7 against 0.4 ms per query at 1M products)
                samp = a[::32]
                samp = samp[samp > 0]
                kk = 4 * depth // 32 + 1
                if len(samp) > kk:
                    t = np.partition(samp, len(samp) - 1 - kk)[len(samp) - 1 - kk]
                    c = np.flatnonzero(a >= t)
                    if len(c) >= depth:
                        cand = c
            if cand is None:
                cand = np.flatnonzero(a)
            return ranked_scored(cand.astype(np.int64), a[cand], depth)
        return ranked_scored(self._rows, self._scores, depth)

    def at(self, rows: np.ndarray) -> np.ndarray:
        """BM25 of the given rows (0 where they do not match)."""
        if self.dense is not None:
            return self.dense[rows].astype(np.float32)
        if not len(self._rows):
            return np.zeros(len(rows), np.float32)
        pos = np.clip(np.searchsorted(self._rows, rows), 0, len(self._rows) - 1)
        return np.where(self._rows[pos] == rows, self._scores[pos], 0.0).astype(np.float32)

    def matched(self, rows: np.ndarray) -> np.ndarray:
        """How many of the query's terms each given row contains."""
        out = np.zeros(len(rows), np.float32)
        for j in self.terms:
            p = self.field.postings(int(j))
            if len(p):
                pos = np.clip(np.searchsorted(p, rows), 0, len(p) - 1)
                out += p[pos] == rows
        return out


class RowScores:
    """BM25 scores and matched-term counts of one query at given rows, as :class:`LexScores` answers them there.

    What a sharded search gathers from its shards for the candidates (each shard computes them with
    :class:`LexScores` under the whole catalogue's statistics), indexed by the candidates' rows in the
    candidate-only view; the feature builder reads it as it reads :class:`LexScores`.
    ``rows`` int64 (increasing), ``bm25`` and ``n_matched`` float32, one per row.
    """

    def __init__(self, rows: np.ndarray, bm25: np.ndarray, n_matched: np.ndarray):
        o = np.argsort(rows, kind="stable")
        self.rows = np.asarray(rows, np.int64)[o]
        self.bm25 = np.asarray(bm25, np.float32)[o]
        self.n_matched = np.asarray(n_matched, np.float32)[o]

    def _take(self, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        if not len(self.rows):
            return np.zeros(len(rows), np.float32)
        pos = np.clip(np.searchsorted(self.rows, rows), 0, len(self.rows) - 1)
        return np.where(self.rows[pos] == rows, values[pos], 0.0).astype(np.float32)

    def at(self, rows: np.ndarray) -> np.ndarray:
        """BM25 of the given rows (0 for rows not gathered)."""
        return self._take(self.bm25, rows)

    def matched(self, rows: np.ndarray) -> np.ndarray:
        """How many of the query's terms each given row contains."""
        return self._take(self.n_matched, rows)
