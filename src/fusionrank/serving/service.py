"""The search service core (importable, no HTTP): search, explanations, product writes, events, model swap.

:class:`SearchService` is what ``fusionrank.serving.app`` exposes over HTTP and
what the benchmarks call directly. A search runs the ranking path
(:class:`~fusionrank.ranking.RankingPipeline`: encode, retrieve, features, rank,
explain; the same stages training and evaluation use) over the updatable
:class:`~fusionrank.serving.index.SearchIndex`, and logs what it served to the event store
(:mod:`fusionrank.feedback.store`): the search, the products in shown order with their grid
cells, and the features, masks, query vector and product vectors the ranker scored
(:func:`fusionrank.feedback.logged.served_slate`), so training from clicks sees exactly what
the ranker saw. A configurable share of searches is randomised (the top result swapped with
one at a random rank) so position bias can be estimated from the clicks; another share can be
explored (``explore_count`` shown positions given to candidates the ranker put below the page,
:func:`~fusionrank.feedback.logged.draw_exploration`), so that retraining from the clicks sees
evidence about products the served ranker never shows. An explored product is logged with the rank
the ranker gave it (``logged_rank`` above ``k``).

The ranker sits behind a :class:`ModelHandle` that a swap replaces in one assignment;
a request reads the handle once, so it finishes with the model it started with and no
request fails during a swap. :class:`~fusionrank.serving.follow.RegistryFollower` drives the
swaps from a model registry (:mod:`fusionrank.models`).

While candidate models are interleaving (:meth:`SearchService.set_interleaving`), a share of
searches shows a team-draft interleaving (:func:`~fusionrank.feedback.interleave.team_draft`) of
the promoted ranking and one candidate's ranking of the same candidates; the search is logged with
the candidate's version and each shown product's team, is never randomised, and is left out of
click training. Its scores, explanations and logged features are the promoted model's.

Over a split catalogue (:class:`~fusionrank.serving.shards.ShardedIndex`, ``fusionrank serve MODEL --shards K``)
the same search runs through ``RankingPipeline.over_shards``: the router merges the shards' candidates and gathers
their inputs into a candidate-only view, which the result carries (``res.catalog``); the interleaved, explored and
logged parts of a search read that view as they read the one index. Writes go through the router; each product's
vectors are archived the first time a search serves it (the shards' tables stay in the shards).

As one of several worker processes (:mod:`fusionrank.serving.workers`), the service calls
:meth:`SearchService.sync` before every request: it applies the writes other workers logged to
the shared index (:meth:`~fusionrank.serving.index.SearchIndex.catch_up`) and swaps in the model
another worker was told to serve (:class:`~fusionrank.serving.workers.SharedModel`); an event
may name a search another worker served (looked up in the one event store).
"""
from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import schema as S
from ..errors import FusionrankError, UnknownCategory
from ..feedback.interleave import draw_interleaving, team_draft
from ..feedback.logged import VectorArchive, draw_exploration, draw_swap, explore_positions, served_slate
from ..feedback.schema import ACTIONS, DEFAULT_GRID_COLUMNS, Event, SearchLog, grid_cell
from ..modalities import SCALAR_FEATURES, modality
from ..modeldir import ModelDir
from ..ranking import STAGES, QueryEncoder, RankingPipeline
from ..ranking.explain import Scorer
from ..ranking.understand import Verbatim
from .index import SearchIndex
from .shards import ShardedIndex

__all__ = ["SearchService", "ModelHandle", "ModelMismatch", "UnknownCategory", "load_handle", "STAGES", "EVENT_TYPES", "RECENT_SEARCHES"]

EVENT_TYPES = ACTIONS


class ModelMismatch(FusionrankError):
    """A model that cannot rank this index (features, embedding sizes or title field differ)."""


@dataclass
class ModelHandle:
    ranker: Any
    version: str
    path: str
    title_field: str
    groups: list[str]
    alpha: dict | None = None
    loaded_at: float = field(default_factory=time.time)
    understanding: Any = None  # the model's query understanding (None: queries as typed)
    loaded_pid: int = field(default_factory=os.getpid)  # the process that loaded it (a forked worker's supervisor)


def load_handle(model_dir: str | Path) -> ModelHandle:
    md = ModelDir.open(model_dir)
    ranker = md.load_ranker()
    return ModelHandle(ranker, md.version(), str(md.path.resolve()), md.config().data.title_field,
                       [g.name for g in ranker.groups_ or []], md.alpha(), understanding=md.understanding())


#: searches whose id, model and products ``/events`` checks from memory (about 330 bytes each). It is a cache: an event
#: naming any other search (older, or served by another worker or replica) is checked against the event store,
#: which holds every search for its retention, so a small map keeps every serving process's memory small.
RECENT_SEARCHES = 5_000


def _shown(product_ids) -> str:
    """A served slate's product ids as one string, one id per line: a search's entry in the recent-searches map.
    Ids hold no line break (ingest and ``PUT /products`` refuse control characters). One object is about a quarter
    of a frozenset of the ids, whose strings a worker makes anew from the memory-mapped records."""
    return "\n".join(map(str, product_ids))


class SearchService:
    def __init__(self, index: SearchIndex | ShardedIndex, model: ModelHandle, query_encoder: QueryEncoder | None = None,
                 data_dir: str | Path | None = None, product_encoder=None, recent_searches: int = RECENT_SEARCHES,
                 events=None, feature_logging: bool = True, randomise_share: float | None = None,
                 explore_share: float | None = None, explore_depth: int | None = None,
                 explore_count: int | None = None, grid_columns: int = DEFAULT_GRID_COLUMNS, seed: int | None = None, log=print):
        """``events``: an open event store, or None to open the configured one in ``data_dir``
        (``FUSIONRANK_EVENTS_URL``, else ``data_dir/events.sqlite``); with neither, nothing is logged."""
        from ..settings import get_settings

        settings = get_settings()
        self.index = index
        self.queries = query_encoder or QueryEncoder()
        self._model: ModelHandle | None = None
        self.install_model(model)
        self._interleaving: tuple[tuple[ModelHandle, ...], float] = ((), 0.0)  # (candidates, share), replaced whole
        self.shared_model = None  # a SharedModel when this is one of several worker processes
        self.worker: int | None = None  # this worker's number among them
        self.started_by: str | None = None  # how that worker started: "fork" (from a loaded supervisor) or "spawn"
        self.swap_observer = None  # callable(old_version, new_version) after a swap, set by the HTTP layer for metrics
        self.pipeline = (RankingPipeline.over_shards(index.router, model.ranker, self.queries) if index.sharded
                         else RankingPipeline.over(index, model.ranker, self.queries))
        self.data_dir = Path(data_dir) if data_dir else None
        self.product_encoder = product_encoder
        self._start_media_dirs: list[str] | None = None
        if product_encoder is not None and getattr(product_encoder, "media_dirs", ()) is None:
            product_encoder.media_dirs = self._index_media_dirs()
        self._recent: OrderedDict[str, tuple[str, str]] = OrderedDict()  # search id -> (model version, _shown(ids))
        self.recent_searches = recent_searches
        self._log_lock = threading.Lock()
        self._swap_lock = threading.Lock()
        self.stage_observer = None  # callable(stage, seconds), set by the HTTP layer for metrics
        self.feature_logging = feature_logging
        self.randomise_share = settings.randomise_share if randomise_share is None else float(randomise_share)
        if not 0.0 <= self.randomise_share <= 1.0:
            raise FusionrankError(f"randomise_share must be in [0, 1]; got {self.randomise_share}")
        self.explore_share = settings.explore_share if explore_share is None else float(explore_share)
        if not 0.0 <= self.explore_share <= 1.0:
            raise FusionrankError(f"explore_share must be in [0, 1]; got {self.explore_share}")
        self.explore_depth = settings.explore_depth if explore_depth is None else int(explore_depth)
        if self.explore_depth < 2:
            raise FusionrankError(f"explore_depth must be at least 2; got {self.explore_depth}")
        self.explore_count = settings.explore_count if explore_count is None else int(explore_count)
        if self.explore_count < 1:
            raise FusionrankError(f"explore_count must be at least 1; got {self.explore_count}")
        self.grid_columns = int(grid_columns)
        self._rng = random.Random(seed)
        self.archive = VectorArchive()
        self.events = None
        if events is not None:
            self.open_events(events, log=log)
        elif self.data_dir:
            self.open_events(log=log)

    # event store -----------------------------------------------------------
    def open_events(self, events=None, upkeep: bool = True, log=print) -> None:
        """Open the event store (``events``, or the configured one in :attr:`data_dir`); with ``upkeep``, the store's
        upkeep at start: apply its retention and (with feature logging) store the vectors of every product it lacks.

        A store is a connection (and, for SQLite, a checkpointer thread) of this process: a worker forked from a
        loaded supervisor (:mod:`fusionrank.serving.workers`) opens its own with ``upkeep=False``, the supervisor
        having done the upkeep before the fork (and the worker keeping the archive it filled). No search is read
        back: ``/events`` checks a search this process has not served against the store.
        """
        if events is None:
            from ..feedback.store import open_service_store

            if self.data_dir is None:
                raise FusionrankError("this service has no data folder to open an event store in; pass one or an open store")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                self.data_dir.chmod(0o700)
            except OSError:
                pass
            events = open_service_store(self.data_dir)
        self.events = events
        if not upkeep:
            return
        purged = self.events.purge()
        if any(purged.values()) and log:
            log(f"event store: retention removed {purged}")
        if self.feature_logging:  # product vectors once, here, not on the search path
            if self.index.sharded:  # the shards' vectors stay in the shards: each product's are stored when first served
                self.archive.remember(self.events)
            else:
                self.archive.archive_catalog(self.index, self.events, log=log)

    def close_events(self) -> None:
        """Close the event store (its connections and threads); :meth:`open_events` opens it again."""
        if self.events is not None:
            self.events.close()
            self.events = None

    def reseed(self, seed: int | None = None) -> None:
        """A new random source for the randomised and interleaved searches (a forked worker must not repeat its siblings' draws)."""
        with self._log_lock:
            self._rng = random.Random(seed)

    # model -----------------------------------------------------------------
    @property
    def model(self) -> ModelHandle:
        return self._model  # type: ignore[return-value]

    def check_model(self, m: ModelHandle) -> None:
        r = m.ranker
        nf = r.n_features_
        if nf is not None and nf != len(SCALAR_FEATURES):
            raise ModelMismatch(f"model {m.version} expects {nf} features; this index provides {len(SCALAR_FEATURES)}")
        for table, d in r.table_dims().items():
            if self.index.dims.get(table) != d:
                raise ModelMismatch(f"model {m.version} uses {d}-d {table!r} vectors; the index has {self.index.dims.get(table)}-d")
        if m.title_field != self.index.config.title_field:
            raise ModelMismatch(f"model {m.version} ranks the {m.title_field!r} title field; this index serves "
                                f"{self.index.config.title_field!r}")

    def install_model(self, m: ModelHandle) -> ModelHandle:
        """Check a loaded model against the index and make it the one new requests use (atomic)."""
        self.check_model(m)
        if m.understanding is None:
            m.understanding = Verbatim()
        # reads the live index's word counts, so products added later count
        m.understanding.bind(doc_freq=self.index.lexical[modality("text").lexical].doc_freq, embed=lambda t: self.queries.encode_base(t)[0])
        self._model, old = m, self._model
        return old  # type: ignore[return-value]

    def swap_model(self, model_dir: str | Path) -> tuple[ModelHandle, ModelHandle]:
        """Load the model in ``model_dir`` fully, then swap it in. Returns ``(old, new)``.

        As one of several workers, the swap is then published to the others (they swap before their next request).
        """
        with self._swap_lock:
            new = load_handle(model_dir)
            old = self.install_model(new)
            if self.swap_observer is not None:  # under the lock: the metrics see swaps in order
                self.swap_observer(old.version, new.version)
            if self.shared_model is not None:
                self.shared_model.publish(new.path, new.version)
        return old, new

    def sync(self) -> None:
        """As one of several workers: apply the other workers' logged writes and serve the model last published.

        One ``stat`` of the change log and one of the model file when nothing changed; a no-op for a single process.
        """
        self.index.catch_up()
        sm = self.shared_model
        if sm is None:
            return
        m = sm.latest()
        if m is None or m["version"] == self.model.version:
            return
        with self._swap_lock:  # a request that arrives while another thread loads the model waits for it
            if m["version"] == self.model.version:  # that thread swapped meanwhile
                return
            new = load_handle(m["path"])
            old = self.install_model(new)
            if self.swap_observer is not None:
                self.swap_observer(old.version, new.version)

    def set_interleaving(self, candidates: list[ModelHandle] | tuple[ModelHandle, ...], share: float) -> None:
        """Interleave ``share`` of the searches with one of ``candidates`` (drawn per search); none or 0 stops it."""
        if not 0.0 <= share <= 1.0:
            raise FusionrankError(f"interleave share must be in [0, 1]; got {share}")
        for c in candidates:
            self.check_model(c)
        self._interleaving = (tuple(candidates), float(share))

    @property
    def interleaving(self) -> tuple[tuple[ModelHandle, ...], float]:
        """``(candidate handles, share)`` interleaved now."""
        return self._interleaving

    def rival_order(self, rival: ModelHandle, res) -> np.ndarray:
        """A search result's candidates (``res``, of the promoted model's :meth:`search`) in ``rival``'s order: what an
        interleaved search drafts its candidate team from (the same candidates, the same query understanding)."""
        return Scorer(rival.ranker, res.catalog).transform(res.scored.slates).order(0)

    # search ----------------------------------------------------------------
    def warm_up(self, query: str = "black shirt for men") -> float:
        """One unlogged search so the first user's request does not pay for lazy initialisation; returns ms."""
        t0 = time.perf_counter()
        self.search(query, k=10, record=False)
        return (time.perf_counter() - t0) * 1e3

    def search(self, query: str, k: int = 10, category: str | None = None, explain: bool = True,
               record: bool = True, client_id: str | None = None, session_id: str | None = None) -> dict[str, Any]:
        """Rank, explain and log one search. ``client_id``/``session_id`` are stored only as keyed hashes."""
        self.sync()
        m = self.model  # one read: the whole request uses this model
        rivals, share = self._interleaving  # and these candidates
        rival, coin = None, None
        if record and self.events is not None and rivals and share > 0:
            with self._log_lock:
                drawn = draw_interleaving(self._rng, share, len(rivals))
            if drawn is not None:
                rival, coin = rivals[drawn[0]], drawn[1]
        res = self.pipeline.search(query, k, category, explain and rival is None, ranker=m.ranker, observe=self.stage_observer,
                                   understanding=m.understanding)
        teams = None
        if rival is not None:  # the same candidates ranked by the rival, then one list drafted from both rankings
            t0 = time.perf_counter()
            shown, teams = team_draft(res.scored.order(0).tolist(), self.rival_order(rival, res).tolist(), k, coin)
            res.order = np.asarray(shown, np.int64)
            res.hits = res.explainer.hits(res.scored, m.ranker, k, 0, explain, order=res.order)
            dt = round((time.perf_counter() - t0) * 1e3, 3)
            res.timings_ms["interleave_ms"] = dt
            res.timings_ms["total_ms"] = round(res.timings_ms["total_ms"] + dt, 3)
        hits, t = res.hits, res.timings_ms
        sid = uuid.uuid4().hex
        if not record or self.events is None:
            return {"search_id": sid, "timings_ms": t, "understood": res.understood.as_dict(), "results": hits}
        swap = explore = None
        if rival is None:  # an interleaved list is neither randomised nor explored
            with self._log_lock:
                swap = draw_swap(self._rng, self.randomise_share, len(hits))
                if swap is None and len(hits) == k:
                    ranked = int((res.scored.slates.rows[0] >= 0).sum())
                    explore = draw_exploration(self._rng, self.explore_share, k, min(self.explore_depth, ranked),
                                                self.explore_count)
        logged_ranks = None
        if explore is not None:  # shown positions show candidates ranked below the page
            t0 = time.perf_counter()
            shown = explore_positions(k, explore)
            res.order = np.asarray(res.scored.order(0)[shown], np.int64)
            res.hits = hits = res.explainer.hits(res.scored, m.ranker, k, 0, explain, order=res.order)
            logged_ranks = shown + 1
            t["explore_ms"] = dt = round((time.perf_counter() - t0) * 1e3, 3)
            t["total_ms"] = round(t["total_ms"] + dt, 3)
        if swap is not None:
            hits[0], hits[swap] = hits[swap], hits[0]
        for i, h in enumerate(hits):
            h["rank"] = i + 1
            h["grid_row"], h["grid_col"] = (int(v) for v in grid_cell(i + 1, self.grid_columns))
        t0 = time.perf_counter()
        slate, vectors = served_slate(res, res.catalog, self.archive, swap, features=self.feature_logging,
                                      logged_ranks=logged_ranks)
        query = query.strip()
        entry = SearchLog(sid, query, time.time(), m.version, slate, client_id=client_id, session_id=session_id, k=k,
                          category=category, index_version=int(self.index.version), grid_columns=self.grid_columns,
                          randomised=swap is not None, total_ms=t["total_ms"], vectors=vectors,
                          interleaved_with=None if rival is None else rival.version, teams=teams)
        try:
            self.events.log_search(entry)  # with the product vectors first served here, in one transaction
        except BaseException:
            self.archive.forget(vectors)
            raise
        t["log_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        with self._log_lock:
            self._recent[sid] = (m.version, _shown(slate.product_ids))
            if len(self._recent) > self.recent_searches:
                self._recent.popitem(last=False)
        return {"search_id": sid, "query": query, "k": k, "category": category, "model_version": m.version,
                "grid_columns": self.grid_columns, "randomised": swap is not None, "explored": explore is not None,
                "interleaved": rival is not None,
                "candidates": int(len(res.candidates.rows[0])), "candidate_sources": res.candidates.sources[0],
                "query_cached": res.query_cached, "understood": res.understood.as_dict(), "model_weights": (m.alpha or {}).get("weights"),
                "model_weights_kind": (m.alpha or {}).get("kind"), "timings_ms": t, "results": hits}

    # products --------------------------------------------------------------
    def product(self, product_id: str) -> dict[str, Any] | None:
        """One product as the index holds it now (None if unknown)."""
        self.sync()
        return self.index.product(product_id)

    def put_product(self, product: dict[str, Any]) -> dict[str, Any]:
        """Validate, encode and index one product (replacing any with the same id); logged and fsync-ed before it returns."""
        if self.product_encoder is None:
            raise FusionrankError("this service has no product encoder; start it with the model's embedding store")
        record, lex, vectors, report = self.product_encoder.encode(product)
        self.index.upsert(record, lex, vectors, attributes=report.pop("attributes", None) or None)
        return {"product": self.index.product(record[S.PRODUCT_ID]), "encoded": report}

    def _index_media_dirs(self) -> list[str]:
        """The folders holding the media of the products loaded at start (used when no catalogue folders were given)."""
        return self.index.media_dirs()

    def media_roots(self):
        """Where product media may come from and be served from (:class:`~fusionrank.serving.media.MediaRoots`)."""
        from .media import MediaRoots

        if self.product_encoder is not None:
            return self.product_encoder.media_roots()
        if self._start_media_dirs is None:  # once: a scan of every row's paths must not run per media request
            self._start_media_dirs = self._index_media_dirs()
        return MediaRoots(self._start_media_dirs)

    # events ----------------------------------------------------------------
    def record_events(self, events: list[dict[str, Any]], require_known: bool = False) -> dict[str, Any]:
        """Check each event against the search it names, then store them all (or none); durable on return.

        An event is a dict with ``type`` (one of :data:`EVENT_TYPES`), ``search_id``,
        ``model_version``, ``product_id`` and optional ``position``, ``timestamp``, ``value``,
        ``client_id``, ``session_id``. The grid cell is derived from the position. With
        ``require_known`` (the public events key), an event must name a search this service
        issued (the last ``recent_searches`` are checked from memory, any other against the event
        store, which keeps them across restarts and workers); otherwise an unknown search id is
        accepted as given.
        """
        if self.events is None:
            raise FusionrankError("this service has no event store (start it with a data folder or FUSIONRANK_EVENTS_URL)")
        problems = []
        out: list[Event] = []
        now = time.time()
        with self._log_lock:
            unknown = {e["search_id"] for e in events if e["search_id"] not in self._recent}
        # searches this process no longer holds, or another worker served: the event store has them
        stored = {sid: (str(version), _shown(shown))
                  for sid, (version, shown) in (self.events.searches(unknown) if unknown else {}).items()}
        with self._log_lock:
            for i, e in enumerate(events):
                known = self._recent.get(e["search_id"]) or stored.get(e["search_id"])
                if known is None:  # not in the event store: never served, or older than its retention
                    if require_known:
                        problems.append(f"events[{i}].search_id: {e['search_id']} is not a search this service issued "
                                        "(or its event store no longer keeps it)")
                        continue
                    # the admin key: accepted as given
                else:
                    version, shown = known
                    if e["model_version"] != version:
                        problems.append(f"events[{i}].model_version: search {e['search_id']} was served by {version!r}, "
                                        f"not {e['model_version']!r}")
                    if e["product_id"] not in shown.split("\n"):
                        problems.append(f"events[{i}].product_id: {e['product_id']!r} was not in the results of search {e['search_id']}")
                pos = e.get("position")
                row, col = (int(v) for v in grid_cell(pos, self.grid_columns)) if pos else (None, None)
                out.append(Event(e["type"], e["search_id"], str(e["product_id"]), pos, e.get("timestamp"),
                                 e.get("client_id"), e.get("session_id"), e["model_version"], e.get("value"), row, col, now))
        if problems:
            raise ValueError("; ".join(problems[:10]) + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))
        self.events.record_events(out)
        return {"accepted": len(out)}

    def close(self) -> None:
        self.close_events()
        self.index.close()

    def log_health(self) -> dict[str, Any]:
        """What opening the change log repaired, and the event store's record counts."""
        out: dict[str, Any] = {"changes.jsonl": dict(self.index.log_repair)}
        if self.events is not None:
            out["events"] = self.events.counts()
        v = out["changes.jsonl"]
        out["repaired_total"] = int(bool(v.get("torn_bytes"))) + int(v.get("corrupt_lines") or 0)
        return out

    def stats(self, admin: bool = False) -> dict[str, Any]:
        """Index, model and cache details; the model's path on the server only for the admin key."""
        self.sync()
        m = self.model
        out = {"products": len(self.index), "model_version": m.version,
               "title_field": self.index.config.title_field, "categories": self.index.category_names,
               "query_cache": {"hits": self.queries.hits, "misses": self.queries.misses, "backend": self.queries.backend},
               "index_version": self.index.version, "logs": self.log_health(),
               "interleaving": {"candidates": [c.version for c in self._interleaving[0]], "share": self._interleaving[1]}}
        if self.worker is not None:
            out["worker"] = {"number": self.worker, "pid": os.getpid(), "changes_from_other_workers": self.index.caught_up,
                             "started_by": self.started_by, "model_loaded_by": m.loaded_pid}
        if admin:
            out["model_path"] = m.path
        else:
            for v in out["logs"].values():
                if isinstance(v, dict):
                    v.pop("torn_copy", None)
        return out
