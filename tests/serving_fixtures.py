"""Helpers to build a serving index and a search service over a trained model directory.

Imported by test modules as ``from serving_fixtures import ...``: a module of its own, because
``from conftest import ...`` resolves to whichever conftest.py was imported first.
"""
from __future__ import annotations


def serving_index(model_dir, codec: str = "flat", title_field: str | None = None):
    """A SearchIndex of the model's catalogue (its title field unless given), not saved."""
    from fusionrank.modeldir import ModelDir

    return ModelDir.open(model_dir).catalog_tables(title_field, codec=codec, log=lambda m: None, updatable=True)


def make_service(model_dir, directory, ann: dict | None = None):
    """A SearchService over the tiny model with its own saved index copy and data folder."""
    from fusionrank.modeldir import ModelDir
    from fusionrank.serving import SearchService, load_handle
    from fusionrank.serving.products import ProductEncoder

    idx = serving_index(model_dir, (ann or {}).get("codec", "flat"))
    idx.save(directory / "index")
    md = ModelDir.open(model_dir)
    enc = ProductEncoder(idx.config.title_field, md.config().encode_settings(), md.catalog_location()[1],
                         transcript_colours=idx.config.transcript_attributes)
    return SearchService(idx, load_handle(model_dir), data_dir=directory / "data", product_encoder=enc)
