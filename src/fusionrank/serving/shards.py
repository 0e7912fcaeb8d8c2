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
product (a new one to shard ``row % K``, as the split placed them) through :meth:`ShardRouter.upsert` and
:meth:`ShardRouter.delete`, which take the catalogue row of a new product from one counter (so that rows keep
the catalogue's order) and add the shard's change of statistics to the router's. A saved shard keeps its writes
across restarts: the index's change log, and ``rows.log`` beside it with each written product's catalogue row
(a crash between the two appends is reported at load, not repaired); the router's counter and statistics are
rebuilt from the shards when it starts.

The re-rank runs over the shards too (:class:`ShardSearch`, ``RankingPipeline.over_shards``): after the
merge the router asks each shard for the ranker's inputs of its merged candidates only (:meth:`Shard.inputs`:
their embedding rows and masks, records and BM25 texts) and assembles them, with each query's BM25 scores and
matched-term counts at those rows (which every shard returned with its lists, scored by the candidate stage's
own code under the whole catalogue's statistics), into a candidate-only view (:meth:`CatalogTables.view <fusionrank.ranking.catalog.CatalogTables.view>`,
rows ``0..M-1`` in catalogue order). The same :class:`~fusionrank.ranking.features.Featuriser`, ranker and
:class:`~fusionrank.ranking.explain.Explainer` read the view as they read one catalogue, so a sharded search
returns what the unsplit index returns (products, order, scores, explanations), and the router holds the
candidates' rows, never the catalogue's tables. The gather is a second round trip to every shard that holds
a candidate, which only reads rows: nothing is scored twice.

The service serves a split catalogue through :class:`ShardedIndex` (``fusionrank serve MODEL --shards K``): the
router in the service's process, the shards saved once beside the index (:func:`build_shards`,
``fusionrank shard-index``) and loaded each by a Ray actor (or in the process). A write is acknowledged once
its shard has logged it: ``rows.log`` (the product's catalogue row) first, then the index's change log; a crash
between the two leaves a row the index never took, which loading drops.
"""
from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import schema as S
from ..encoders.text import tokenize
from ..errors import FusionrankError, UnknownCategory
from ..modalities import CATALOG_TABLES, LEXICAL_FIELDS
from ..ranking.catalog import RECORD_COLUMNS, CatalogTables
from ..ranking.lexical import Bm25Stats, LexicalField, RowScores
from ..ranking.retrieve import CandidateConfig, Candidates, HybridRetriever, SourceLists, fused
from ..ranking.stage import Queries, Stage
from ..ranking.vectors import RowFilter
from .wal import write_atomic

__all__ = ["CorpusStats", "QueryStats", "Shard", "ShardRouter", "ShardSearch", "RayShard", "ShardedIndex", "split",
           "build_shards", "shards_folder", "check_shard_engine", "SHARDS_FILE", "SHARD_ENGINES"]

SHARDS_FILE = "shards.json"  # a folder of saved shards: how many, the catalogue's config, where they came from
SHARD_ENGINES = ("ray", "local")  # where a served split catalogue's shards run: Ray actors, or this process


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

    def apply(self, delta: dict[str, Any]) -> None:
        """Add a shard's change of statistics after a write (:meth:`Shard.upsert`, :meth:`Shard.delete`)."""
        for f, d in delta["fields"].items():
            old = self.fields[f]
            df = old.df
            for w, n in d["df"].items():
                if df.get(w, 0) + n > 0:
                    df[w] = df.get(w, 0) + n
                else:
                    df.pop(w, None)
            self.fields[f] = FieldStats(old.n_live + d["n_live"], old.sum_dl + d["sum_dl"], df)
        for k, (name, n) in delta["categories"].items():
            have = self.categories.get(k, (name, 0))
            if have[1] + n > 0:
                self.categories[k] = (have[0], have[1] + n)
            else:
                self.categories.pop(k, None)
        self.n_live += delta["n_live"]

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

    def __init__(self, tables: CatalogTables, rows: np.ndarray, config: CandidateConfig | None = None,
                 end: int | None = None):
        """``end``: the catalogue's row count when it was split (the next new product's row; default after ``rows``)."""
        rows = np.asarray(rows, np.int64)
        if len(rows) != tables.n_rows or (len(rows) > 1 and not (np.diff(rows) > 0).all()):
            raise FusionrankError(f"a shard's catalogue rows must be increasing, one per row: {tables.n_rows} rows, "
                                  f"{len(rows)} catalogue rows given")
        self.tables, self.rows = tables, rows
        self.end = int(end if end is not None else (rows[-1] + 1 if len(rows) else 0))
        self.retriever = HybridRetriever(tables, config)
        self._rows_log: Path | None = None  # saved shards: the catalogue rows of products written since (one a line)

    def holds(self, product_id: str) -> bool:
        return str(product_id) in self.tables.row_of

    def next_row(self) -> int:
        """The catalogue row a new product would take, as far as this shard knows."""
        return self.end

    def upsert(self, record: dict[str, Any], lex_texts: dict[str, str], vectors: dict[str, np.ndarray | None],
               row: int, attributes: dict[str, str] | None = None) -> dict[str, Any]:
        """Add or replace a product as catalogue row ``row`` (after every row this shard holds); returns the change
        of this shard's statistics (:meth:`CorpusStats.apply`)."""
        if len(self.rows) and row <= self.rows[-1]:
            raise FusionrankError(f"catalogue row {row} for a new product, but this shard already holds row {self.rows[-1]}")
        old = self.tables.row_of.get(str(record[S.PRODUCT_ID]))
        texts = [lex_texts.get(f) or "" for f in LEXICAL_FIELDS]
        if old is not None:
            texts += [self.tables.lex_text[f][old] or "" for f in LEXICAL_FIELDS]
        before = self._stats_of(texts)
        size = self._log_row(row)
        try:
            self.tables.upsert(record, lex_texts, vectors, attributes=attributes)
        except BaseException:
            if size is not None:  # the index refused the write: its row is not recorded either
                os.truncate(self._rows_log, size)
            raise
        self.rows = np.append(self.rows, np.int64(row))
        self.end = max(self.end, row + 1)
        return _difference(self._stats_of(texts), before)

    def _log_row(self, row: int) -> int | None:
        """A saved shard: append the new product's catalogue row to ``rows.log`` (fsync-ed) before the index's own
        change log takes the product, so that a restart knows the catalogue row of every row the index holds (a row
        logged for a write the index never took is dropped at load). Returns the log's size before, or None."""
        if self._rows_log is None:
            return None
        with open(self._rows_log, "ab") as f:
            size = f.tell()
            f.write(f"{row}\n".encode())
            f.flush()
            os.fsync(f.fileno())
        return size

    def delete(self, product_id: str) -> dict[str, Any] | None:
        """Remove a product; the change of this shard's statistics, None if it does not hold the product."""
        r = self.tables.row_of.get(str(product_id))
        if r is None:
            return None
        texts = [self.tables.lex_text[f][r] or "" for f in LEXICAL_FIELDS]
        before = self._stats_of(texts)
        self.tables.delete(product_id)
        return _difference(self._stats_of(texts), before)

    def _stats_of(self, texts: list[str]) -> dict[str, Any]:
        """This shard's statistics restricted to the terms of ``texts`` (what a write of them can change)."""
        t = self.tables
        words = {w for x in texts for w in tokenize(x)}
        return {"fields": {f: {"n_live": t.lexical[f].n_live, "sum_dl": t.lexical[f].sum_dl,
                               "df": {w: t.lexical[f].doc_freq(w) for w in words}} for f in LEXICAL_FIELDS},
                "categories": {k: (name, n) for k, (name, n) in t.category_counts().items()}, "n_live": len(t)}

    def stats(self) -> dict[str, Any]:
        """This shard's part of :class:`CorpusStats` (plain data: it crosses process boundaries)."""
        t = self.tables
        with t.lock:
            return {"fields": {f: {"n_live": t.lexical[f].n_live, "sum_dl": t.lexical[f].sum_dl,
                                   "df": t.lexical[f].doc_freqs()} for f in LEXICAL_FIELDS},
                    "categories": t.category_counts(), "n_live": len(t), "dims": dict(t.dims),
                    "version": int(t.version), "log_repair": dict(getattr(t, "log_repair", {}) or {})}

    def product(self, product_id: str) -> dict[str, Any] | None:
        """The product as this shard holds it (None if it does not)."""
        return self.tables.product(product_id)

    def media_dirs(self) -> list[str]:
        """The folders holding this shard's products' photos and clips."""
        from .media import folders_of

        return folders_of(self.tables)

    def snapshot(self) -> int:
        """Write a saved shard's snapshot again, in its own folder (the index's change log and ``rows.log`` start
        empty); returns its products."""
        if self._rows_log is None:
            raise FusionrankError("this shard was never saved; save it to a folder first")
        self.save(self._rows_log.parent)
        return len(self.tables)

    def close(self) -> None:
        close = getattr(self.tables, "close", None)
        if close is not None:
            close()

    def search(self, queries: Queries, stats: QueryStats) -> SourceLists:
        """Every source's top ``depth`` among this shard's rows, scored with the whole catalogue's ``stats``, as
        catalogue rows."""
        lists, lex, _ = self.retriever.search(queries, stats)
        g = self.rows
        listed = [np.unique(np.concatenate([rs[b] for rs in lists.rows.values()] + [np.zeros(0, np.int64)]))
                  for b in range(len(queries))]
        at = [{f: RowScores(g[r], lex[b][f].at(r), lex[b][f].matched(r)) for f in LEXICAL_FIELDS}
              for b, r in enumerate(listed)]
        return SourceLists({s: [g[r] for r in rs] for s, rs in lists.rows.items()}, lists.scores, at)

    def inputs(self, rows: list[np.ndarray]) -> dict[str, Any]:
        """The ranker's inputs of catalogue rows this shard holds: ``rows[b]``, query ``b``'s candidates here.

        Returns plain data (it crosses process boundaries): ``rows``, the distinct catalogue rows (increasing);
        per row its ``records``, BM25 texts (``lex_text``), embeddings (``emb``, float32 as a lookup of the
        tables answers) and ``emb_mask``. The candidates' BM25 scores and matched terms came with the shard's
        lists (:meth:`search`), so they are not scored again.
        """
        t = self.tables
        want = [np.asarray(r, np.int64) for r in rows]
        every = np.unique(np.concatenate(want)) if want else np.zeros(0, np.int64)
        local = np.searchsorted(self.rows, every)
        ok = local < len(self.rows)
        ok[ok] = self.rows[local[ok]] == every[ok]
        if not ok.all():
            raise FusionrankError(f"this shard does not hold catalogue rows {every[~ok][:5].tolist()}")
        with t.lock:
            return {"rows": every,
                    "records": {c: t.records[c][local] for c in RECORD_COLUMNS},
                    "lex_text": {f: t.lex_text[f][local] for f in LEXICAL_FIELDS},
                    "emb": {m: t.emb[m][local] for m in CATALOG_TABLES},
                    "emb_mask": {m: t.emb_mask[m][local] for m in CATALOG_TABLES}}

    # persistence ---------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """The shard's tables as a search-index snapshot plus its catalogue rows (what a :class:`RayShard` loads)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with self.tables.lock:  # the snapshot, then its rows (a crash between them: rows.npy and rows.log still agree)
            self.tables.save(d / "index")
            buf = io.BytesIO()
            np.save(buf, self.rows)
            write_atomic(d / "rows.npy", buf.getvalue())
            (d / "shard.json").write_text(json.dumps({"end": self.end,
                                                      "candidates": self.retriever.config.model_dump(mode="json")}))
            self._rows_log = d / "rows.log"
            self._rows_log.write_text("")  # after rows.npy: its rows cover what the log held
        return d

    @classmethod
    def load(cls, directory: str | Path, log=print) -> "Shard":
        from .index import SearchIndex

        d = Path(directory)
        meta = json.loads((d / "shard.json").read_text())
        tables = SearchIndex.load(d / "index", log=log)
        rows = np.load(d / "rows.npy")
        if (d / "rows.log").exists():  # products written since the snapshot
            text = (d / "rows.log").read_text()
            logged = text.split("\n")[:-1]  # whole lines only: a torn last line belongs to a write never taken
            keep = max(0, tables.n_rows - len(rows))
            if len(logged) > keep or (text and not text.endswith("\n")):
                # rows logged for writes the index never took (a crash between the two logs): dropped, and the log
                # rewritten without them, so that the next write's row follows the index's last
                log(f"{d}: {len(text.encode()) - sum(len(x) + 1 for x in logged[:keep])} byte(s) of rows.log belong to "
                    "write(s) the index never took (interrupted before they were acknowledged); dropped")
                logged = logged[:keep]
                write_atomic(d / "rows.log", "".join(f"{x}\n" for x in logged).encode())
            rows = np.concatenate([rows, np.asarray(logged, np.int64)])
        if len(rows) != tables.n_rows:
            raise FusionrankError(f"{d}: the index holds {tables.n_rows} rows but {len(rows)} catalogue rows are recorded "
                                  "(rows.npy and rows.log are not this snapshot's); rebuild the shards from the index")
        self = cls(tables, rows, CandidateConfig.model_validate(meta["candidates"]),
                   max(meta["end"], int(rows[-1]) + 1 if len(rows) else 0))
        self._rows_log = d / "rows.log"
        return self


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
                                 {t: tables.emb[t][rows] for t in CATALOG_TABLES},
                                 {t: tables.emb_mask[t][:n][rows] for t in CATALOG_TABLES}, tables.config, log=log, like=tables,
                                 part_of=rows)
        shards.append(Shard(part, rows, tables.config.candidates, end=n))
    return shards


def _difference(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    fields = {f: {"n_live": a["n_live"] - before["fields"][f]["n_live"], "sum_dl": a["sum_dl"] - before["fields"][f]["sum_dl"],
                  "df": {w: n - before["fields"][f]["df"].get(w, 0) for w, n in a["df"].items()
                         if n != before["fields"][f]["df"].get(w, 0)}}
              for f, a in after["fields"].items()}
    cats = {}
    for k in set(after["categories"]) | set(before["categories"]):
        name, n1 = after["categories"].get(k, before["categories"].get(k))
        n0 = before["categories"].get(k, (name, 0))[1]
        n1 = after["categories"].get(k, (name, 0))[1]
        if n1 != n0:
            cats[k] = (name, n1 - n0)
    return {"fields": fields, "categories": cats, "n_live": after["n_live"] - before["n_live"]}


class ShardRouter(Stage):
    """``Queries -> Candidates`` over the shards of a split catalogue: scatter, merge each source, fuse once.

    ``shards``: :class:`Shard` objects (called one after another) or :class:`RayShard` handles (called at once,
    gathered together). The candidates carry the fused scores and the merged source lists; they have no
    :class:`~fusionrank.ranking.lexical.LexScores` (those stay in the shards). :meth:`gather` (what
    :class:`ShardSearch` adds) fetches the ranker's inputs of the candidates for the re-rank.
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
        self._writes = threading.Lock()  # one write at a time: new products take rows in order
        self.refresh()

    def refresh(self) -> None:
        """Sum the shards' statistics again (writes through the router keep them up to date without this)."""
        parts = _gather([s.stats() for s in self.shards])
        self.stats = CorpusStats.total(parts)
        self.dims = dict(parts[0]["dims"])
        self.next_row = max(_gather([s.next_row() for s in self.shards]))
        self.versions = [int(p.get("version", 0)) for p in parts]  # each shard's changes since its snapshot
        self.log_repairs = [dict(p.get("log_repair") or {}) for p in parts]  # what loading each shard's log repaired

    def upsert(self, record: dict[str, Any], lex_texts: dict[str, str], vectors: dict[str, np.ndarray | None],
               attributes: dict[str, str] | None = None) -> int:
        """Add or replace a product (as :meth:`SearchIndex.upsert <fusionrank.serving.index.SearchIndex.upsert>`):
        in the shard that holds it, else in shard ``row % K``; returns its catalogue row."""
        pid = str(record[S.PRODUCT_ID])
        with self._writes:
            held = [i for i, h in enumerate(_gather([s.holds(pid) for s in self.shards])) if h]
            i = held[0] if held else self.next_row % len(self.shards)
            row = self.next_row
            self.stats.apply(_gather([self.shards[i].upsert(record, lex_texts, vectors, row, attributes)])[0])
            self.next_row += 1
        return row

    def delete(self, product_id: str) -> bool:
        """Remove a product from the shard that holds it; False if none does."""
        with self._writes:
            deltas = [d for d in _gather([s.delete(product_id) for s in self.shards]) if d is not None]
            for d in deltas:
                self.stats.apply(d)
        return bool(deltas)

    def scatter(self, queries: Queries) -> tuple[list[SourceLists], QueryStats]:
        """Every shard's lists for ``queries`` (in shard order) and the statistics they were scored with."""
        qs = self.stats.query(queries)
        return _gather([s.search(queries, qs) for s in self.shards]), qs

    def candidates(self, queries: Queries) -> tuple[Candidates, list[SourceLists]]:
        """The merged candidates and every shard's lists (in shard order)."""
        parts, qs = self.scatter(queries)
        lists = SourceLists.merge(parts, self.config.depth)
        return fused(queries, lists, self.config, [{} for _ in range(len(queries))], qs.qlen), parts

    def transform(self, queries: Queries) -> Candidates:
        return self.candidates(queries)[0]

    def gather(self, cands: Candidates, parts: list[SourceLists]) -> Candidates:
        """The candidates over a candidate-only view of the catalogue (rows ``0..M-1``, in catalogue order; the
        view's ``catalogue_rows[i]`` is view row ``i``'s catalogue row), assembled from the ranker's inputs of
        each shard's candidates (:meth:`Shard.inputs`), with their BM25 scores and matched terms (as the shards
        scored them for their lists).

        ``parts``: the shards' lists the candidates were merged from (:meth:`candidates`); a shard found only
        its own rows, so they say which shard holds each candidate.
        """
        from ..ranking.catalog import CatalogConfig, CatalogTables

        held = []  # held[shard][b]: the catalogue rows of query b's candidates that the shard holds
        for p in parts:
            held.append([])
            for b, r in enumerate(cands.rows):
                mine = np.concatenate([p.rows[src][b] for src in p.rows] + [np.zeros(0, np.int64)])
                held[-1].append(r[np.isin(r, mine)])
        ask = [i for i, h in enumerate(held) if sum(len(r) for r in h)]  # a shard with no candidates is not called
        got = _gather([self.shards[i].inputs(held[i]) for i in ask])
        every = np.concatenate([g["rows"] for g in got] + [np.zeros(0, np.int64)])
        order = np.argsort(every, kind="stable")
        grows = every[order]

        def column(get, empty):
            vals = [get(g) for g in got]
            return np.concatenate(vals)[order] if vals else empty

        dims = self.dims
        pad = not len(grows)  # no candidates: one empty row, so that padding (read as row 0) has a row to read
        records = {c: column(lambda g: g["records"][c], np.empty(0, object)) for c in RECORD_COLUMNS}
        lex_text = {f: column(lambda g: g["lex_text"][f], np.empty(0, object)) for f in LEXICAL_FIELDS}
        emb = {t: column(lambda g: g["emb"][t], np.zeros((0, dims[t]), np.float32)) for t in CATALOG_TABLES}
        mask = {t: column(lambda g: g["emb_mask"][t], np.zeros(0, bool)) for t in CATALOG_TABLES}
        if pad:
            records = {c: np.asarray([""] if c == S.PRODUCT_ID else [None], object) for c in RECORD_COLUMNS}
            lex_text = {f: np.asarray([""], object) for f in LEXICAL_FIELDS}
            emb = {t: np.zeros((1, dims[t]), np.float32) for t in CATALOG_TABLES}
            mask = {t: np.zeros(1, bool) for t in CATALOG_TABLES}
        view = CatalogTables.view(records, lex_text, emb, mask, CatalogConfig(candidates=self.config),
                                  np.asarray([-1]) if pad else grows)
        if pad:
            view.live[:] = False
        rows = [np.searchsorted(grows, r).astype(np.int64) for r in cands.rows]
        lex = []
        for b in range(len(cands.rows)):
            lex.append({})
            for f in LEXICAL_FIELDS:
                r = np.concatenate([np.searchsorted(grows, held[i][b]) for i in ask] + [np.zeros(0, np.int64)])
                s = np.concatenate([parts[i].lex[b][f].at(held[i][b]) for i in ask] + [np.zeros(0, np.float32)])
                m = np.concatenate([parts[i].lex[b][f].matched(held[i][b]) for i in ask] + [np.zeros(0, np.float32)])
                lex[b][f] = RowScores(r, s, m)
        return Candidates(cands.queries, rows, lex, cands.qlen, cands.sources, cands.scores, cands.lists, view)


class ShardSearch(Stage):
    """``Queries -> Candidates`` over a split catalogue, ready for the re-rank: the router's candidate stage
    (scatter, merge, fuse), then each shard's part of the ranker's inputs of the merged candidates (their
    embedding rows and masks, records, BM25 scores and matched terms under the whole catalogue's statistics),
    assembled into a candidate-only view that the candidates carry (``cands.catalog``). The feature builder,
    ranker and explainer then run over the view as over one catalogue; the router never holds more than the
    candidates' rows. ``RankingPipeline.over_shards(router, ranker)`` is the whole search over shards.

    The candidates' rows index the view (``cands.catalog.catalogue_rows`` maps them back); ``lists`` keep
    catalogue rows.
    """

    def __init__(self, router: ShardRouter):
        self.router = router

    def transform(self, queries: Queries) -> Candidates:
        return self.router.gather(*self.router.candidates(queries))


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

    def inputs(self, rows: list[np.ndarray]) -> dict[str, Any]:
        return self.shard.inputs(rows)

    def ping(self) -> int:
        return len(self.shard.tables)

    def product(self, product_id: str) -> dict[str, Any] | None:
        return self.shard.product(product_id)

    def media_dirs(self) -> list[str]:
        return self.shard.media_dirs()

    def snapshot(self) -> int:
        return self.shard.snapshot()

    def close(self) -> None:
        self.shard.close()

    def next_row(self) -> int:
        return self.shard.end

    def holds(self, product_id: str) -> bool:
        return self.shard.holds(product_id)

    def upsert(self, *args, **kwargs) -> dict[str, Any]:
        return self.shard.upsert(*args, **kwargs)

    def delete(self, product_id: str) -> dict[str, Any] | None:
        return self.shard.delete(product_id)


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

    def inputs(self, rows: list[np.ndarray]):
        return self.actor.inputs.remote(rows)

    def next_row(self):
        return self.actor.next_row.remote()

    def holds(self, product_id: str):
        return self.actor.holds.remote(product_id)

    def upsert(self, record, lex_texts, vectors, row: int, attributes=None):
        return self.actor.upsert.remote(record, lex_texts, vectors, row, attributes)

    def delete(self, product_id: str):
        return self.actor.delete.remote(product_id)

    def product(self, product_id: str):
        return self.actor.product.remote(product_id)

    def media_dirs(self):
        return self.actor.media_dirs.remote()

    def snapshot(self):
        return self.actor.snapshot.remote()

    def close(self) -> None:
        """Close the shard's logs, then end the actor."""
        import ray

        try:
            ray.get(self.actor.close.remote())
        finally:
            ray.kill(self.actor)

    def ready(self) -> int:
        """Wait until the actor has loaded its shard; its number of products."""
        import ray

        return ray.get(self.actor.ping.remote())


# the service over shards --------------------------------------------------------------------------------------

def check_shard_engine(engine: str) -> str:
    """``engine`` if it is one of :data:`SHARD_ENGINES`; else an error that lists them."""
    if engine not in SHARD_ENGINES:
        raise FusionrankError(f"unknown shard engine {engine!r}; valid: {', '.join(SHARD_ENGINES)}")
    return engine


def shards_folder(index_dir: str | Path, k: int) -> Path:
    """Where ``K`` shards of the index in ``index_dir`` are saved (beside it: ``index-shards4``)."""
    d = Path(index_dir)
    return d.with_name(f"{d.name}-shards{int(k)}")


def build_shards(index, k: int, directory: str | Path, source: str | Path | None = None, log=print) -> Path:
    """Split a loaded index (:class:`~fusionrank.serving.index.SearchIndex`) into ``k`` saved shards in
    ``directory`` (``shard-0`` ... and :data:`SHARDS_FILE`), written beside it and renamed into place in one step."""
    import shutil
    import time

    d = Path(directory)
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    parts = split(index, k, log=lambda m: None)
    for i, shard in enumerate(parts):
        shard.save(tmp / f"shard-{i}")
        shard.close()
    (tmp / SHARDS_FILE).write_text(json.dumps({"format": 1, "shards": int(k), "products": len(index),
                                               "config": index.config.model_dump(mode="json"),
                                               "source": None if source is None else str(source)}, indent=1))
    old = d.with_name(d.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if d.exists():
        d.rename(old)
    tmp.rename(d)
    shutil.rmtree(old, ignore_errors=True)
    log(f"split {len(index):,} products into {k} shards in {d} in {time.perf_counter() - t0:.1f} s "
        f"({', '.join(f'{len(p.tables):,}' for p in parts)})")
    return d


class _DocFreq:
    """One BM25 field's document frequencies over the whole split catalogue (the router's sums, kept current by
    writes): what query understanding reads of a served index (``lexical[field].doc_freq``)."""

    def __init__(self, router: ShardRouter, field: str):
        self.router, self.field = router, field

    def doc_freq(self, word: str) -> int:
        return int(self.router.stats.fields[self.field].df.get(word, 0))


class ShardedIndex:
    """A split catalogue as the service serves it: the router (the candidate stage, and writes) and, asked of the
    shards, what the service reads of an index besides (its size and categories, a product, its media folders, a
    snapshot). :class:`~fusionrank.serving.service.SearchService` ranks over it with
    ``RankingPipeline.over_shards``; ``fusionrank serve MODEL --shards K`` opens one (:meth:`open`).

    The router runs in the service's process: it takes the writes in one order (a new product's catalogue row
    from one counter), so the shards have one router, and the service one process (no ``--workers`` or replicas).
    """

    sharded = True
    shared = False  # the shards are this service's own (writes reach them through the router)
    caught_up = 0

    def __init__(self, router: ShardRouter, config, directory: str | Path | None = None):
        self.router, self.config = router, config
        self.dims = dict(router.dims)
        self.lexical = {f: _DocFreq(router, f) for f in LEXICAL_FIELDS}
        self._directory = None if directory is None else Path(directory)
        self.lock = threading.RLock()
        self.version = sum(router.versions)

    @classmethod
    def open(cls, directory: str | Path, engine: str = "ray", ray_address: str | None = None,
             log=print) -> "ShardedIndex":
        """Load the shards saved in ``directory`` (:func:`build_shards`): each in a Ray actor (``engine="ray"``,
        on the running Ray runtime, the cluster at ``ray_address``, or a local one), or in this process (``local``)."""
        import time

        from ..ranking.catalog import CatalogConfig

        d = Path(directory)
        check_shard_engine(engine)
        if not (d / SHARDS_FILE).exists():
            raise FusionrankError(f"{d}: no saved shards (no {SHARDS_FILE}); split an index with `fusionrank serve MODEL --shards K`")
        meta = json.loads((d / SHARDS_FILE).read_text())
        config = CatalogConfig.model_validate(meta["config"])
        dirs = [d / f"shard-{i}" for i in range(int(meta["shards"]))]
        t0 = time.perf_counter()
        if engine == "ray":
            from ..engine import ray_runtime

            ray_runtime(ray_address)
            shards = [RayShard(x, scheduling_strategy="SPREAD") for x in dirs]  # on a cluster: across its nodes
            for s in shards:
                s.ready()
        else:
            shards = [Shard.load(x, log=log) for x in dirs]
        self = cls(ShardRouter(shards, config.candidates), config, d)
        where = "Ray actors" if engine == "ray" else "this process"
        log(f"serving index: {len(self):,} products in {len(dirs)} shards ({where}) loaded from {d} in "
            f"{time.perf_counter() - t0:.1f} s")
        return self

    @property
    def shards(self) -> list:
        return self.router.shards

    @property
    def directory(self) -> Path | None:
        return self._directory

    @property
    def log_repair(self) -> dict[str, Any]:
        """What loading the shards' change logs repaired, summed (the counts) over the shards."""
        out: dict[str, Any] = {}
        for r in self.router.log_repairs:
            for k, v in r.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[k] = out.get(k, 0) + v
        return out

    def __len__(self) -> int:
        return int(self.router.stats.n_live)

    @property
    def category_names(self) -> list[str]:
        return [name for _, (name, _n) in sorted(self.router.stats.categories.items())]

    def catch_up(self) -> int:
        """Nothing to apply: every write reaches the shards through this router."""
        return 0

    def product(self, product_id: str) -> dict[str, Any] | None:
        for p in _gather([s.product(product_id) for s in self.shards]):
            if p is not None:
                return p
        return None

    def upsert(self, record: dict[str, Any], lex_texts: dict[str, str], vectors: dict[str, np.ndarray | None],
               attributes: dict[str, str] | None = None) -> int:
        """Add or replace a product through the router; durable in its shard's logs when this returns."""
        row = self.router.upsert(record, lex_texts, vectors, attributes)
        with self.lock:
            self.version += 1
        return row

    def delete(self, product_id: str) -> bool:
        ok = self.router.delete(product_id)
        if ok:
            with self.lock:
                self.version += 1
        return ok

    def media_dirs(self) -> list[str]:
        """The folders holding the products' photos and clips, over every shard."""
        return sorted({x for dirs in _gather([s.media_dirs() for s in self.shards]) for x in dirs})

    def save(self, directory: str | Path | None = None) -> Path:
        """A new snapshot of every shard, each in its own folder (their change logs start empty)."""
        d = self._directory
        if d is None or (directory is not None and Path(directory).resolve() != d.resolve()):
            raise FusionrankError("a sharded index writes its snapshots in the shards' own folders only")
        with self.router._writes:  # no write between the shards' snapshots
            _gather([s.snapshot() for s in self.shards])
            with self.lock:
                self.version = 0
        return d

    def close(self) -> None:
        for s in self.shards:
            s.close()
