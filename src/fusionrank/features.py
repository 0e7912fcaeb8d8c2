"""Catalogue-side tables and query-product features, per modality, with masks.

:class:`ProductIndex` holds, for one catalogue variant (e.g. ``title`` or
``title_sparse``): the embeddings of every modality with a presence mask, BM25
matrices for the lexical fields, and the vector indexes of the candidate stage.
:meth:`ProductIndex.slates` retrieves candidates for a batch of queries and
computes their features:

============  ==============================================  ========================
modality      scalar features (per query-product)              interaction embedding
============  ==============================================  ========================
text          BM25(title), its per-slate min-max, term          ``title`` (MiniLM)
              overlap(title), cos(query, title)
image         cos(query, photo projection), its min-max         ``image_proj``
audio         BM25(transcript), min-max, term overlap,          ``transcript`` (MiniLM)
              cos(query, transcript)
============  ==============================================  ========================

The learned interaction of a modality is the element-wise product of the query
embedding and the modality embedding, computed inside the ranker. A product that
lacks a modality has mask 0 for it and zeros in its features; fusion modules
renormalise over the present modalities instead of reading those zeros as data.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import schema as S
from .encode import TRANSCRIPT, field_values
from .encoders import BM25Encoder, Encoder, MiniLMEncoder
from .errors import FusionrankError
from .retrieval.dense import VectorIndex
from .retrieval.hybrid import CandidateConfig, rrf_merge, sparse_topk
from .store import EmbeddingStore

MODALITY_FEATURES: dict[str, tuple[str, ...]] = {
    "text": ("bm25_title", "bm25_title_mm", "overlap_title", "cos_title"),
    "image": ("cos_image", "cos_image_mm"),
    "audio": ("bm25_transcript", "bm25_transcript_mm", "overlap_transcript", "cos_transcript"),
}
MODALITY_EMBEDDING: dict[str, str] = {"text": "title", "image": "image_proj", "audio": "transcript"}
MODALITIES: tuple[str, ...] = tuple(MODALITY_FEATURES)
SCALAR_FEATURES: tuple[str, ...] = tuple(f for m in MODALITIES for f in MODALITY_FEATURES[m])


@dataclass
class Slates:
    """Candidates and features for a batch of queries (``B`` queries, ``N`` slots).

    ``rows``  int64 [B, N]: catalogue rows, -1 = padding.
    ``x``     float32 [B, N, F]: scalar features in :data:`SCALAR_FEATURES` order.
    ``mask``  bool [B, N, K]: modality present, in :data:`MODALITIES` order.
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


def _minmax(a: np.ndarray, valid: np.ndarray) -> np.ndarray:
    lo = np.where(valid, a, np.inf).min(1, keepdims=True)
    hi = np.where(valid, a, -np.inf).max(1, keepdims=True)
    rng = np.where(np.isfinite(hi - lo) & (hi - lo > 1e-9), hi - lo, 1.0)
    return np.where(valid, (a - np.where(np.isfinite(lo), lo, 0)) / rng, 0).astype(np.float32)


def finish_features(x: np.ndarray, valid: np.ndarray, mask: np.ndarray) -> None:
    """Fill the per-slate min-max features and zero absent modalities and padding, in place.

    ``x [B, N, F]`` holds the raw features (:data:`SCALAR_FEATURES` order), ``valid [B, N]``
    marks real candidates, ``mask [B, N, K]`` the modalities each candidate has. Training
    (:meth:`ProductIndex.slates`) and serving (:meth:`SearchIndex.slate`) both end here.
    """
    col = {f: j for j, f in enumerate(SCALAR_FEATURES)}
    x[:, :, col["bm25_title_mm"]] = _minmax(x[:, :, col["bm25_title"]], valid)
    x[:, :, col["cos_image_mm"]] = _minmax(x[:, :, col["cos_image"]], mask[:, :, 1])
    x[:, :, col["bm25_transcript_mm"]] = _minmax(x[:, :, col["bm25_transcript"]], mask[:, :, 2])
    for k, m in enumerate(MODALITIES):  # absent modality: features are exactly zero (and masked)
        for f in MODALITY_FEATURES[m]:
            x[:, :, col[f]] *= mask[:, :, k]
    x[~valid] = 0


@dataclass
class IndexConfig:
    title_field: str = S.TITLE
    text_encoder: dict = field(default_factory=lambda: {"name": "minilm", "args": {}})
    bm25: dict = field(default_factory=lambda: {"k1": 1.2, "b": 0.75})
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    vector_index: str = "exact"

    @classmethod
    def from_dict(cls, d: dict) -> "IndexConfig":
        d = dict(d)
        if "candidates" in d and isinstance(d["candidates"], dict):
            c = dict(d["candidates"])
            if "sources" in c:
                c["sources"] = tuple(c["sources"])
            d["candidates"] = CandidateConfig(**c)
        return cls(**d)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["candidates"]["sources"] = list(d["candidates"]["sources"])
        return d


class ProductIndex:
    """Everything the candidate stage and the feature builder need about the catalogue."""

    def __init__(self, config: IndexConfig | None = None):
        self.config = config or IndexConfig()
        self.ids: np.ndarray = np.zeros(0, dtype=object)
        self.products: pd.DataFrame | None = None
        self.emb: dict[str, np.ndarray] = {}
        self.emb_mask: dict[str, np.ndarray] = {}
        self.bm25: dict[str, BM25Encoder] = {}
        self.W: dict[str, sp.csr_matrix] = {}
        self.W_t: dict[str, sp.csc_matrix] = {}
        self.vindex: dict[str, VectorIndex] = {}
        self.text_encoder: Encoder | None = None
        self._row_of: pd.Index | None = None
        self._texts: dict[str, list[str]] = {}

    # construction -----------------------------------------------------------
    @classmethod
    def build(cls, products: pd.DataFrame, store: EmbeddingStore | str | Path, config: IndexConfig | None = None,
              log=print) -> "ProductIndex":
        from .encoders import build_encoder

        self = cls(config)
        cfg = self.config
        t0 = time.perf_counter()
        store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
        self.products = products.reset_index(drop=True)
        self.ids = self.products[S.PRODUCT_ID].astype(str).to_numpy(dtype=object)
        self._row_of = pd.Index(self.ids)
        enc = build_encoder(cfg.text_encoder["name"], **cfg.text_encoder.get("args", {}))
        self.text_encoder = enc
        ids = list(self.ids)
        title_feat = f"{cfg.title_field}.{enc.name}"
        self.emb["title"], self.emb_mask["title"] = store.matrix(title_feat, ids)
        if not self.emb_mask["title"].all():
            missing = int((~self.emb_mask["title"]).sum())
            raise FusionrankError(f"{missing} product(s) have no {title_feat!r} embedding in {store.root}; run `fusionrank encode` first")
        self.emb["image_proj"], self.emb_mask["image_proj"] = store.matrix(f"image_proj.{cfg.title_field}", ids, dim=enc.dim)
        self.emb["transcript"], self.emb_mask["transcript"] = store.matrix(f"{TRANSCRIPT}.{enc.name}", ids, dim=enc.dim)
        titles = field_values(self.products, cfg.title_field).fillna(self.products[S.TITLE]).astype(str).tolist()
        self.titles = titles  # the title each product is indexed with (depends on title_field)
        self.categories = self.products[S.CATEGORY].astype(str).str.lower().to_numpy()  # for search filters
        transcripts = self.products[S.PRODUCT_ID].map(store.text_map(f"{S.AUDIO}.whisper_tiny_en")).fillna("").astype(str).tolist()
        desc = self.products[S.DESCRIPTION].fillna("").astype(str).tolist() if S.DESCRIPTION in self.products else [""] * len(ids)
        # BM25 over title (+ description when a catalogue has one) and, separately, transcripts
        self._fit_bm25("title", [t if not d else f"{t} {d}" for t, d in zip(titles, desc)])
        self._fit_bm25("transcript", transcripts)
        for src in cfg.candidates.sources:
            kind, name = src.split(":")
            if kind == "dense":
                self.vindex[name] = VectorIndex(cfg.vector_index).build(self.emb[name], self.emb_mask[name])
        log(f"product index: {len(ids):,} products, image {int(self.emb_mask['image_proj'].sum()):,}, "
            f"transcript {int(self.emb_mask['transcript'].sum()):,}, built in {time.perf_counter() - t0:.1f} s")
        return self

    def bm25_text(self, name: str, row: int) -> str:
        """The text that field ``name`` of catalogue row ``row`` was indexed with."""
        return self._texts[name][row]

    def _fit_bm25(self, name: str, docs: list[str]) -> None:
        self._texts[name] = docs
        b = BM25Encoder(**self.config.bm25).fit(docs)
        self.bm25[name] = b
        self.W[name] = b.encode(docs).tocsr()
        self.W_t[name] = self.W[name].T.tocsr()

    @property
    def modality_mask(self) -> np.ndarray:
        """bool [P, K]: which modalities each product has."""
        return np.stack([self.emb_mask["title"], self.emb_mask["image_proj"], self.emb_mask["transcript"]], 1)

    def rows_of(self, product_ids: Sequence[str]) -> np.ndarray:
        return self._row_of.get_indexer(pd.Index([str(p) for p in product_ids]))

    # queries ------------------------------------------------------------------
    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.text_encoder.encode(list(queries))

    def candidates(self, queries: Sequence[str], q_emb: np.ndarray, allowed: np.ndarray | None = None) -> list[np.ndarray]:
        """Hybrid candidate rows per query (RRF-merged top ``n``)."""
        cfg = self.config.candidates
        per_source: list[np.ndarray] = []
        weights = []
        for src in cfg.sources:
            kind, name = src.split(":")
            if kind == "bm25":
                q = self.bm25[name].encode_queries(list(queries))
                W_t = self.W_t[name] if allowed is None else self.W_t[name].multiply(allowed[None, :]).tocsr()  # W_t is [vocab, P]
                per_source.append(sparse_topk(q, W_t, cfg.depth))
            elif kind == "dense":
                if allowed is None:
                    rows, _ = self.vindex[name].search(q_emb, cfg.depth)
                else:
                    s = q_emb @ self.emb[name].T
                    s[:, ~(allowed & self.emb_mask[name])] = -np.inf
                    from .retrieval.hybrid import topk_rows

                    rows = topk_rows(s, cfg.depth, np.isfinite(s))
                per_source.append(rows)
            else:
                raise FusionrankError(f"unknown candidate source {src!r}; valid kinds: bm25:<field>, dense:<embedding>")
            weights.append(float(cfg.weights.get(src, 1.0)))
        return [rrf_merge([ps[i] for ps in per_source], cfg.n, cfg.rrf_k, weights) for i in range(len(queries))]

    def slates(self, query_ids: Sequence[str], queries: Sequence[str], qrels: pd.DataFrame | None = None,
               rows: list[np.ndarray] | None = None, q_emb: np.ndarray | None = None, allowed: np.ndarray | None = None,
               batch: int = 512) -> Slates:
        """Candidates (unless ``rows`` are given) and their features for each query."""
        parts = []
        grades = None
        if qrels is not None:
            g = qrels[qrels[S.QUERY_ID].isin(set(map(str, query_ids)))]
            grades = {qid: dict(zip(d[S.PRODUCT_ID].astype(str), d[S.GRADE])) for qid, d in g.groupby(S.QUERY_ID)}
        for i in range(0, len(queries), batch):
            qs, qi = list(queries[i:i + batch]), list(query_ids[i:i + batch])
            qe = self.encode_queries(qs) if q_emb is None else q_emb[i:i + batch]
            rr = self.candidates(qs, qe, allowed) if rows is None else rows[i:i + batch]
            parts.append(self._features(qi, qs, qe, rr, grades))
        return Slates.concat(parts)

    def _features(self, qids, queries, q_emb, rows_list, grades) -> Slates:
        B = len(queries)
        N = max(1, max((len(r) for r in rows_list), default=1))
        rows = np.full((B, N), -1, np.int64)
        for b, r in enumerate(rows_list):
            rows[b, :len(r)] = r
        valid = rows >= 0
        safe = np.where(valid, rows, 0)
        F = len(SCALAR_FEATURES)
        x = np.zeros((B, N, F), np.float32)
        col = {f: j for j, f in enumerate(SCALAR_FEATURES)}
        for field_name in ("title", "transcript"):
            q = self.bm25[field_name].encode_queries(list(queries)).tocsr()
            W = self.W[field_name]
            qlen = np.maximum(np.diff(q.indptr), 1)
            # score[b, n] = W[rows[b, n]] . q[b], for all pairs at once
            sub = W[safe.ravel()]
            qrep = q[np.repeat(np.arange(B), N)]
            prod = sub.multiply(qrep).tocsr()
            x[:, :, col[f"bm25_{field_name}"]] = np.asarray(prod.sum(1)).reshape(B, N)
            prod.data[:] = 1.0
            x[:, :, col[f"overlap_{field_name}"]] = np.asarray(prod.sum(1)).reshape(B, N) / qlen[:, None]
        for emb, name in (("title", "cos_title"), ("image_proj", "cos_image"), ("transcript", "cos_transcript")):
            E = self.emb[emb][safe]  # [B, N, D]
            x[:, :, col[name]] = np.einsum("bnd,bd->bn", E, q_emb) * self.emb_mask[emb][safe]
        mask = self.modality_mask[safe] & valid[:, :, None]
        finish_features(x, valid, mask)
        y = None
        if grades is not None:
            y = np.full((B, N), -1.0, np.float32)
            for b, qid in enumerate(qids):
                gq = grades.get(str(qid), {})
                n = int(valid[b].sum())
                y[b, :n] = [gq.get(self.ids[r], 0) for r in rows[b, :n]]
        return Slates(list(map(str, qids)), list(queries), rows, x, mask, np.asarray(q_emb, np.float32), y)
