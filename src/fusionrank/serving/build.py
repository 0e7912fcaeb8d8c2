"""Assemble a :class:`SearchService` from a model directory and its saved search index."""
from __future__ import annotations

from pathlib import Path

from ..modeldir import ModelDir
from ..ranking import QueryEncoder
from .index import SearchIndex
from .products import ProductEncoder
from .service import SearchService, load_handle


def catalog_media_dirs(cat_dir: str | Path) -> list[str]:
    """The folders holding the ingested catalogue's photos and clips: where PUT media may come from (with the upload roots)."""
    import pandas as pd

    from .. import schema as S
    from .media import MediaRoots

    f = Path(cat_dir) / S.CATALOG_PRODUCTS_FILE
    import pyarrow.parquet as pq

    names = pq.read_schema(f).names
    cols = [c for c in (S.IMAGE, S.AUDIO) if c in names]
    if not cols:
        return []
    df = pd.read_parquet(f, columns=cols)
    return [str(r) for r in MediaRoots.of_paths(v for c in cols for v in df[c].dropna().tolist()).roots]


def open_service(model_dir: str | Path, index_dir: str | Path | None = None, rebuild: bool = False,
                 catalog: str | Path | None = None, data_dir: str | Path | None = None, randomise_share: float | None = None,
                 feature_logging: bool = True, registry: str | Path | None = None, shared: bool = False,
                 query_threads: int = 2, explore_share: float | None = None, explore_depth: int | None = None,
                 explore_count: int | None = None, shards: int | None = None, shard_engine: str = "ray",
                 ray_address: str | None = None, log=print) -> SearchService:
    """Open the saved index (or, with ``rebuild``, build and save it first), load the model, wire the service.

    Nothing is encoded: a missing index is an error that names ``fusionrank index MODEL``. With a model
    ``registry`` (:class:`~fusionrank.models.ModelRegistry`) the service ranks with its promoted version
    instead of ``model_dir``'s ranker (``model_dir`` still gives the index and catalogue); follow later
    promotions with :class:`~fusionrank.serving.follow.RegistryFollower`. ``shared``: one of several worker
    processes over the same index (:mod:`fusionrank.serving.workers`). ``query_threads``: ONNX Runtime threads of
    the query encoder (1 in worker processes: a supervisor that forks them must have no other thread).

    ``shards``: serve the index split into that many shards (:class:`~fusionrank.serving.shards.ShardedIndex`),
    saved beside it (:func:`~fusionrank.serving.shards.shards_folder`; split from the index the first time, or
    again with ``rebuild``), each in a Ray actor (``shard_engine="ray"``, on the cluster at ``ray_address`` or a
    local Ray runtime) or in this process (``"local"``). From then on the shards hold the catalogue's writes.
    """
    md = ModelDir.open(model_dir)
    index_dir = Path(index_dir) if index_dir else md.index_dir
    if shards:
        index = _sharded(md, index_dir, shards, shard_engine, ray_address, rebuild, catalog, shared, log)
    elif rebuild or catalog is not None:
        log(f"building the search index in {index_dir}")
        index: SearchIndex = md.build_index(catalog=catalog, index_dir=index_dir, log=log)
    else:
        index = md.open_index(index_dir, log=log, shared=shared)
    config = md.config()
    cat_dir, store = md.catalog_location(catalog)
    products = ProductEncoder(index.config.title_field, config.encode_settings(), store, media_dirs=catalog_media_dirs(cat_dir),
                              text_encoder=config.text_encoder_spec, transcript_colours=index.config.transcript_attributes)
    ranker_dir = md.path
    if registry is not None:
        from ..models import ModelRegistry, RegistryError

        reg = ModelRegistry.open(registry)
        promoted = reg.read().promoted()
        if promoted is None:
            raise RegistryError(f"{reg.root} has no promoted version; add one with `fusionrank models add {reg.root} {md.path}`")
        ranker_dir = reg.model_path(promoted)
        log(f"registry {reg.root}: serving the promoted version {promoted.id}")
    svc = SearchService(index, load_handle(ranker_dir), QueryEncoder(threads=query_threads, text_encoder=config.text_encoder_spec),
                        data_dir=data_dir or index_dir.parent / "service-data", product_encoder=products,
                        randomise_share=randomise_share, explore_share=explore_share, explore_depth=explore_depth,
                        explore_count=explore_count, feature_logging=feature_logging, log=log)
    log(f"warm-up search: {svc.warm_up():.0f} ms")
    return svc


def _sharded(md: ModelDir, index_dir: Path, k: int, engine: str, ray_address: str | None, rebuild: bool,
             catalog, shared: bool, log):
    """The model's index split into ``k`` saved shards (split now when there are none, or with ``rebuild``), opened."""
    from ..errors import FusionrankError
    from .shards import SHARDS_FILE, ShardedIndex, build_shards, check_shard_engine, shards_folder

    if shared:
        raise FusionrankError("a sharded index is served by one process (its router orders the writes); "
                              "drop --workers or --replicas, or drop --shards")
    check_shard_engine(engine)  # before a split that may take minutes
    folder = shards_folder(index_dir, k)
    if rebuild or catalog is not None or not (folder / SHARDS_FILE).exists():
        if rebuild or catalog is not None:
            log(f"building the search index in {index_dir}")
            whole = md.build_index(catalog=catalog, index_dir=index_dir, log=log)
        else:
            whole = md.open_index(index_dir, log=log)
        try:
            build_shards(whole, k, folder, source=index_dir, log=log)
        finally:
            whole.close()
        del whole
    return ShardedIndex.open(folder, engine, ray_address, log=log)
