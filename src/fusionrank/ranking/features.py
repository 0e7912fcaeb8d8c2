"""The feature builder: per-modality query-product features of the candidates, with masks.

:class:`Featuriser` turns :class:`~fusionrank.ranking.retrieve.Candidates` into
:class:`Slates`, the ranker's input. The features of each modality are named in
:mod:`fusionrank.modalities`:

- lexical fields: BM25 of the query, its per-slate min-max, and term overlap (share of
  the query's distinct known terms the product's field contains);
- every table: ``cos(query, row)``;
- the image's cosine also gets a per-slate min-max;
- ``colour_match``: how sure we are that the product has the colour the query names (its title states it: 1;
  its title states none: the photo colour head's probability; see :mod:`fusionrank.encoders.attributes`).

The learned interaction of a modality (query ⊙ modality embedding) is computed inside
the ranker from the tables. A product that lacks a modality has mask 0 for it and zeros
in its features; fusion modules renormalise over the present modalities instead of
reading those zeros as data. Training, evaluation and serving all build features here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .. import schema as S
from ..errors import FusionrankError
from ..encoders.attributes import colour_match
from ..modalities import COLOUR_MATCH, COLOUR_TABLE, FEATURE_COLUMN, LEXICAL_FIELDS, MODALITIES, MODALITY_NAMES, SCALAR_FEATURES
from .stage import Stage


@dataclass
class Slates:
    """Candidates and features for a batch of queries (``B`` queries, ``N`` slots).

    ``rows``  int64 [B, N]: catalogue rows, -1 = padding.
    ``x``     float32 [B, N, F]: scalar features in :data:`SCALAR_FEATURES` order.
    ``mask``  bool [B, N, K]: modality present, in :data:`~fusionrank.modalities.MODALITIES` order.
    ``q``     float32 [B, D]: query embeddings.
    ``y``     float32 [B, N]: grades (0 if unjudged), -1 on padding; None without qrels.
    """

    query_ids: list[str]
    queries: list[str]
    rows: np.ndarray
    x: np.ndarray
    mask: np.ndarray
    q: np.ndarray
    y: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.query_ids)

    def subset(self, idx: Sequence[int] | np.ndarray) -> "Slates":
        idx = np.asarray(idx)
        return Slates([self.query_ids[i] for i in idx], [self.queries[i] for i in idx], self.rows[idx], self.x[idx],
                      self.mask[idx], self.q[idx], None if self.y is None else self.y[idx])

    def columns(self, idx: Sequence[int] | np.ndarray) -> "Slates":
        """The same queries with only the slate positions ``idx`` (e.g. the top k), for every query."""
        idx = np.asarray(idx)
        return Slates(self.query_ids, self.queries, self.rows[:, idx], self.x[:, idx], self.mask[:, idx], self.q,
                      None if self.y is None else self.y[:, idx])

    @staticmethod
    def concat(parts: list["Slates"]) -> "Slates":
        n = max(p.rows.shape[1] for p in parts)

        def pad(a, fill):
            if a.shape[1] == n:
                return a
            w = [(0, 0), (0, n - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
            return np.pad(a, w, constant_values=fill)

        return Slates(sum((p.query_ids for p in parts), []), sum((p.queries for p in parts), []),
                      np.concatenate([pad(p.rows, -1) for p in parts]), np.concatenate([pad(p.x, 0) for p in parts]),
                      np.concatenate([pad(p.mask, False) for p in parts]), np.concatenate([p.q for p in parts]),
                      None if parts[0].y is None else np.concatenate([pad(p.y, -1) for p in parts]))

    def offset_rows(self, by: int) -> "Slates":
        """Rows shifted by ``by`` (padding stays -1): slates of one catalogue variant inside stacked tables."""
        rows = np.where(self.rows >= 0, self.rows + by, -1)
        return Slates(self.query_ids, self.queries, rows, self.x, self.mask, self.q, self.y)


def _minmax(a: np.ndarray, valid: np.ndarray) -> np.ndarray:
    lo = np.where(valid, a, np.inf).min(1, keepdims=True)
    hi = np.where(valid, a, -np.inf).max(1, keepdims=True)
    rng = np.where(np.isfinite(hi - lo) & (hi - lo > 1e-9), hi - lo, 1.0)
    return np.where(valid, (a - np.where(np.isfinite(lo), lo, 0)) / rng, 0).astype(np.float32)


def finish_features(x: np.ndarray, valid: np.ndarray, mask: np.ndarray) -> None:
    """Fill the per-slate min-max features and zero absent modalities and padding, in place.

    ``x [B, N, F]`` holds the raw features (:data:`SCALAR_FEATURES` order), ``valid [B, N]``
    marks real candidates, ``mask [B, N, K]`` the modalities each candidate has.
    """
    for m in MODALITIES:
        if m.minmax:
            src, dst = m.minmax
            x[:, :, FEATURE_COLUMN[dst]] = _minmax(x[:, :, FEATURE_COLUMN[src]], mask[:, :, m.index])
    for m in MODALITIES:  # absent modality: features are exactly zero (and masked)
        for f in m.features:
            x[:, :, FEATURE_COLUMN[f]] *= mask[:, :, m.index]
    x[~valid] = 0


class Featuriser(Stage):
    """``Candidates -> Slates``: the scalar features of every candidate, from the catalogue's tables.

    The tables are the candidates' own when they carry them (``cands.catalog``: a sharded search's
    candidate-only view, see :class:`fusionrank.serving.shards.ShardSearch`), else ``catalog``.
    """

    def __init__(self, catalog=None):
        self.catalog = catalog

    def transform(self, cands) -> Slates:
        cat = self.catalog if getattr(cands, "catalog", None) is None else cands.catalog
        if cat is None:
            raise FusionrankError("the feature builder has no catalogue: give it one, or candidates that carry theirs")
        B = len(cands.rows)
        N = max(1, max((len(r) for r in cands.rows), default=1))
        rows = np.full((B, N), -1, np.int64)
        x = np.zeros((B, N, len(SCALAR_FEATURES)), np.float32)
        for b, r in enumerate(cands.rows):
            n = len(r)
            rows[b, :n] = r
            for f in LEXICAL_FIELDS:
                lx = cands.lex[b][f]
                x[b, :n, FEATURE_COLUMN[f"bm25_{f}"]] = lx.at(r)
                x[b, :n, FEATURE_COLUMN[f"overlap_{f}"]] = lx.matched(r) / cands.qlen[b][f]
        valid = rows >= 0
        safe = np.where(valid, rows, 0)
        q = np.asarray(cands.queries.q, np.float32)
        with cat.lock:
            for m in MODALITIES:
                E = cat.emb[m.table][safe]  # [B, N, D]
                x[:, :, FEATURE_COLUMN[m.cosine]] = np.einsum("bnd,bd->bn", E, q) * cat.emb_mask[m.table][safe]
            x[:, :, FEATURE_COLUMN[COLOUR_MATCH]] = colour_match(cands.queries.texts, cat.emb[COLOUR_TABLE][safe])
        mask = cat.modality_mask(rows)
        finish_features(x, valid, mask)
        return Slates(list(cands.queries.query_ids), list(cands.queries.texts), rows, x, mask, q)


def attach_grades(slates: Slates, qrels: pd.DataFrame, ids: np.ndarray) -> Slates:
    """``slates`` with ``y``: each candidate's grade for its query (0 if unjudged, -1 on padding)."""
    g = qrels[qrels[S.QUERY_ID].astype(str).isin(set(slates.query_ids))]
    grades = {str(qid): dict(zip(d[S.PRODUCT_ID].astype(str), d[S.GRADE])) for qid, d in g.groupby(S.QUERY_ID)}
    y = np.full(slates.rows.shape, -1.0, np.float32)
    for b, qid in enumerate(slates.query_ids):
        gq = grades.get(str(qid), {})
        r = slates.rows[b]
        n = int((r >= 0).sum())
        y[b, :n] = [gq.get(ids[i], 0) for i in r[:n]]
    slates.y = y
    return slates


def feature_groups(modalities: Sequence[str] = MODALITY_NAMES):
    """Feature groups (one per modality) for the ranker, in modality order."""
    from ..rankers import FeatureGroup

    bad = [m for m in modalities if m not in MODALITY_NAMES]
    if bad:
        raise FusionrankError(f"unknown modality {bad[0]!r}; valid: {', '.join(MODALITY_NAMES)}")
    return [FeatureGroup(m.name, [FEATURE_COLUMN[f] for f in m.features], m.index, m.table,
                         [FEATURE_COLUMN[f] for f in m.lexical_features] or None)
            for m in MODALITIES if m.name in modalities]
