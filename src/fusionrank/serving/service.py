"""The search service core (importable, no HTTP): search, explanations, product writes, events, model swap.

:class:`SearchService` is what ``fusionrank.serving.app`` exposes over HTTP and
what the benchmarks call directly. A search runs the ranking path
(:class:`~fusionrank.ranking.RankingPipeline`: encode, retrieve, features, rank,
explain; the same stages training and evaluation use) over the updatable
:class:`~fusionrank.serving.index.SearchIndex`, and logs what it served.

The ranker sits behind a :class:`ModelHandle` that a swap replaces in one assignment;
a request reads the handle once, so it finishes with the model it started with and no
request fails during a swap.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import schema as S
from ..errors import FusionrankError, UnknownCategory
from ..modalities import SCALAR_FEATURES
from ..modeldir import ModelDir
from ..ranking import STAGES, QueryEncoder, RankingPipeline
from .index import SearchIndex
from .wal import RecordLog

__all__ = ["SearchService", "ModelHandle", "ModelMismatch", "UnknownCategory", "load_handle", "STAGES", "EVENT_TYPES"]

EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase")


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


def load_handle(model_dir: str | Path) -> ModelHandle:
    md = ModelDir.open(model_dir)
    ranker = md.load_ranker()
    return ModelHandle(ranker, md.version(), str(md.path.resolve()), md.config().data.title_field,
                       [g.name for g in ranker.groups_ or []], md.alpha())


class SearchService:
    def __init__(self, index: SearchIndex, model: ModelHandle, query_encoder: QueryEncoder | None = None,
                 data_dir: str | Path | None = None, product_encoder=None, recent_searches: int = 100_000,
                 log_max_bytes: int | None = None, log=print):
        self.index = index
        self.queries = query_encoder or QueryEncoder()
        self._model: ModelHandle | None = None
        self.install_model(model)
        self.pipeline = RankingPipeline.over(index, model.ranker, self.queries)
        self.data_dir = Path(data_dir) if data_dir else None
        self.product_encoder = product_encoder
        self._start_media_dirs: list[str] | None = None
        if product_encoder is not None and getattr(product_encoder, "media_dirs", ()) is None:
            product_encoder.media_dirs = self._index_media_dirs()
        self._recent: OrderedDict[str, tuple[str, frozenset]] = OrderedDict()
        self._recent_max = recent_searches
        self._log_lock = threading.Lock()
        self._files: dict[str, RecordLog] = {}
        self._swap_lock = threading.Lock()
        self.stage_observer = None  # callable(stage, seconds), set by the HTTP layer for metrics
        if log_max_bytes is None:
            from ..settings import get_settings

            log_max_bytes = get_settings().log_max_bytes
        self.log_max_bytes = log_max_bytes or None
        if self.data_dir:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                self.data_dir.chmod(0o700)
            except OSError:
                pass
            for name in ("searches.jsonl", "events.jsonl"):  # scanned and repaired now, not at the first write
                f = self._files[name] = RecordLog(self.data_dir / name, max_bytes=self.log_max_bytes, log=log)
                if name == "searches.jsonl":  # searches issued before a restart stay known to /events
                    for r in f.records[-self._recent_max:]:
                        if isinstance(r.get("search_id"), str):
                            self._recent[r["search_id"]] = (str(r.get("model_version")), frozenset(map(str, r.get("results") or ())))
                f.release_records()

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
        self._model, old = m, self._model
        return old  # type: ignore[return-value]

    def swap_model(self, model_dir: str | Path) -> tuple[ModelHandle, ModelHandle]:
        """Load the model in ``model_dir`` fully, then swap it in. Returns ``(old, new)``."""
        with self._swap_lock:
            new = load_handle(model_dir)
            old = self.install_model(new)
        return old, new

    # search ----------------------------------------------------------------
    def warm_up(self, query: str = "black shirt for men") -> float:
        """One unlogged search so the first user's request does not pay for lazy initialisation; returns ms."""
        t0 = time.perf_counter()
        self.search(query, k=10, record=False)
        return (time.perf_counter() - t0) * 1e3

    def search(self, query: str, k: int = 10, category: str | None = None, explain: bool = True,
               record: bool = True) -> dict[str, Any]:
        m = self.model  # one read: the whole request uses this model
        res = self.pipeline.search(query, k, category, explain, ranker=m.ranker, observe=self.stage_observer)
        hits, t = res.hits, res.timings_ms
        sid = uuid.uuid4().hex
        if not record:
            return {"search_id": sid, "timings_ms": t, "results": hits}
        shown = frozenset(h["product_id"] for h in hits)
        with self._log_lock:
            self._recent[sid] = (m.version, shown)
            if len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)
        query = query.strip()
        self._write("searches.jsonl", {"search_id": sid, "ts": time.time(), "query": query, "k": k, "category": category,
                                       "model_version": m.version, "results": [h["product_id"] for h in hits],
                                       "total_ms": t["total_ms"]})
        return {"search_id": sid, "query": query, "k": k, "category": category, "model_version": m.version,
                "candidates": int(len(res.candidates.rows[0])), "candidate_sources": res.candidates.sources[0],
                "query_cached": res.query_cached, "model_weights": (m.alpha or {}).get("weights"),
                "model_weights_kind": (m.alpha or {}).get("kind"), "timings_ms": t, "results": hits}

    # products --------------------------------------------------------------
    def put_product(self, product: dict[str, Any]) -> dict[str, Any]:
        """Validate, encode and index one product (replacing any with the same id); logged and fsync-ed before it returns."""
        if self.product_encoder is None:
            raise FusionrankError("this service has no product encoder; start it with the model's embedding store")
        record, lex, vectors, report = self.product_encoder.encode(product)
        self.index.upsert(record, lex, vectors, attributes=report.pop("attributes", None) or None)
        return {"product": self.index.product(record[S.PRODUCT_ID]), "encoded": report}

    def _index_media_dirs(self) -> list[str]:
        """The folders holding the media of the products loaded at start (used when no catalogue folders were given)."""
        from .media import MediaRoots

        n = self.index.n_rows
        paths = [*self.index.records[S.IMAGE][:n], *self.index.records[S.AUDIO][:n]]
        return [str(r) for r in MediaRoots.of_paths(paths).roots]

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
        """Check each event against the search it names, then append them all (or none) to the event log.

        With ``require_known`` (the public events key), an event must name a search this
        service issued (one of the last ``recent_searches``, kept across restarts through
        ``searches.jsonl``); otherwise an unknown search id is accepted as given.
        """
        problems = []
        with self._log_lock:
            for i, e in enumerate(events):
                known = self._recent.get(e["search_id"])
                if known is None:
                    if require_known:
                        problems.append(f"events[{i}].search_id: {e['search_id']} is not a search this service issued recently")
                    continue  # admin key: a search from before a restart, or evicted: accepted as given
                version, shown = known
                if e["model_version"] != version:
                    problems.append(f"events[{i}].model_version: search {e['search_id']} was served by {version!r}, "
                                    f"not {e['model_version']!r}")
                if e["product_id"] not in shown:
                    problems.append(f"events[{i}].product_id: {e['product_id']!r} was not in the results of search {e['search_id']}")
        if problems:
            raise ValueError("; ".join(problems[:10]) + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))
        now = time.time()
        self._write("events.jsonl", *({**e, "received": now} for e in events))
        return {"accepted": len(events)}

    def _write(self, name: str, *entries: dict) -> None:
        """Append to a data log; returns once the entries are on disk (ValueError for NaN/Infinity, nothing written)."""
        if not self.data_dir:
            return
        f = self._files.get(name)
        if f is None:
            with self._log_lock:
                f = self._files.get(name)
                if f is None:
                    f = self._files[name] = RecordLog(self.data_dir / name, max_bytes=self.log_max_bytes)
                    f.release_records()
        f.append(*entries)

    def close(self) -> None:
        with self._log_lock:
            for f in self._files.values():
                f.close()
            self._files.clear()
        self.index.close()

    def log_health(self) -> dict[str, Any]:
        """What opening each log repaired (torn tails cut off, damaged lines reported) and records appended since."""
        out = {"changes.jsonl": dict(self.index.log_repair)}
        for name, f in self._files.items():
            out[name] = {**f.repair.as_dict(), "appended": f.appended}
        out["repaired_total"] = sum(int(bool(v.get("torn_bytes"))) + int(v.get("corrupt_lines") or 0)
                                    for k, v in out.items() if isinstance(v, dict))
        return out

    def stats(self, admin: bool = False) -> dict[str, Any]:
        """Index, model and cache details; the model's path on the server only for the admin key."""
        m = self.model
        out = {"products": len(self.index), "model_version": m.version,
               "title_field": self.index.config.title_field, "categories": self.index.category_names,
               "query_cache": {"hits": self.queries.hits, "misses": self.queries.misses, "backend": self.queries.backend},
               "index_version": self.index.version, "logs": self.log_health()}
        if admin:
            out["model_path"] = m.path
        else:
            for v in out["logs"].values():
                if isinstance(v, dict):
                    v.pop("torn_copy", None)
        return out
