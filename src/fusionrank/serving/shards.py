"""Index shards: the catalogue split into K parts, and a router that scatters the candidate stage and merges.

A catalogue too large for one machine's memory is split by rows into :class:`Shard` objects,
each holding its products' tables (records, embedding tables, BM25 postings, IVF lists). The
:class:`ShardRouter` is the candidate stage over all of them (``Queries -> Candidates``, as
:class:`~fusionrank.ranking.retrieve.HybridRetriever` over the unsplit catalogue): it scatters a
batch of queries to every shard, each shard returns every source's top ``depth`` among its rows
(:class:`~fusionrank.ranking.retrieve.SourceLists`), the router merges each source's lists by
score and fuses them once (RRF), as Vespa's global phase does.

The merged candidates equal the unsplit catalogue's (rows, order and scores), because:

- **one BM25, global statistics.** A shard scores with the same
  :class:`~fusionrank.ranking.lexical.LexicalField` code, but with the whole catalogue's live
  documents, mean length and per-term document frequencies (:class:`CorpusStats`, summed over
  the shards' own by the router; :class:`QueryStats` carries the query terms' figures to the
  shards). Shards are built with the whole catalogue's term ids, so a row's per-term weights are
  summed in the same order;
- **one trained IVF.** Every shard's index is an empty copy of the whole catalogue's trained one
  (same coarse centroids, same scalar quantiser, same ``nprobe``) holding only its rows' list
  entries: a query probes the same lists everywhere, and a vector gets the same code and score,
  so each shard's top ``depth`` holds every one of its rows that is in the global top ``depth``;
- **the whole catalogue's filter share.** A category filter raises ``nprobe`` by the inverse of
  the category's share; shards are given the global share, not their own;
- **one tie rule.** A shard's rows are kept in catalogue order, so "ties to the lower row" inside
  a shard is the same rule as across the catalogue; the merge sorts by score, then catalogue row.

Shards are plain objects (in-process, :func:`split`), or Ray actors that load a saved shard
(:class:`RayShard`, one per shard, called in parallel). Writes go to the shard that holds the
product; the router's statistics are then refreshed (:meth:`ShardRouter.refresh`).

Not yet here: the feature builder and the ranker still read one catalogue's tables, so a
sharded search ends at the candidates (a second, per-shard phase would return the candidates'
features and vectors).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..encoders.text import tokenize
from ..errors import FusionrankError, UnknownCategory
from ..modalities import LEXICAL_FIELDS, TABLES
from ..ranking.catalog import RECORD_COLUMNS, CatalogTables
from ..ranking.lexical import Bm25Stats, LexicalField
from ..ranking.retrieve import CandidateConfig, Candidates, HybridRetriever, SourceLists, fused
from ..ranking.stage import Queries, Stage
from ..ranking.vectors import RowFilter

__all__ = ["CorpusStats", "QueryStats", "Shard", "ShardRouter", "RayShard", "split"]


@dataclass(frozen=True)
class FieldStats:
    """One BM25 field over the whole catalogue: live documents, their total length, document frequency per term."""

    n_live: int
    sum_dl: float
    df: dict[str, int]

    @property
    def avgdl(self) -> float:
        """As :attr:`LexicalField.avgdl`."""
        return max(self.sum_dl / self.n_live, 1e-9) if self.n_live else 1.0


@dataclass
class QueryStats:
    """What a shard needs to score a batch of queries as the unsplit catalogue does.

    ``fields[f]``: ``(live documents, mean length)`` of field ``f``; ``df[b][f]``: the whole catalogue's document
    frequency of each distinct term of query ``b`` that some live document of ``f`` contains; ``qlen[b][f]``: how many
    such terms (at least 1); ``fraction``: the category filter's share of the live products (None: no filter).
    """

    fields: dict[str, tuple[int, float]]
    df: list[dict[str, dict[str, int]]]
    qlen: list[dict[str, int]]
    fraction: float | None

    def terms(self, b: int, f: str, lexical: LexicalField) -> tuple[np.ndarray, Bm25Stats]:
        """Query ``b``'s terms as ``lexical``'s term ids (in id order, as :meth:`LexicalField.query_terms`) and their
        global statistics; terms this shard has never seen are left out (they have no postings here)."""
        pairs = sorted((lexical.vocab[w], n) for w, n in self.df[b][f].items() if w in lexical.vocab)
        n, avgdl = self.fields[f]
        return (np.asarray([j for j, _ in pairs], np.int64),
                Bm25Stats(n, avgdl, np.asarray([d for _, d in pairs], np.float64)))

    def row_filter(self, tables: CatalogTables, category: str | None) -> RowFilter | None:
        """This shard's rows of ``category`` (none when it holds none) with the whole catalogue's share."""
        if not category:
            return None
        mask = tables.category_mask(category)
        return RowFilter(mask, np.packbits(mask, bitorder="little"), float(self.fraction or 0.0))


@dataclass
class CorpusStats:
    """The whole catalogue's BM25 statistics and category counts, summed over its shards."""

    fields: dict[str, FieldStats]
    categories: dict[str, tuple[str, int]]  # lower-cased -> (name, live products)
    n_live: int

    @classmethod
    def total(cls, parts: Sequence[dict[str, Any]]) -> "CorpusStats":
        """The sum of shards' :meth:`Shard.stats`."""
        fields = {}
        for f in LEXICAL_FIELDS:
            df: dict[str, int] = {}
            for p in parts:
                for w, n in p["fields"][f]["df"].items():
                    df[w] = df.get(w, 0) + n
            fields[f] = FieldStats(sum(p["fields"][f]["n_live"] for p in parts),
                                   float(sum(p["fields"][f]["sum_dl"] for p in parts)), df)
        cats: dict[str, tuple[str, int]] = {}
        for p in parts:
            for k, (name, n) in p["categories"].items():
                cats[k] = (cats.get(k, (name, 0))[0], cats.get(k, (name, 0))[1] + n)
        return cls(fields, cats, sum(p["n_live"] for p in parts))

    def query(self, queries: Queries) -> QueryStats:
        """The statistics of a batch's terms and filter; an unknown category is an error listing the valid ones."""
        fraction = None
        if queries.category:
            hit = self.categories.get(queries.category.lower())
            if hit is None:
                names = sorted((name for name, _ in self.categories.values()), key=str.lower)
                raise UnknownCategory(f"unknown category {queries.category!r}; valid: {', '.join(names)}")
            fraction = hit[1] / max(1, self.n_live)
        df, qlen = [], []
        for text in queries.texts:
            toks = set(tokenize(text))
            d = {f: {w: self.fields[f].df[w] for w in toks if self.fields[f].df.get(w, 0) > 0} for f in LEXICAL_FIELDS}
            df.append(d)
            qlen.append({f: max(1, len(d[f])) for f in LEXICAL_FIELDS})
        return QueryStats({f: (s.n_live, s.avgdl) for f, s in self.fields.items()}, df, qlen, fraction)


class Shard:
    """One part of a split catalogue: its own tables (rows ``0..n-1``) and the catalogue row of each (``rows``,
    increasing, so that a tie inside the shard goes where it goes in the whole catalogue)."""

    def __init__(self, tables: CatalogTables, rows: np.ndarray, config: CandidateConfig | None = None):
        rows = np.asarray(rows, np.int64)
        if len(rows) != tables.n_rows or (len(rows) > 1 and not (np.diff(rows) > 0).all()):
            raise FusionrankError(f"a shard's catalogue rows must be increasing, one per row: {tables.n_rows} rows, "
                                  f"{len(rows)} catalogue rows given")
        self.tables, self.rows = tables, rows
        self.retriever = HybridRetriever(tables, config)

    def stats(self) -> dict[str, Any]:
        """This shard's part of :class:`CorpusStats` (plain data: it crosses process boundaries)."""
        t = self.tables
        with t.lock:
            return {"fields": {f: {"n_live": t.lexical[f].n_live, "sum_dl": t.lexical[f].sum_dl,
                                   "df": t.lexical[f].doc_freqs()} for f in LEXICAL_FIELDS},
                    "categories": t.category_counts(), "n_live": len(t)}

    def search(self, queries: Queries, stats: QueryStats) -> SourceLists:
        """Every source's top ``depth`` among this shard's rows, scored with the whole catalogue's ``stats``, as
        catalogue rows."""
        lists, _, _ = self.retriever.search(queries, stats)
        g = self.rows
        return SourceLists({s: [g[r] for r in rs] for s, rs in lists.rows.items()}, lists.scores)

    # persistence ---------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """The shard's tables as a search-index snapshot plus its catalogue rows (what a :class:`RayShard` loads)."""
        d = Path(directory)
        self.tables.save(d / "index")
        np.save(d / "rows.npy", self.rows)
        (d / "candidates.json").write_text(json.dumps(self.retriever.config.model_dump(mode="json")))
        return d

    @classmethod
    def load(cls, directory: str | Path, log=print) -> "Shard":
        from .index import SearchIndex

        d = Path(directory)
        config = CandidateConfig.model_validate(json.loads((d / "candidates.json").read_text()))
        return cls(SearchIndex.load(d / "index", log=log), np.load(d / "rows.npy"), config)


def split(tables: CatalogTables, k: int, assign: np.ndarray | None = None, log=print) -> list[Shard]:
    """The live products of ``tables`` in ``k`` shards, built like ``tables`` (its term ids, its trained IVF).

    ``assign[row]``: the shard of each row (default ``row % k``). Each shard is a
    :class:`~fusionrank.serving.index.SearchIndex` (it takes writes and saves snapshots).
    """
    from .index import SearchIndex

    if k < 1:
        raise FusionrankError(f"the number of shards must be at least 1 (got {k})")
    n = tables.n_rows
    assign = np.arange(n) % k if assign is None else np.asarray(assign)
    if len(assign) < n:
        raise FusionrankError(f"assign gives a shard for {len(assign)} rows; the catalogue has {n}")
    live = tables.live[:n]
    shards = []
    for i in range(k):
        rows = np.flatnonzero(live & (assign[:n] == i))
        part = SearchIndex.build({c: tables.records[c][rows] for c in RECORD_COLUMNS},
                                 {f: tables.lex_text[f][rows] for f in LEXICAL_FIELDS},
                                 {t: tables.emb[t][rows] for t in TABLES},
                                 {t: tables.emb_mask[t][:n][rows] for t in TABLES}, tables.config, log=log, like=tables)
        shards.append(Shard(part, rows, tables.config.candidates))
    return shards


class ShardRouter(Stage):
    """``Queries -> Candidates`` over the shards of a split catalogue: scatter, merge each source, fuse once.

    ``shards``: :class:`Shard` objects (called one after another) or :class:`RayShard` handles (called at once,
    gathered together). The candidates carry the fused scores and the merged source lists; they have no
    :class:`~fusionrank.ranking.lexical.LexScores` (those stay in the shards).
    """

    def __init__(self, shards: Sequence, config: CandidateConfig | None = None):
        if not shards:
            raise FusionrankError("a router needs at least one shard")
        self.shards = list(shards)
        if config is None and isinstance(shards[0], Shard):
            config = shards[0].retriever.config
        self.config = config
        if self.config is None:
            raise FusionrankError("give the router the candidate config of its shards")
        self.stats: CorpusStats | None = None
        self.refresh()

    def refresh(self) -> None:
        """Sum the shards' statistics again (after writes)."""
        parts = [s.stats() for s in self.shards]
        self.stats = CorpusStats.total(_gather(parts))

    def scatter(self, queries: Queries) -> tuple[list[SourceLists], QueryStats]:
        """Every shard's lists for ``queries`` (in shard order) and the statistics they were scored with."""
        qs = self.stats.query(queries)
        return _gather([s.search(queries, qs) for s in self.shards]), qs

    def transform(self, queries: Queries) -> Candidates:
        parts, qs = self.scatter(queries)
        lists = SourceLists.merge(parts, self.config.depth)
        return fused(queries, lists, self.config, [{} for _ in range(len(queries))], qs.qlen)


def _gather(results: list) -> list:
    """Results as they are, with Ray object references among them fetched in one ``ray.get``."""
    pending = [i for i, r in enumerate(results) if type(r).__name__ == "ObjectRef"]
    if pending:
        import ray

        got = ray.get([results[i] for i in pending])
        results = list(results)
        for i, r in zip(pending, got):
            results[i] = r
    return results


class _ShardActor:
    """A saved shard inside a Ray actor."""

    def __init__(self, directory: str):
        self.shard = Shard.load(directory, log=lambda _m: None)

    def stats(self) -> dict[str, Any]:
        return self.shard.stats()

    def search(self, queries: Queries, stats: QueryStats) -> SourceLists:
        return self.shard.search(queries, stats)

    def ping(self) -> int:
        return len(self.shard.tables)


class RayShard:
    """A shard served by a Ray actor that loads it from ``directory`` (saved by :meth:`Shard.save`).

    Its methods return Ray object references; :class:`ShardRouter` fetches all shards' at once, so the shards
    search in parallel. ``actor_options``: Ray's (``num_cpus``, ``resources``, ... to place it on a node).
    """

    def __init__(self, directory: str | Path, **actor_options):
        try:
            import ray
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("Ray shards need Ray: pip install 'fusionrank[ray]'") from e
        opts = {"num_cpus": 0, **actor_options}  # the search is short; do not reserve a core per shard
        self.directory = str(directory)
        self.actor = ray.remote(_ShardActor).options(**opts).remote(self.directory)

    def stats(self):
        return self.actor.stats.remote()

    def search(self, queries: Queries, stats: QueryStats):
        return self.actor.search.remote(queries, stats)

    def ready(self) -> int:
        """Wait until the actor has loaded its shard; its number of products."""
        import ray

        return ray.get(self.actor.ping.remote())

    def stop(self) -> None:
        import ray

        ray.kill(self.actor)
