"""Workspaces: where a data source's ingested catalogue and embedding store live between runs."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from . import schema as S
from .encode import EncodeSettings, encode_catalog
from .errors import FusionrankError
from .ingest import Catalog
from .ingest import ingest as run_ingest
from .ingest.adapters import adapter_options
from .settings import DEFAULT_FASHION44K_SOURCE, REPO_ROOT, get_settings


def resolve_source(source: str, config_path: Path | None = None) -> Path:
    if source.rstrip("/") == DEFAULT_FASHION44K_SOURCE and get_settings().fashion44k:
        source = str(get_settings().fashion44k_dir)  # FUSIONRANK_FASHION44K overrides the shipped configs' default
    p = Path(os.path.expanduser(source))
    cands = [p] if p.is_absolute() else [Path.cwd() / p] + ([config_path.parent / p, config_path.parent.parent / p] if config_path else [])
    if not p.is_absolute():
        cands.append(REPO_ROOT / p)
    for c in cands:
        if c.exists():
            return c.resolve()
    raise FusionrankError(f"data source {source!r} not found (looked in: {', '.join(str(c) for c in cands)})")


class Workspace:
    """Where a source's ingested catalogue and embedding store live between runs."""

    def __init__(self, source: Path, adapter: str, limit: int | None = None, home: Path | None = None,
                 adapter_args: Mapping[str, Any] | None = None):
        home = get_settings().home if home is None else Path(home)
        # `limit` and `adapter_args` are both adapter options: validated together, a clash is an error
        opts = adapter_options(adapter, adapter_args, **({"limit": limit} if limit is not None else {}))
        limit = getattr(opts, "limit", None)
        self.source, self.adapter, self.limit = Path(source), adapter, limit
        self.adapter_args: dict[str, Any] = opts.model_dump(mode="json", exclude_defaults=True)
        other = {k: v for k, v in self.adapter_args.items() if k != "limit"}  # limit is in the name already
        tag = "full" if limit is None else f"first{limit}"
        name = f"{self.source.name}-{tag}"
        if not other and (home / name).exists():  # a workspace kept under the plain name (e.g. fashion44k-full)
            self.root = home / name
        else:
            key = f"{self.source.resolve()}|{adapter}|{limit}"
            if other:  # without other options the key (and so the folder) is the one of earlier versions
                key += "|" + json.dumps(other, sort_keys=True)
            h = hashlib.sha1(key.encode()).hexdigest()[:8]
            self.root = home / f"{name}-{h}"
        self.catalog_dir, self.store_dir = self.root / "catalog", self.root / "store"

    def catalog(self, log=print, check_media: bool = True) -> Catalog:
        if (self.catalog_dir / S.CATALOG_PRODUCTS_FILE).exists():
            return Catalog.load(self.catalog_dir)
        log(f"ingesting {self.source} ({self.adapter}) -> {self.catalog_dir}")
        return run_ingest(self.source, self.catalog_dir, adapter=self.adapter, adapter_args=self.adapter_args,
                          check_media=check_media, progress=True)

    def encode(self, products: pd.DataFrame, settings: EncodeSettings, log=print, progress: bool = True,
               modalities=S.MODALITIES, engine=None) -> dict:
        name, args = (engine.name, engine.args) if engine is not None else ("local", {})
        return encode_catalog(products, self.store_dir, settings, engine=name, engine_args=args,
                              progress=progress, log=lambda m: log("  " + m), modalities=list(modalities))


def catalog_from_path(path: Path, home: Path | None = None) -> Workspace:
    """A workspace for ``--catalog PATH``: an ingested catalogue dir or a raw fashion44k folder."""
    path = Path(path).resolve()
    if (path / S.CATALOG_REPORT_FILE).exists() and (path / S.CATALOG_PRODUCTS_FILE).exists():
        ws = Workspace(path, "native", None, home)
        ws.catalog_dir = path
        ws.store_dir = path.parent / "store" if (path.parent / "store").exists() else ws.root / "store"
        return ws
    if (path / "products.parquet").exists() and (path / "images").exists():
        return Workspace(path, "fashion44k", None, home)
    return Workspace(path, "native", None, home)


def check_encoded(products: pd.DataFrame, store_dir: Path, settings: EncodeSettings, modalities) -> None:
    """Raise :class:`StaleArtefactError` when the store lacks a feature ranking ``products`` needs (no media hashed)."""
    from .errors import StaleArtefactError
    from .modalities import transcript_feature
    from .store import EmbeddingStore, text_hash
    from .encode import field_values

    store = EmbeddingStore(store_dir)
    text = settings.text["name"]
    need = [f"{f}.{text}" for f in settings.projection_fields]
    def has(col):
        return col in products.columns and products[col].notna().any()

    if "image" in modalities and settings.projection and has(S.IMAGE):
        need += [f"image_proj.{f}" for f in settings.projection_fields]
    if "audio" in modalities and settings.transcriber and has(S.AUDIO):
        need += [transcript_feature(settings.transcriber["name"])]
    missing = [f for f in need if not store.exists(f)]
    hint = f"prepare it with `fusionrank encode CATALOG --store {store.root}` (or `fusionrank train`, which ingests and encodes)"
    if missing:
        raise StaleArtefactError(f"the embedding store at {store.root} has no {', '.join(missing)}; {hint}")
    enc = build_text_signature(settings)
    for f in settings.projection_fields:
        have = store.hashes(f"{f}.{text}")
        vals = field_values(products, f)
        stale = [pid for pid, v in zip(products[S.PRODUCT_ID].astype(str), vals)
                 if v is not None and have.get(pid) != text_hash(str(v), enc)]
        if stale:
            raise StaleArtefactError(f"the embedding store at {store.root} holds no current {f}.{text} vector for "
                                     f"{len(stale):,} product(s) (e.g. {stale[0]!r}); {hint}")


def build_text_signature(settings: EncodeSettings) -> str:
    from .encoders import build_encoder

    return build_encoder(settings.text["name"], **settings.text.get("args", {})).signature()
