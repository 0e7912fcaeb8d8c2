"""The candidate stage: BM25 plus vector search per modality, merged by reciprocal rank fusion.

Each *source* (``bm25:<field>`` or ``dense:<table>``) returns its top ``depth`` rows
for a query; the merged list ranks rows by RRF (Cormack et al. 2009),
``sum_s w_s / (rrf_k + rank_s)``, and keeps the top ``n``. :class:`HybridRetriever`
is the only candidate generator: training, evaluation, ``fusionrank search`` and the
service call it, over whichever :class:`~fusionrank.ranking.catalog.CatalogTables` they
hold, for one query or thousands at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..registry import Registry
from .stage import Queries, Stage
from .vectors import ExactVectors

RETRIEVERS: Registry[type] = Registry("retriever")
SOURCE_KINDS = ("bm25", "dense")


class CandidateConfig(BaseModel):
    """The candidate stage of a config (``[candidates]``); ``name`` picks the retriever from :data:`RETRIEVERS`."""

    model_config = ConfigDict(extra="forbid")
    name: str = "hybrid"
    n: int = Field(200, ge=1)
    depth: int = Field(200, ge=1)
    rrf_k: float = Field(60.0, ge=0)
    sources: tuple[str, ...] = ("bm25:title", "bm25:transcript", "dense:title", "dense:image_proj", "dense:transcript")
    weights: dict[str, float] = Field(default_factory=dict)  # optional per-source RRF weight (default 1)

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from ..modalities import LEXICAL_FIELDS, TABLES

        valid = [f"bm25:{f}" for f in LEXICAL_FIELDS] + [f"dense:{t}" for t in TABLES]
        bad = [s for s in v if s not in valid]
        if bad:
            raise ValueError(f"unknown candidate source {bad[0]!r}; valid: {', '.join(valid)}")
        return tuple(v)

    @field_validator("weights")
    @classmethod
    def _weights_name_sources(cls, v: dict[str, float], info) -> dict[str, float]:
        bad = [s for s in v if s not in info.data.get("sources", ())]
        if bad:
            raise ValueError(f"weight for {bad[0]!r}, which is not a source; sources: {', '.join(info.data.get('sources', ()))}")
        return v


def topk_rows(scores: np.ndarray, k: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` largest entries of each row (descending), ties by lower index; -1 pads.

    Without ``valid``, entries <= 0 do not count (as for BM25); with it, only invalid ones are dropped.
    """
    s = scores if valid is None else np.where(valid, scores, -np.inf)
    k = min(k, s.shape[1])
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    ps = np.take_along_axis(s, part, 1)
    # argpartition picks an arbitrary subset of the entries tied with the k-th value;
    # take the lowest-indexed ones instead (only where the tied value is not padded anyway)
    kth = ps.min(1)
    floor = 0 if valid is None else -np.inf
    tied = np.flatnonzero((kth > floor) & ((s >= kth[:, None]).sum(1) > k))
    for b in tied:
        gt, eq = np.flatnonzero(s[b] > kth[b]), np.flatnonzero(s[b] == kth[b])
        part[b] = np.concatenate([gt, eq[:k - len(gt)]])
    if len(tied):
        ps = np.take_along_axis(s, part, 1)
    order = np.lexsort((part, -ps), axis=1)
    out = np.take_along_axis(part, order, 1)
    ok = np.isfinite(np.take_along_axis(s, out, 1)) & (np.take_along_axis(s, out, 1) > (0 if valid is None else -np.inf))
    return np.where(ok, out, -1)


def rrf_merge(lists: list[np.ndarray], n: int, rrf_k: float = 60.0, weights: list[float] | None = None) -> np.ndarray:
    """Merge per-source ranked row lists (each ``[depth]``, -1 padded) into the top ``n`` rows.

    Ties in the fused score go to the lower row.
    """
    rows, vals = [], []
    for li, r in enumerate(lists):
        r = np.asarray(r, np.int64)
        ok = r >= 0
        w = 1.0 if weights is None else weights[li]
        rows.append(r[ok])
        vals.append(w / (rrf_k + np.flatnonzero(ok) + 1.0))
    if not rows or not sum(len(r) for r in rows):
        return np.zeros(0, np.int64)
    allr, allv = np.concatenate(rows), np.concatenate(vals)
    urows, inv = np.unique(allr, return_inverse=True)
    score = np.bincount(inv, weights=allv, minlength=len(urows))
    order = np.lexsort((urows, -score))[:n]
    return urows[order]


@dataclass
class Candidates:
    """Candidate rows per query, with the BM25 scores the feature builder reuses.

    ``rows[b]``: int64 catalogue rows, best first; ``lex[b][field]``: a
    :class:`~fusionrank.ranking.lexical.LexScores`; ``qlen[b][field]``: distinct query
    terms the field knows (at least 1); ``sources[b]``: how many rows each source gave.
    """

    queries: Queries
    rows: list[np.ndarray]
    lex: list[dict[str, Any]]
    qlen: list[dict[str, int]]
    sources: list[dict[str, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


@RETRIEVERS.register("hybrid")
class HybridRetriever(Stage):
    """``Queries -> Candidates``: BM25 per field and nearest neighbours per table, RRF-merged."""

    def __init__(self, catalog, config: CandidateConfig | None = None):
        self.catalog = catalog
        self.config = config or catalog.config.candidates

    def transform(self, queries: Queries) -> Candidates:
        from ..modalities import LEXICAL_FIELDS

        cfg, cat = self.config, self.catalog
        B = len(queries)
        with cat.lock:
            flt = cat.row_filter(queries.category)
            allowed = None if flt is None else flt.mask
            lex, qlen = [], []
            for text in queries.texts:
                terms = {f: cat.lexical[f].query_terms(text) for f in LEXICAL_FIELDS}
                qlen.append({f: max(1, len(t)) for f, t in terms.items()})
                lex.append({f: cat.lexical[f].score(t, allowed) for f, t in terms.items()})
            per_source, weights = [], []
            for src in cfg.sources:
                kind, name = src.split(":", 1)
                if kind == "bm25":
                    per_source.append([lex[b][name].top(cfg.depth) for b in range(B)])
                else:  # a table the catalogue built no index for (a swapped-in retriever): exact search
                    vs = cat.vectors[name] if name in cat.vectors else ExactVectors(cat, name)
                    per_source.append(vs.search(queries.q, cfg.depth, flt))
                weights.append(float(cfg.weights.get(src, 1.0)))
        rows = [rrf_merge([ps[b] for ps in per_source], cfg.n, cfg.rrf_k, weights) for b in range(B)]
        sources = [{src: len(ps[b]) for src, ps in zip(cfg.sources, per_source)} for b in range(B)]
        return Candidates(queries, rows, lex, qlen, sources)


def build_retriever(catalog, config: CandidateConfig | None = None) -> Stage:
    """The retriever ``config.name`` names (see :data:`RETRIEVERS`) over ``catalog``."""
    config = config or catalog.config.candidates
    return RETRIEVERS.get(config.name)(catalog, config)
