"""Retrieve-then-rerank: hybrid candidates -> per-modality features -> trained ranker.

:class:`RankingPipeline` is the one path used by training, evaluation and search,
so what is measured is what is served.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import schema as S
from .encoders.text import tokenize
from .features import MODALITIES, MODALITY_EMBEDDING, MODALITY_FEATURES, SCALAR_FEATURES, ProductIndex, Slates
from .errors import FusionrankError
from .rankers import FeatureGroup


def feature_groups(modalities: Sequence[str] = MODALITIES) -> list[FeatureGroup]:
    """Feature groups (one per modality) for the ranker, in :data:`MODALITIES` order."""
    bad = [m for m in modalities if m not in MODALITIES]
    if bad:
        raise FusionrankError(f"unknown modality {bad[0]!r}; valid: {', '.join(MODALITIES)}")
    col = {f: j for j, f in enumerate(SCALAR_FEATURES)}
    return [FeatureGroup(m, [col[f] for f in MODALITY_FEATURES[m]], k, MODALITY_EMBEDDING[m])
            for k, m in enumerate(MODALITIES) if m in modalities]


def _opt(v) -> str | None:
    """A missing optional field as None (pandas gives NaN for missing strings)."""
    return None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)


def embedding_tables(index: ProductIndex) -> dict[str, np.ndarray]:
    return {name: index.emb[name] for name in MODALITY_EMBEDDING.values()}


@dataclass
class SearchHit:
    product_id: str
    score: float
    rank: int
    title: str
    category: str | None
    image: str | None
    audio: str | None
    contributions: dict[str, float]
    weights: dict[str, float]
    matched_terms: dict[str, list[str]]
    features: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class RankingPipeline:
    def __init__(self, index: ProductIndex, ranker, modalities: Sequence[str] = MODALITIES):
        self.index, self.ranker = index, ranker
        self.modalities = list(modalities)
        self.tables = embedding_tables(index)

    def slates(self, query_ids, queries, qrels=None, allowed=None) -> Slates:
        return self.index.slates(list(map(str, query_ids)), list(queries), qrels=qrels, allowed=allowed)

    def score(self, slates: Slates) -> np.ndarray:
        return self.ranker.predict(slates, self.tables)

    def run(self, query_ids: Sequence[str], queries: Sequence[str], slates: Slates | None = None) -> pd.DataFrame:
        """A run over the whole catalogue: every query's candidates with their reranked scores.

        Products outside the candidate set are not listed (they rank below every candidate).
        """
        sl = slates if slates is not None else self.slates(query_ids, queries)
        sc = self.score(sl)
        valid = sl.rows >= 0
        qi = np.repeat(np.arange(len(sl)), valid.sum(1))
        return pd.DataFrame({S.QUERY_ID: np.asarray(sl.query_ids, dtype=object)[qi],
                             S.PRODUCT_ID: self.index.ids[sl.rows[valid]], S.SCORE: sc[valid].astype(np.float64)})

    def search(self, query: str, k: int = 10, category: str | None = None, explain: bool = True) -> tuple[list[SearchHit], dict[str, float]]:
        """Top ``k`` products for ``query`` with per-modality contributions; also stage timings (ms)."""
        if not query or not query.strip():
            raise FusionrankError("empty query")
        t = {}
        t0 = time.perf_counter()
        q_emb = self.index.encode_queries([query])
        t["encode_ms"] = (time.perf_counter() - t0) * 1e3
        allowed = None
        if category:
            allowed = self.index.categories == category.lower()
        t1 = time.perf_counter()
        rows = self.index.candidates([query], q_emb, allowed)
        t["retrieve_ms"] = (time.perf_counter() - t1) * 1e3
        t2 = time.perf_counter()
        sl = self.index.slates(["q"], [query], rows=rows, q_emb=q_emb)
        t["features_ms"] = (time.perf_counter() - t2) * 1e3
        t3 = time.perf_counter()
        if hasattr(self.ranker, "net_"):
            sc, w = self.ranker.predict(sl, self.tables, return_weights=True)
        else:
            sc, w = self.ranker.predict(sl, self.tables), None
        t["rank_ms"] = (time.perf_counter() - t3) * 1e3
        s = sc[0]
        order = np.argsort(-s, kind="stable")
        order = [i for i in order if np.isfinite(s[i])][:k]
        t4 = time.perf_counter()
        contrib = None
        if explain and hasattr(self.ranker, "contributions") and order:
            top = Slates(sl.query_ids, sl.queries, sl.rows[:, order], sl.x[:, order], sl.mask[:, order], sl.q, None)
            contrib = self.ranker.contributions(top, self.tables)[0]
        t["explain_ms"] = (time.perf_counter() - t4) * 1e3
        q_terms = set(tokenize(query))
        hits = []
        groups = [g.name for g in self.ranker.groups_]
        for rank, i in enumerate(order):
            row = int(sl.rows[0, i])
            p = self.index.products.iloc[row]
            title_terms = set(tokenize(str(self.index.bm25_text("title", row))))
            tr_terms = set(tokenize(str(self.index.bm25_text("transcript", row))))
            hits.append(SearchHit(
                product_id=str(p[S.PRODUCT_ID]), score=float(s[i]), rank=rank + 1, title=str(self.index.titles[row]) if getattr(self.index, 'titles', None) else str(p[S.TITLE]),
                category=_opt(p.get(S.CATEGORY)), image=_opt(p.get(S.IMAGE)), audio=_opt(p.get(S.AUDIO)),
                contributions={g: float(contrib[rank, j]) for j, g in enumerate(groups)} if contrib is not None else {},
                weights={g: float(w[0, i, j]) for j, g in enumerate(groups)} if w is not None else {},
                matched_terms={"title": sorted(q_terms & title_terms), "transcript": sorted(q_terms & tr_terms)},
                features={f: float(sl.x[0, i, j]) for j, f in enumerate(SCALAR_FEATURES)},
            ))
        t["total_ms"] = (time.perf_counter() - t0) * 1e3
        return hits, t
