"""Fixtures of the ranking-path tests, over the tiny fashion44k-layout dataset.

``tables`` / ``sparse_tables`` are catalogue tables built straight from the tiny
workspace (no trained model needed); ``pipe`` is the tiny neural model's pipeline over
its own catalogue tables, as evaluation opens it. ``tests/conftest.py`` ingests,
encodes and trains once per session.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest


def quiet(_msg) -> None:
    pass


def workspace_tables(tiny_workspace, title_field: str = "title", codec: str = "exact", transcript_attributes: bool = False,
                     **candidates):
    """Catalogue tables of the tiny workspace for ``title_field`` (20 candidates from each source's top 20)."""
    from fusionrank.ranking import CandidateConfig, CatalogConfig, CatalogTables, VectorConfig

    ws, cat = tiny_workspace
    cfg = CatalogConfig(title_field=title_field, candidates=CandidateConfig(**{"n": 20, "depth": 20, **candidates}),
                        ann=VectorConfig(codec=codec), transcript_attributes=transcript_attributes)
    return CatalogTables.from_store(cat.products, ws.store_dir, cfg, "minilm", "whisper_tiny_en", log=quiet)


@pytest.fixture(scope="session")
def encoder(fusionrank_home):
    """One query encoder for the ranking tests (its ONNX export lands in the test home)."""
    from fusionrank.ranking import QueryEncoder

    return QueryEncoder()


@pytest.fixture(scope="session")
def uncached_encoder(fusionrank_home):
    """A query encoder that keeps nothing: every query vector is computed afresh."""
    from fusionrank.ranking import QueryEncoder

    return QueryEncoder(cache_size=0)


@pytest.fixture(scope="session")
def attrs(tiny_fashion):
    return tiny_fashion.attrs.set_index("product_id")


@pytest.fixture(scope="session")
def tables(tiny_workspace):
    return workspace_tables(tiny_workspace, "title")


@pytest.fixture(scope="session")
def sparse_tables(tiny_workspace):
    return workspace_tables(tiny_workspace, "title_sparse")


@pytest.fixture(scope="session")
def spoken_sparse_tables(tiny_workspace):
    """``title_sparse`` tables whose colour table also reads the transcripts (a model that ranks voice)."""
    return workspace_tables(tiny_workspace, "title_sparse", transcript_attributes=True)


@pytest.fixture(scope="session")
def feat_pipe(tables, encoder):
    """Encoder, retriever and feature builder over ``tables`` (no ranker: slates only, as training builds them)."""
    from fusionrank.ranking import RankingPipeline

    return RankingPipeline.over(tables, None, encoder)


@pytest.fixture(scope="session")
def sparse_pipe(sparse_tables, encoder):
    from fusionrank.ranking import RankingPipeline

    return RankingPipeline.over(sparse_tables, None, encoder)


@pytest.fixture(scope="session")
def model_dir(tiny_model):
    from fusionrank.modeldir import ModelDir

    return ModelDir.open(tiny_model[0])


@pytest.fixture(scope="session")
def model_tables(model_dir):
    """The frozen catalogue tables the tiny model ranks (exact vector search: the evaluation path)."""
    return model_dir.catalog_tables(log=quiet)


@pytest.fixture(scope="session")
def pipe(model_dir, model_tables, encoder):
    return model_dir.pipeline(model_tables, encoder=encoder)


@pytest.fixture(scope="session")
def lgbm_ranker(tiny_lgbm_model):
    from fusionrank.modeldir import ModelDir

    return ModelDir.open(tiny_lgbm_model[0]).load_ranker()


@pytest.fixture
def slates_of():
    """slates_of(pipe, query_ids, queries, rows) -> the slates of these queries with the given candidate rows.

    The retriever runs as usual (it also computes the BM25 scores the features reuse); only
    its candidate lists are replaced by ``rows`` before the feature builder.
    """
    from fusionrank.ranking import Queries

    def make(pipe, query_ids, queries, rows):
        qs = pipe.encoder.transform(Queries.of(queries, query_ids))
        cands = pipe.retriever.transform(qs)
        cands = dataclasses.replace(cands, rows=[np.asarray(r, np.int64) for r in rows])
        return pipe.featuriser.transform(cands)

    return make
