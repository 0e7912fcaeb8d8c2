"""A model directory: the one place that knows its layout, and how the ranking path opens it.

::

    MODEL_DIR/config.json     the experiment config used (resolved)
    MODEL_DIR/workspace.json  where the ingested catalogue and embedding store are
    MODEL_DIR/ranker/         the ranker's weights (+ ranker.json naming its kind)
    MODEL_DIR/features.json   the names of the scalar features the ranker reads, in its column order
    MODEL_DIR/alpha.json      learned modality weights alpha_k or mean gate weights
    MODEL_DIR/metrics.json    validation and evaluation metrics
    MODEL_DIR/index/          the saved serving index (``fusionrank index``; ``fusionrank train`` writes it)
    MODEL_DIR/text_encoder/   the trained text encoder (``minilm_adapter`` only): queries are encoded with it
    MODEL_DIR/ray_train/      Ray Train checkpoints per epoch (``fusionrank train --engine ray`` only)

Preparing (ingest, encode, index) and opening are separate: :meth:`ModelDir.catalog_tables`
and :meth:`ModelDir.open_index` read what exists and never encode or hash media; a
missing or stale artefact is a :class:`~fusionrank.errors.StaleArtefactError` whose
message names the command that prepares it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FusionrankError, StaleArtefactError
from .modalities import SCALAR_FEATURES, feature_set

CONFIG, WORKSPACE, RANKER, ALPHA, METRICS, INDEX = "config.json", "workspace.json", "ranker", "alpha.json", "metrics.json", "index"
FEATURES = "features.json"


@dataclass
class WorkspaceRecord:
    """Where the model's catalogue and embedding store were kept (``workspace.json``)."""

    source: str
    catalog: str
    store: str
    encode: Any = None


class ModelDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._config = None

    @classmethod
    def open(cls, path: str | Path) -> "ModelDir":
        """An existing model directory (an error that says how to make one otherwise)."""
        d = cls(path)
        if not (d.path / CONFIG).exists():
            raise FusionrankError(f"{d.path}: not a model directory (no {CONFIG}); train one with `fusionrank train`")
        return d

    # layout ------------------------------------------------------------------
    @property
    def ranker_dir(self) -> Path:
        return self.path / RANKER

    @property
    def index_dir(self) -> Path:
        return self.path / INDEX

    @property
    def text_encoder_dir(self) -> Path:
        from .adaptation import TEXT_ENCODER_DIR

        return self.path / TEXT_ENCODER_DIR

    def config(self):
        """The experiment config the model was trained with (read once per ``ModelDir``)."""
        from .experiment import ExperimentConfig

        if self._config is None:
            config = ExperimentConfig.model_validate(json.loads((self.path / CONFIG).read_text()))
            if (self.text_encoder_dir / "config.json").exists():  # a trained text encoder: queries go through it
                config = config.with_text_encoder_state(self.text_encoder_dir)
            self._config = config
        return self._config

    def workspace(self) -> WorkspaceRecord:
        p = self.path / WORKSPACE
        if not p.exists():
            raise StaleArtefactError(f"{self.path}: no {WORKSPACE} (the model does not say which catalogue it ranks); "
                                     f"pass --catalog, or re-train with `fusionrank train`")
        return WorkspaceRecord(**json.loads(p.read_text()))

    def load_ranker(self):
        from .rankers import load_ranker
        from .rankers.selection import SelectedFeatures

        if not (self.ranker_dir / "ranker.json").exists():
            raise FusionrankError(f"{self.ranker_dir}: no saved ranker; train one with `fusionrank train`")
        ranker = load_ranker(self.ranker_dir)
        names = self.features(ranker)
        return ranker if names == SCALAR_FEATURES else SelectedFeatures(ranker, names)

    def features(self, ranker) -> tuple[str, ...]:
        """The scalar features ``ranker`` (this directory's) was trained on, in its column order: ``features.json``,
        or for a model saved before it recorded them, the feature set of the ranker's width."""
        p = self.path / FEATURES
        if p.exists():
            return tuple(json.loads(p.read_text())["scalar_features"])
        return SCALAR_FEATURES if ranker.n_features_ is None else feature_set(ranker.n_features_)

    def alpha(self) -> dict | None:
        p = self.path / ALPHA
        return json.loads(p.read_text()) if p.exists() else None

    def metrics(self) -> dict:
        p = self.path / METRICS
        return json.loads(p.read_text()) if p.exists() else {}

    def version(self) -> str:
        """``<dir name>-<hash of the ranker's files>``: changes whenever the weights do."""
        h = hashlib.sha1()
        for p in sorted(self.ranker_dir.glob("*")):
            if p.is_file():
                h.update(p.name.encode())
                h.update(p.read_bytes())
        return f"{self.path.name}-{h.hexdigest()[:10]}"

    # writing -------------------------------------------------------------------
    def write(self, *, config=None, workspace: WorkspaceRecord | None = None, ranker=None, alpha: dict | None = None,
              metrics: dict | None = None) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (self.path / CONFIG).write_text(json.dumps(config.model_dump(mode="json"), indent=2))
            self._config = config
        if workspace is not None:
            (self.path / WORKSPACE).write_text(json.dumps(workspace.__dict__, indent=2))
        if ranker is not None:
            ranker.save(self.ranker_dir)
            names = getattr(ranker, "feature_names", None) or feature_set(ranker.n_features_ or len(SCALAR_FEATURES))
            (self.path / FEATURES).write_text(json.dumps({"scalar_features": list(names)}, indent=2))
        if alpha is not None:
            (self.path / ALPHA).write_text(json.dumps(alpha, indent=2))
        if metrics is not None:
            (self.path / METRICS).write_text(json.dumps(metrics, indent=2))

    # opening the ranking path ------------------------------------------------------
    def catalog_location(self, catalog: str | Path | None = None) -> tuple[Path, Path]:
        """``(catalogue dir, store dir)``: the model's own, or the prepared workspace of ``catalog``."""
        from . import schema as S
        from .workspace import catalog_from_path

        if catalog is None:
            ws = self.workspace()
            cat_dir, store_dir = Path(ws.catalog), Path(ws.store)
        else:
            w = catalog_from_path(Path(catalog))
            cat_dir, store_dir = w.catalog_dir, w.store_dir
        if not (cat_dir / S.CATALOG_PRODUCTS_FILE).exists():
            raise StaleArtefactError(f"{catalog or cat_dir}: the catalogue is not ingested ({cat_dir} has no "
                                     f"{S.CATALOG_PRODUCTS_FILE}); prepare it with `fusionrank ingest SOURCE --adapter ADAPTER "
                                     f"--out {cat_dir}` and `fusionrank encode {cat_dir} --store {store_dir}`")
        return cat_dir, store_dir

    def catalog_tables(self, title_field: str | None = None, catalog: str | Path | None = None, codec: str | None = "exact",
                       log=print, updatable: bool = False, table_dtype: str | None = None):
        """The catalogue tables the model ranks, from the ingested catalogue and its store (nothing encoded).

        Frozen :class:`~fusionrank.ranking.CatalogTables` by default; with ``updatable`` a
        :class:`~fusionrank.serving.index.SearchIndex`. ``codec=None`` takes the config's ``[vectors]``,
        ``table_dtype=None`` its ``[index] table_dtype``.
        """
        from .ingest import Catalog
        from .ranking import CatalogTables
        from .serving.index import SearchIndex

        config = self.config()
        cat_dir, store_dir = self.catalog_location(catalog)
        products = Catalog.load(cat_dir).products
        tf = title_field or config.data.title_field
        self.check_prepared(products, store_dir, tf)
        self.derive_text_features(store_dir, tf, log)
        return (SearchIndex if updatable else CatalogTables).from_store(
            products, store_dir, config.catalog_config(tf, codec=codec, table_dtype=table_dtype), config.text_encoder_name,
            config.transcriber_name,
            log=log)

    def check_prepared(self, products, store_dir: Path, title_field: str) -> None:
        """Raise :class:`StaleArtefactError` if the store lacks what ranking ``products`` needs (no media is hashed)."""
        from .workspace import check_encoded

        config = self.config()
        settings = config.encode_settings(extra_title_fields=[title_field])
        check_encoded(products, store_dir, settings, config.encoded_modalities())

    def derive_text_features(self, store_dir: Path, title_field: str, log=print) -> None:
        """A derived text encoder's store features (``title.minilm_adapter``, ...) as this model's encoder gives them:
        derived again from the cached base vectors when the store holds another fit's (no text is encoded)."""
        from .adaptation import derive_features
        from .encoders import base_encoder, encoder_from_spec

        spec = self.config().text_encoder_spec
        if base_encoder(spec["name"]) is None:
            return
        if "state" not in spec:
            raise StaleArtefactError(f"{self.path}: ranks with the trained text encoder {spec['name']!r} but holds none "
                                     f"({self.text_encoder_dir} is missing); re-train it with `fusionrank train`")
        derive_features(store_dir, encoder_from_spec(spec), [title_field], log=log)

    def build_index(self, codec: str | None = None, catalog: str | Path | None = None, index_dir: str | Path | None = None,
                    log=print, table_dtype: str | None = None):
        """Build the serving index of the model's catalogue (or ``catalog``) from its store; save it to ``index/``."""
        index = self.catalog_tables(None, catalog, codec, log, updatable=True, table_dtype=table_dtype)
        index.save(Path(index_dir) if index_dir else self.index_dir)
        return index

    def open_index(self, index_dir: str | Path | None = None, log=print, shared: bool = False):
        """The saved serving index (``index/`` unless given); an error naming ``fusionrank index`` if there is none.

        ``shared``: opened by one of several worker processes (see :class:`~fusionrank.serving.index.SearchIndex`)."""
        from .serving.index import SearchIndex

        d = Path(index_dir) if index_dir else self.index_dir
        if not (d / "index.json").exists():
            raise StaleArtefactError(f"{d}: no search index; build it with `fusionrank index {self.path}`")
        index = SearchIndex.load(d, log=log, shared=shared)
        tf = self.config().data.title_field
        if index.config.title_field != tf:
            raise StaleArtefactError(f"{d}: the index serves the {index.config.title_field!r} title field but the model ranks "
                                     f"{tf!r}; rebuild it with `fusionrank index {self.path}`")
        return index

    def understanding(self):
        """The model's query understanding (``understanding.json``), or None if it was built without."""
        from .ranking.understand import QueryUnderstanding

        return QueryUnderstanding.load(self.path)

    def pipeline(self, tables, ranker=None, encoder=None, understanding: bool = True):
        """The ranking path over ``tables`` with this model's ranker (or ``ranker``) and its query understanding."""
        from .ranking import RankingPipeline

        config = self.config()
        return RankingPipeline.over(tables, ranker if ranker is not None else self.load_ranker(), encoder,
                                    text_encoder=config.text_encoder_spec,
                                    understanding=self.understanding() if understanding else None)
