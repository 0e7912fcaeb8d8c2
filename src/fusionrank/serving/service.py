"""The search service core (importable, no HTTP): search, explanations, product writes, events, model swap.

:class:`SearchService` is what ``fusionrank.serving.app`` exposes over HTTP and
what the benchmarks call directly. One search:

1. ``encode``   the query (ONNX MiniLM behind an LRU cache);
2. ``retrieve`` hybrid candidates (BM25 per field + ANN per table, RRF, top 200);
3. ``features`` per-modality features of the candidates (as in training);
4. ``rank``     the trained fusion ranker scores them;
5. ``explain``  per-modality contributions of the top ``k`` by occlusion, gate weights,
   matched query terms.

Each stage is timed. The ranker sits behind a :class:`ModelHandle` that a swap
replaces in one assignment; a request reads the handle once, so it finishes with
the model it started with and no request fails during a swap.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import schema as S
from ..encoders.text import tokenize
from ..errors import FusionrankError
from ..features import SCALAR_FEATURES
from .index import INDEXED_TITLE, TRANSCRIPT_TEXT, SearchIndex
from .query import QueryEncoder

STAGES = ("encode", "retrieve", "features", "rank", "explain")
EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase")


class UnknownCategory(FusionrankError, KeyError):
    """A category filter that names no category of the index."""


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


def model_version(model_dir: Path) -> str:
    h = hashlib.sha1()
    for p in sorted((model_dir / "ranker").glob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return f"{model_dir.name}-{h.hexdigest()[:10]}"


def load_handle(model_dir: str | Path) -> ModelHandle:
    from ..experiment import load_model

    d = Path(model_dir)
    config, ranker, _ = load_model(d)
    alpha = json.loads((d / "alpha.json").read_text()) if (d / "alpha.json").exists() else None
    groups = [g.name for g in getattr(ranker, "groups_", None) or []]
    return ModelHandle(ranker, model_version(d), str(d.resolve()), config.data.title_field, groups, alpha)


class SearchService:
    def __init__(self, index: SearchIndex, model: ModelHandle, query_encoder: QueryEncoder | None = None,
                 data_dir: str | Path | None = None, product_encoder=None, recent_searches: int = 100_000):
        self.index = index
        self._model: ModelHandle | None = None
        self.install_model(model)
        self.queries = query_encoder or QueryEncoder()
        self.data_dir = Path(data_dir) if data_dir else None
        self.product_encoder = product_encoder
        self._recent: OrderedDict[str, tuple[str, frozenset]] = OrderedDict()
        self._recent_max = recent_searches
        self._log_lock = threading.Lock()
        self._files: dict[str, Any] = {}
        self._swap_lock = threading.Lock()
        self.stage_observer = None  # callable(stage, seconds), set by the HTTP layer for metrics
        if self.data_dir:
            self.data_dir.mkdir(parents=True, exist_ok=True)

    # model -----------------------------------------------------------------
    @property
    def model(self) -> ModelHandle:
        return self._model  # type: ignore[return-value]

    def check_model(self, m: ModelHandle) -> None:
        r = m.ranker
        nf = getattr(r, "n_features_", None)
        if nf is not None and nf != len(SCALAR_FEATURES):
            raise ModelMismatch(f"model {m.version} expects {nf} features; this index provides {len(SCALAR_FEATURES)}")
        emb_dims = getattr(getattr(r, "net_", None), "emb_dims", None)
        if emb_dims:
            for g, d in zip(r.groups_, emb_dims):
                if g.table and d and self.index.dims.get(g.table) != d:
                    raise ModelMismatch(f"model {m.version} uses {d}-d {g.table!r} vectors; the index has {self.index.dims.get(g.table)}-d")
        if m.title_field != self.index.config.title_field:
            raise ModelMismatch(f"model {m.version} ranks the {m.title_field!r} title field; this index serves "
                                f"{self.index.config.title_field!r}")

    def install_model(self, m: ModelHandle) -> ModelHandle:
        """Check a loaded model against the index and make it the one new requests use (atomic)."""
        self.check_model(m)
        # warm it up so the first request after the swap is not slow
        self._model, old = m, self._model
        return old  # type: ignore[return-value]

    def swap_model(self, model_dir: str | Path) -> tuple[ModelHandle, ModelHandle]:
        """Load the model in ``model_dir`` fully, then swap it in. Returns ``(old, new)``."""
        with self._swap_lock:
            new = load_handle(model_dir)
            old = self.install_model(new)
        return old, new

    # search ----------------------------------------------------------------
    def _observe(self, stage: str, seconds: float) -> None:
        if self.stage_observer is not None:
            self.stage_observer(stage, seconds)

    def warm_up(self, query: str = "black shirt for men") -> float:
        """One unlogged search so the first user's request does not pay for lazy initialisation; returns ms."""
        t0 = time.perf_counter()
        self.search(query, k=10, record=False)
        return (time.perf_counter() - t0) * 1e3

    def search(self, query: str, k: int = 10, category: str | None = None, explain: bool = True,
               record: bool = True) -> dict[str, Any]:
        query = query.strip()
        if not query:
            raise FusionrankError("empty query")
        if category and not self.index.has_category(category):
            raise UnknownCategory(f"unknown category {category!r}; valid: {', '.join(self.index.category_names)}")
        m = self.model  # one read: the whole request uses this model
        t = {}
        t0 = time.perf_counter()
        q, cached = self.queries.encode(query)
        t1 = time.perf_counter()
        got = self.index.retrieve(query, q, category)
        t2 = time.perf_counter()
        sl, tables = self.index.slate(query, q, got)
        t3 = time.perf_counter()
        weights = None
        if len(got.rows) == 0:
            scores = np.zeros(0, np.float32)
        elif hasattr(m.ranker, "net_"):
            s, weights = m.ranker.predict(sl, tables, return_weights=True)
            scores = s[0, :len(got.rows)]
        else:
            scores = m.ranker.predict(sl, tables)[0, :len(got.rows)]
        order = np.lexsort((np.arange(len(scores)), -scores))[:k]
        t4 = time.perf_counter()
        contrib = None
        if explain and len(order) and hasattr(m.ranker, "contributions"):
            top_idx = order
            sub = type(sl)(sl.query_ids, sl.queries, np.arange(len(top_idx))[None, :], sl.x[:, top_idx], sl.mask[:, top_idx], sl.q)
            contrib = m.ranker.contributions(sub, {n: v[top_idx] for n, v in tables.items()})[0]
        hits = self._hits(query, got, sl, scores, order, weights, contrib, m)
        t5 = time.perf_counter()
        for name, a, b in zip(STAGES, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
            t[f"{name}_ms"] = round((b - a) * 1e3, 3)
            self._observe(name, b - a)
        t["total_ms"] = round((t5 - t0) * 1e3, 3)
        sid = uuid.uuid4().hex
        shown = frozenset(h["product_id"] for h in hits)
        if not record:
            return {"search_id": sid, "timings_ms": t, "results": hits}
        with self._log_lock:
            self._recent[sid] = (m.version, shown)
            if len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)
        self._write("searches.jsonl", {"search_id": sid, "ts": time.time(), "query": query, "k": k, "category": category,
                                       "model_version": m.version, "results": [h["product_id"] for h in hits],
                                       "total_ms": t["total_ms"]})
        return {"search_id": sid, "query": query, "k": k, "category": category, "model_version": m.version,
                "candidates": int(len(got.rows)), "candidate_sources": got.sources, "query_cached": cached,
                "model_weights": (m.alpha or {}).get("weights"), "model_weights_kind": (m.alpha or {}).get("kind"),
                "timings_ms": t, "results": hits}

    def _hits(self, query, got, sl, scores, order, weights, contrib, m: ModelHandle) -> list[dict[str, Any]]:
        q_terms = set(tokenize(query))
        out = []
        idx = self.index
        for rank, i in enumerate(order):
            row = int(got.rows[i])
            rec = idx.record(row)
            pid = rec[S.PRODUCT_ID]
            matched = {f: sorted(q_terms & set(tokenize(str(idx.lex_text[f][row] or "")))) for f in ("title", "transcript")}
            out.append({
                "rank": rank + 1, "product_id": pid, "score": float(scores[i]),
                "title": rec[INDEXED_TITLE] or rec[S.TITLE], "category": rec[S.CATEGORY], "brand": rec[S.BRAND],
                "color": rec[S.COLOR],
                "image_url": f"/products/{pid}/image" if rec[S.IMAGE] else None,
                "audio_url": f"/products/{pid}/audio" if rec[S.AUDIO] else None,
                "transcript": rec[TRANSCRIPT_TEXT],
                "modalities": rec["modalities"],
                "contributions": {g: float(contrib[rank, j]) for j, g in enumerate(m.groups)} if contrib is not None else {},
                "weights": {g: float(weights[0, i, j]) for j, g in enumerate(m.groups)} if weights is not None else {},
                "matched_terms": matched,
                "features": {f: float(sl.x[0, i, j]) for j, f in enumerate(SCALAR_FEATURES)},
            })
        return out

    # products --------------------------------------------------------------
    def put_product(self, product: dict[str, Any]) -> dict[str, Any]:
        """Validate, encode and index one product (replacing any with the same id)."""
        if self.product_encoder is None:
            raise FusionrankError("this service has no product encoder; start it with the model's embedding store")
        record, lex, vectors, report = self.product_encoder.encode(product)
        self.index.upsert(record, lex, vectors)
        return {"product": self.index.product(record[S.PRODUCT_ID]), "encoded": report}

    # events ----------------------------------------------------------------
    def record_events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Check each event against the search it names, then append them all (or none) to the event log."""
        problems = []
        with self._log_lock:
            for i, e in enumerate(events):
                known = self._recent.get(e["search_id"])
                if known is None:
                    continue  # a search from before a restart, or evicted: accepted as given
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
        if not self.data_dir:
            return
        text = "".join(json.dumps(e, default=str) + "\n" for e in entries)
        with self._log_lock:
            f = self._files.get(name)
            if f is None:
                f = self._files[name] = open(self.data_dir / name, "a", buffering=1)
            f.write(text)
            f.flush()

    def close(self) -> None:
        with self._log_lock:
            for f in self._files.values():
                f.close()
            self._files.clear()

    def stats(self) -> dict[str, Any]:
        m = self.model
        return {"products": len(self.index), "model_version": m.version, "model_path": m.path,
                "title_field": self.index.config.title_field, "categories": self.index.category_names,
                "query_cache": {"hits": self.queries.hits, "misses": self.queries.misses, "backend": self.queries.backend},
                "index_version": self.index.version}
