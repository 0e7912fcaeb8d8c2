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
    return rrf_scored(lists, n, rrf_k, weights)[0]


def rrf_scored(lists: list[np.ndarray], n: int, rrf_k: float = 60.0, weights: list[float] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rrf_merge` with the fused scores: ``(rows, sum_s w_s / (rrf_k + rank_s))``, best first."""
    rows, vals = [], []
    for li, r in enumerate(lists):
        r = np.asarray(r, np.int64)
        ok = r >= 0
        w = 1.0 if weights is None else weights[li]
        rows.append(r[ok])
        vals.append(w / (rrf_k + np.flatnonzero(ok) + 1.0))
    if not rows or not sum(len(r) for r in rows):
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    allr, allv = np.concatenate(rows), np.concatenate(vals)
    urows, inv = np.unique(allr, return_inverse=True)
    score = np.bincount(inv, weights=allv, minlength=len(urows))
    order = np.lexsort((urows, -score))[:n]
    return urows[order], score[order]


@dataclass
class SourceLists:
    """What the sources found, before fusion: ``rows[src][b]`` (int64, best first) and ``scores[src][b]`` (BM25 or
    inner product) of each source's top ``depth`` for query ``b``.

    A shard of a split catalogue returns these for its rows (as catalogue-wide rows), with ``lex[b][field]``: the
    BM25 scores and matched-term counts of every row it listed for query ``b`` (a
    :class:`~fusionrank.ranking.lexical.RowScores` over catalogue rows), which the router's gather reuses for the
    candidates; :meth:`merge` puts the shards' lists together into the lists the unsplit catalogue gives.
    """

    rows: dict[str, list[np.ndarray]]
    scores: dict[str, list[np.ndarray]]
    lex: list[dict[str, Any]] | None = None

    @classmethod
    def merge(cls, parts: list["SourceLists"], depth: int) -> "SourceLists":
        """Each source's top ``depth`` over all ``parts``, by score then lower row (the tie rule of every source)."""
        from .vectors import ranked_scored

        rows: dict[str, list[np.ndarray]] = {}
        scores: dict[str, list[np.ndarray]] = {}
        for src in parts[0].rows:
            rows[src], scores[src] = [], []
            for b in range(len(parts[0].rows[src])):
                r, s = ranked_scored(np.concatenate([p.rows[src][b] for p in parts]),
                                     np.concatenate([p.scores[src][b] for p in parts]), depth)
                rows[src].append(r)
                scores[src].append(s)
        return cls(rows, scores)

    def fuse(self, config: "CandidateConfig") -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``(rows, fused scores)`` per query: the sources' lists merged by weighted RRF, the top ``config.n``."""
        srcs = list(self.rows)
        weights = [float(config.weights.get(src, 1.0)) for src in srcs]
        B = len(self.rows[srcs[0]]) if srcs else 0
        out = [rrf_scored([self.rows[src][b] for src in srcs], config.n, config.rrf_k, weights) for b in range(B)]
        return [r for r, _ in out], [s for _, s in out]


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
    scores: list[np.ndarray] = field(default_factory=list)  # the fused (RRF) score of each row
    lists: SourceLists | None = None  # what each source found, before fusion
    # the tables ``rows`` index when they are not the pipeline's catalogue: a sharded search's candidate-only
    # view (:class:`fusionrank.serving.shards.ShardSearch`), which the feature builder, ranker and explainer read
    catalog: Any = None

    def __len__(self) -> int:
        return len(self.rows)


@RETRIEVERS.register("hybrid")
class HybridRetriever(Stage):
    """``Queries -> Candidates``: BM25 per field and nearest neighbours per table, RRF-merged."""

    def __init__(self, catalog, config: CandidateConfig | None = None):
        self.catalog = catalog
        self.config = config or catalog.config.candidates

    def transform(self, queries: Queries) -> Candidates:
        lists, lex, qlen = self.search(queries)
        return fused(queries, lists, self.config, lex, qlen)

    def search(self, queries: Queries, stats=None) -> tuple[SourceLists, list[dict[str, Any]], list[dict[str, int]]]:
        """Each source's top ``depth`` per query, with the BM25 scores and query lengths the features reuse.

        ``stats`` (a :class:`~fusionrank.serving.shards.QueryStats`, given to a shard of a split catalogue): the
        whole catalogue's BM25 statistics of the queries' terms and share of the category filter, used instead of
        this catalogue's own, so that the lists are this catalogue's part of the unsplit catalogue's lists.
        """
        cfg, cat = self.config, self.catalog
        B = len(queries)
        with cat.lock:
            flt = self.row_filter(queries, stats)
            lex, qlen = self.lexical(queries, stats, None if flt is None else flt.mask)
            rows, scores = {}, {}
            for src in cfg.sources:
                kind, name = src.split(":", 1)
                if kind == "bm25":
                    found = [lex[b][name].top_scored(cfg.depth) for b in range(B)]
                else:  # a table the catalogue built no index for (a swapped-in retriever): exact search
                    vs = cat.vectors[name] if name in cat.vectors else ExactVectors(cat, name)
                    found = vs.search_scored(queries.q, cfg.depth, flt)
                rows[src] = [r for r, _ in found]
                scores[src] = [np.asarray(s, np.float64) for _, s in found]
        return SourceLists(rows, scores), lex, qlen

    def row_filter(self, queries: Queries, stats=None):
        """The batch's category filter: over this catalogue, or with the whole catalogue's share (``stats``)."""
        cat = self.catalog
        return cat.row_filter(queries.category) if stats is None else stats.row_filter(cat, queries.category)

    def lexical(self, queries: Queries, stats=None, allowed: np.ndarray | None = None
                ) -> tuple[list[dict[str, Any]], list[dict[str, int]]]:
        """Every BM25 field's scores of each query (``lex[b][field]``, a
        :class:`~fusionrank.ranking.lexical.LexScores`) over the ``allowed`` rows, and the query lengths
        (``qlen[b][field]``); with ``stats``, under the whole catalogue's statistics (see :meth:`search`)."""
        from ..modalities import LEXICAL_FIELDS

        cat = self.catalog
        lex, qlen = [], []
        with cat.lock:
            for b, text in enumerate(queries.texts):
                if stats is None:
                    terms = {f: cat.lexical[f].query_terms(text) for f in LEXICAL_FIELDS}
                    qlen.append({f: max(1, len(t)) for f, t in terms.items()})
                    lex.append({f: cat.lexical[f].score(t, allowed) for f, t in terms.items()})
                else:
                    qlen.append(dict(stats.qlen[b]))
                    lex.append({})
                    for f in LEXICAL_FIELDS:
                        t, st = stats.terms(b, f, cat.lexical[f])
                        lex[b][f] = cat.lexical[f].score(t, allowed, st)
        return lex, qlen


def fused(queries: Queries, lists: SourceLists, config: CandidateConfig, lex: list[dict[str, Any]],
          qlen: list[dict[str, int]]) -> Candidates:
    """The candidates: the sources' lists fused by RRF (see :meth:`SourceLists.fuse`)."""
    rows, scores = lists.fuse(config)
    B = len(queries)
    sources = [{src: len(lists.rows[src][b]) for src in config.sources} for b in range(B)]
    return Candidates(queries, rows, lex, qlen, sources, scores, lists)


def build_retriever(catalog, config: CandidateConfig | None = None) -> Stage:
    """The retriever ``config.name`` names (see :data:`RETRIEVERS`) over ``catalog``."""
    config = config or catalog.config.candidates
    return RETRIEVERS.get(config.name)(catalog, config)
