"""Assemble a :class:`SearchService` from a model directory (building and saving the index on first use)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import FusionrankError
from .index import SearchIndex, ServingConfig
from .products import ProductEncoder
from .query import QueryEncoder
from .service import SearchService, load_handle


def default_index_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / "index"


def build_index(model_dir: str | Path, catalog: str | Path | None = None, log=print, ann: dict | None = None) -> SearchIndex:
    """The serving index of the catalogue a model was trained on (or ``catalog``), from its embedding store."""
    from ..experiment import open_pipeline

    pipe, _ = open_pipeline(model_dir, catalog, None, log=log, progress=True)
    cfg = ServingConfig(title_field=pipe.index.config.title_field, candidates=pipe.index.config.candidates,
                        bm25=dict(pipe.index.config.bm25))
    if ann:
        cfg.ann.update(ann)
    return SearchIndex.from_product_index(pipe.index, cfg, log=log)


def open_service(model_dir: str | Path, index_dir: str | Path | None = None, rebuild: bool = False,
                 catalog: str | Path | None = None, data_dir: str | Path | None = None, log=print) -> SearchService:
    """Load (or build once and save) the index, load the model, and wire the service."""
    from ..experiment import ExperimentConfig

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FusionrankError(f"{model_dir}: not a model directory (no config.json); train one with `fusionrank train`")
    index_dir = Path(index_dir) if index_dir else default_index_dir(model_dir)
    if rebuild or not (index_dir / "index.json").exists():
        log(f"building the search index in {index_dir}")
        index = build_index(model_dir, catalog, log=log)
        index.save(index_dir)
    else:
        index = SearchIndex.load(index_dir, log=log)
    model = load_handle(model_dir)
    config = ExperimentConfig.model_validate(json.loads((model_dir / "config.json").read_text()))
    ws = json.loads((model_dir / "workspace.json").read_text()) if (model_dir / "workspace.json").exists() else {}
    settings = config.encode_settings()
    products = ProductEncoder(index.config.title_field, settings, ws.get("store"))
    svc = SearchService(index, model, QueryEncoder(), data_dir=data_dir or index_dir.parent / "service-data",
                        product_encoder=products)
    log(f"warm-up search: {svc.warm_up():.0f} ms")
    return svc
