"""The ranking path: understand -> encode -> retrieve -> features -> rank -> explain, one implementation for every caller.

:class:`RankingPipeline` holds one stage of each kind over one
:class:`~fusionrank.ranking.catalog.CatalogTables`. Training builds its slates with
:meth:`RankingPipeline.slates`, evaluation ranks with :meth:`RankingPipeline.run`,
``fusionrank search`` and the service answer with :meth:`RankingPipeline.search`. A
stage is swapped in one line::

    pipe = RankingPipeline.over(catalog, ranker)
    bm25_only = pipe.replace(retriever=HybridRetriever(catalog, CandidateConfig(sources=("bm25:title",))))
    other = pipe.replace(scorer=Scorer(lightgbm_ranker, catalog))

and the stages compose with ``>>`` (``pipe.encoder >> pipe.retriever >> pipe.featuriser``
is the stage that turns :class:`Queries` into :class:`Slates`).

Over a split catalogue, ``RankingPipeline.over_shards(router, ranker)`` keeps the feature builder,
ranker and explainer and swaps the retriever for the router's candidate stage plus a gather of the
candidates' inputs from their shards (:class:`~fusionrank.serving.shards.ShardSearch`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .. import schema as S
from ..modalities import modality
from ..errors import FusionrankError
from .explain import Explainer, Scored, Scorer
from .features import Featuriser, Slates, attach_grades
from .query import QueryEncoder
from .retrieve import Candidates, build_retriever
from .stage import Queries, Stage
from .understand import Understood, Verbatim

STAGES = ("understand", "encode", "retrieve", "features", "rank", "explain")


@dataclass
class SearchResult:
    """One query's answer: result records, candidates, and stage timings in ms."""

    hits: list[dict[str, Any]]
    candidates: Candidates
    timings_ms: dict[str, float]
    query_cached: bool
    scored: Scored | None = None  # the ranker's inputs and scores for every candidate
    order: np.ndarray | None = None  # slate positions of ``hits``, in shown order
    understood: Understood | None = None  # the query as rewritten for ranking, and how
    explainer: Explainer | None = None  # what explained ``hits``: its catalogue is the one ``scored``'s rows index

    @property
    def catalog(self):
        """The catalogue the slate's rows index: the pipeline's, or a sharded search's candidate-only view."""
        return None if self.explainer is None else self.explainer.catalog


@dataclass
class RankingPipeline:
    encoder: QueryEncoder
    retriever: Stage
    featuriser: Featuriser
    scorer: Scorer
    explainer: Explainer
    understanding: Stage = field(default_factory=Verbatim)
    batch_size: int = 256

    @classmethod
    def over(cls, catalog, ranker, encoder: QueryEncoder | None = None, text_encoder: dict | None = None,
             understanding: Stage | None = None) -> "RankingPipeline":
        """The default stages over ``catalog``: its configured retriever, the feature builder, ``ranker``, explanations.

        ``understanding`` (a :class:`~fusionrank.ranking.understand.QueryUnderstanding`) rewrites queries
        first; it is bound here to ``catalog``'s title field and the query encoder.
        """
        encoder = encoder or QueryEncoder(text_encoder=text_encoder)
        if understanding is None:
            understanding = Verbatim()
        elif hasattr(understanding, "bind"):
            understanding.bind(doc_freq=catalog.lexical[modality("text").lexical].doc_freq, embed=lambda t: encoder.encode_base(t)[0])
        return cls(encoder, build_retriever(catalog), Featuriser(catalog), Scorer(ranker, catalog), Explainer(catalog),
                   understanding)

    @classmethod
    def over_shards(cls, router, ranker, encoder: QueryEncoder | None = None, text_encoder: dict | None = None,
                    explain_contributions: bool = True) -> "RankingPipeline":
        """The same stages over a split catalogue: the router's candidate stage, then the ranker's inputs of the
        merged candidates gathered from their shards (:class:`~fusionrank.serving.shards.ShardSearch`); the
        feature builder, ranker and explainer read that candidate-only view (the candidates carry it).

        It answers :meth:`search`; :meth:`slates` and :meth:`run` (training, evaluation) need one catalogue.
        """
        from ..serving.shards import ShardSearch

        encoder = encoder or QueryEncoder(text_encoder=text_encoder)
        return cls(encoder, ShardSearch(router), Featuriser(), Scorer(ranker, None),
                   Explainer(None, explain_contributions))

    def replace(self, **stages) -> "RankingPipeline":
        """A copy with some stages swapped (``retriever=``, ``scorer=``, ...)."""
        return replace(self, **stages)

    def with_ranker(self, ranker) -> "RankingPipeline":
        return self.replace(scorer=Scorer(ranker, self.scorer.catalog))

    @property
    def catalog(self):
        return self.featuriser.catalog

    @property
    def ranker(self):
        return self.scorer.ranker

    @property
    def to_slates(self) -> Stage:
        """``Queries -> Slates``: understand, encode, retrieve, featurise."""
        return self.understanding >> self.encoder >> self.retriever >> self.featuriser

    # batches -----------------------------------------------------------------
    def slates(self, query_ids: Sequence[Any], queries: Sequence[str], qrels: pd.DataFrame | None = None,
               category: str | None = None) -> Slates:
        """Candidates and features of many queries (in batches), with grades when ``qrels`` are given."""
        if self.catalog is None:
            raise FusionrankError("slates and runs need one catalogue's tables; a pipeline over shards answers search()")
        qs = Queries.of(queries, query_ids, category)
        if not len(qs):
            raise FusionrankError("no queries")
        parts = [self.to_slates.transform(b) for b in qs.batches(self.batch_size)]
        sl = Slates.concat(parts)
        return attach_grades(sl, qrels, self.catalog.ids) if qrels is not None else sl

    def run(self, query_ids: Sequence[Any], queries: Sequence[str], slates: Slates | None = None) -> pd.DataFrame:
        """A run over the whole catalogue: every query's candidates with their scores.

        Products outside the candidate set are not listed (they rank below every candidate).
        """
        sl = slates if slates is not None else self.slates(query_ids, queries)
        sc = self.scorer.transform(sl).scores
        valid = sl.rows >= 0
        qi = np.repeat(np.arange(len(sl)), valid.sum(1))
        return pd.DataFrame({S.QUERY_ID: np.asarray(sl.query_ids, dtype=object)[qi],
                             S.PRODUCT_ID: self.catalog.ids[sl.rows[valid]], S.SCORE: sc[valid].astype(np.float64)})

    # one query ---------------------------------------------------------------
    def search(self, query: str, k: int = 10, category: str | None = None, explain: bool = True, ranker=None,
               observe=None, understanding=None) -> SearchResult:
        """Top ``k`` for one query, explained, with stage timings; ``ranker`` (and the ``understanding`` that
        goes with it) override the pipeline's for this call.

        ``observe(stage, seconds)`` is called once per stage (for metrics).
        """
        query = query.strip()
        if not query:
            raise FusionrankError("empty query")
        scorer = self.scorer if ranker is None else Scorer(ranker, self.catalog)
        t = [time.perf_counter()]
        understood = (self.understanding if understanding is None else understanding).understand(query)
        t.append(time.perf_counter())
        q, cached = self.encoder.encode(understood.rewritten)
        qs = Queries(["q"], [understood.rewritten], q[None, :], category)
        t.append(time.perf_counter())
        cands = self.retriever.transform(qs)
        explainer = self.explainer
        if cands.catalog is not None and cands.catalog is not self.catalog:  # a sharded search's candidate-only view
            scorer, explainer = Scorer(scorer.ranker, cands.catalog), Explainer(cands.catalog, explainer.contributions)
        t.append(time.perf_counter())
        sl = self.featuriser.transform(cands)
        t.append(time.perf_counter())
        scored: Scored = scorer.transform(sl)
        t.append(time.perf_counter())
        hits = explainer.hits(scored, scorer.ranker, k, 0, explain)
        order = scored.order(0, k)
        t.append(time.perf_counter())
        timings = {}
        for name, a, b in zip(STAGES, t[:-1], t[1:]):
            timings[f"{name}_ms"] = round((b - a) * 1e3, 3)
            if observe is not None:
                observe(name, b - a)
        timings["total_ms"] = round((t[-1] - t[0]) * 1e3, 3)
        return SearchResult(hits, cands, timings, cached, scored, order, understood, explainer)
