"""The ranking path, one implementation for training, evaluation, the CLI and the service.

``Queries`` -> :class:`QueryEncoder` -> :class:`HybridRetriever` (candidates) ->
:class:`Featuriser` (features) -> :class:`Scorer` (a ranker) -> :class:`Explainer` (hits),
all reading one :class:`CatalogTables`; :class:`RankingPipeline` holds one of each.
"""
from .catalog import CatalogConfig, CatalogTables, VectorConfig
from .explain import Explainer, Scored, Scorer, occlusion_contributions
from .features import Featuriser, Slates, attach_grades, feature_groups, finish_features
from .lexical import LexicalField
from .pipeline import STAGES, RankingPipeline, SearchResult
from .query import QueryEncoder
from .retrieve import RETRIEVERS, CandidateConfig, Candidates, HybridRetriever, SourceLists, build_retriever, rrf_merge, topk_rows
from .stage import Queries, Stage, Then

__all__ = ["CatalogConfig", "CatalogTables", "VectorConfig", "Explainer", "Scored", "Scorer", "occlusion_contributions",
           "Featuriser", "Slates", "attach_grades", "feature_groups", "finish_features", "LexicalField", "STAGES",
           "RankingPipeline", "SearchResult", "QueryEncoder", "RETRIEVERS", "CandidateConfig", "Candidates",
           "HybridRetriever", "SourceLists", "build_retriever", "rrf_merge", "topk_rows", "Queries", "Stage", "Then"]
