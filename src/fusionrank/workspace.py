"""Workspaces: where a data source's ingested catalogue and embedding store live between runs.

A workspace is keyed by the *content* of its source, not its path: the same folder
reached through a symlink, a bind mount or a byte-identical copy resolves to the same
workspace, so it is neither ingested nor encoded again. The key hashes
:func:`source_fingerprint` (the bytes of the source's table files and the entry counts of
its folders; photos and clips are never opened), the adapter, the product limit and the
adapter options::

    $FUSIONRANK_HOME/<source name>-<full|firstN>-<key>/
        workspace.json   key, fingerprint, adapter, limit, options, the path first ingested from
        catalog/         what `fusionrank ingest` writes
        store/           the embedding store (with manifest.json, see fusionrank.encode)
    $FUSIONRANK_HOME/content/   encoded values shared by every workspace's store

A folder named ``<source name>-<full|firstN>`` (e.g. ``fashion44k-full``) is used when it
matches, and so is a workspace of the earlier path-keyed layout
(``<name>-<tag>-<sha1(path|adapter|limit)[:8]>``): they may predate fingerprints, and are
then accepted when the catalogue's recorded source is this very folder, and the
fingerprint is recorded.

:func:`check_encoded` tells, without encoding or hashing any media file, whether a store
holds everything a ranker needs for a catalogue.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from . import schema as S
from .encode import (CONTENT_DIR, FAILURES_FILE, EncodeSettings, encode_catalog, inputs_digest, plan_features, projection_keys, read_json,
                     read_manifest, table_stamp, write_json)
from .errors import FusionrankError, StaleArtefactError
from .ingest import Catalog
from .ingest import ingest as run_ingest
from .ingest.adapters import adapter_options
from .settings import DEFAULT_FASHION44K_SOURCE, REPO_ROOT, get_settings
from .store import HASH, EmbeddingStore, text_hashes

WORKSPACE_FILE = "workspace.json"
#: files an adapter reads as tables (also gzipped); media are counted, never read
TABLE_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".txt")


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


# --- content keys --------------------------------------------------------------------------------
def _is_table(name: str) -> bool:
    n = name.lower()
    return (n[:-3] if n.endswith(".gz") else n).endswith(TABLE_SUFFIXES)


def _feed(h, name: str, path: str) -> None:
    h.update(f"F {name} {os.path.getsize(path)}\n".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


def source_fingerprint(source: str | Path) -> str | None:
    """sha1 of a source's content as adapters read it; None if the source does not exist.

    A file: its bytes (and suffix). A folder: the bytes and names of the table files in it
    and one folder below (``*.parquet``, ``*.csv``, ``*.tsv``, ``*.jsonl``, ``*.json``,
    ``*.txt``, gzipped or not) and the number of other entries of each sub-folder (photos,
    clips: listed, never opened). Hidden entries are skipped. The path itself is not part
    of it. Costs one read of the tables (fashion44k: 18 MB, ~0.1 s).
    """
    src = Path(source)
    if not src.exists():
        return None
    h = hashlib.sha1(b"fusionrank source v1\n")
    if src.is_file():
        _feed(h, "".join(src.suffixes), str(src))
        return h.hexdigest()
    with os.scandir(src) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for e in entries:
        if e.is_file() and _is_table(e.name):
            _feed(h, e.name, e.path)
        elif e.is_dir():
            others, tables = 0, []
            with os.scandir(e.path) as sub:
                for f in sub:
                    if f.name.startswith("."):
                        continue
                    if f.is_file() and _is_table(f.name):
                        tables.append((f.name, f.path))
                    else:
                        others += 1
            h.update(f"D {e.name} {others}\n".encode())
            for name, path in sorted(tables):
                _feed(h, f"{e.name}/{name}", path)
    return h.hexdigest()


def workspace_key(fingerprint: str, adapter: str, limit: int | None, options: dict | None = None) -> str:
    blob = json.dumps({"source": fingerprint, "adapter": adapter, "limit": limit, "options": options or {}},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]



def _same_place(recorded: str | None, source: Path) -> bool:
    """Whether a recorded source path is ``source`` (same file/folder, whatever the path)."""
    if not recorded:
        return False
    p = Path(os.path.expanduser(recorded))
    for c in ([p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]):
        try:
            if os.path.samefile(c, source):
                return True
        except OSError:
            pass
    return False


def _accepts(d: Path, want: dict, source: Path) -> bool:
    """Whether the existing workspace ``d`` is the one ``want`` (a workspace.json record) describes."""
    have = read_json(d / WORKSPACE_FILE)
    if have.get("key"):
        return have["key"] == want["key"]
    if want["options"]:  # layouts before fingerprints knew no adapter options
        return False
    rep = read_json(d / "catalog" / S.CATALOG_REPORT_FILE)
    return rep.get("adapter") == want["adapter"] and _same_place(rep.get("source"), source)


def locate_workspace(home: Path, source: Path, adapter: str, limit: int | None = None,
                     options: dict | None = None) -> tuple[Path, dict]:
    """The workspace folder of ``(source content, adapter, limit, options)`` and its workspace.json record."""
    home, source = Path(home), Path(source)
    name = f"{source.name}-{'full' if limit is None else f'first{limit}'}"
    legacy = home / f"{name}-{hashlib.sha1(f'{source.resolve()}|{adapter}|{limit}'.encode()).hexdigest()[:8]}"
    fp = source_fingerprint(source)
    if fp is None:  # the source is gone (e.g. a model's recorded source was moved): only paths are left
        return (home / name if (home / name).exists() else legacy), {}
    want = {"format": 1, "key": workspace_key(fp, adapter, limit, options), "fingerprint": fp, "source": str(source),
            "adapter": adapter, "limit": limit, "options": options or {}}
    dirs = sorted(d for d in home.iterdir() if d.is_dir()) if home.is_dir() else []
    if (home / name).is_dir() and _accepts(home / name, want, source):
        root = home / name
    else:  # any folder recording this key (whatever path it was made from), or named after it
        root = next((d for d in dirs if read_json(d / WORKSPACE_FILE).get("key") == want["key"]), None) or \
            next((d for d in dirs if d.name.endswith(f"-{want['key']}") and not (d / WORKSPACE_FILE).exists()), None)
        if root is None:
            root = legacy if legacy.is_dir() and _accepts(legacy, want, source) else home / f"{name}-{want['key']}"
    have = read_json(root / WORKSPACE_FILE)
    if root.is_dir() and (root / "catalog").is_dir() and not have.get("key"):
        # a workspace from before fingerprints: record it now; its catalogue's paths start at the recorded source
        want = {**want, "source": read_json(root / "catalog" / S.CATALOG_REPORT_FILE).get("source") or str(source)}
        write_json(root / WORKSPACE_FILE, want)
    elif have.get("source"):
        want = {**want, "source": have["source"]}
    return root, want


def _rebase_media(products: pd.DataFrame, old: Path, new: Path) -> pd.DataFrame:
    """Media paths under ``old`` moved under ``new`` (the same content reached through another path)."""
    if old == new:
        return products
    prefix = str(old).rstrip(os.sep) + os.sep
    out = products
    for col in (S.IMAGE, S.AUDIO):
        if col in out.columns:
            s = out[col]
            hit = s.notna() & s.astype(str).str.startswith(prefix)
            if hit.any():
                if out is products:
                    out = products.copy()
                out.loc[hit, col] = str(new).rstrip(os.sep) + os.sep + s[hit].str.slice(len(prefix))
    return out


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
        other = {k: v for k, v in self.adapter_args.items() if k != "limit"}  # limit is part of the key already
        self.root, self._record = locate_workspace(home, self.source, adapter, limit, other or None)
        self.catalog_dir, self.store_dir = self.root / "catalog", self.root / "store"

    def _own_catalog(self) -> bool:
        return bool(self._record) and self.catalog_dir == self.root / "catalog"

    def catalog(self, log=print, check_media: bool = True) -> Catalog:
        if (self.catalog_dir / S.CATALOG_PRODUCTS_FILE).exists():
            cat = Catalog.load(self.catalog_dir)
            if self._own_catalog():  # media paths point into the folder first ingested from: use this one's
                first, now = Path(self._record["source"]), self.source
                if now.is_file():  # a products file: media paths are relative to its folder
                    first, now = first.parent, now.parent
                cat.products = _rebase_media(cat.products, first, now)
            return cat
        log(f"ingesting {self.source} ({self.adapter}) -> {self.catalog_dir}")
        cat = run_ingest(self.source, self.catalog_dir, adapter=self.adapter, adapter_args=self.adapter_args,
                         check_media=check_media, progress=True)
        if self._own_catalog():
            self._record["source"] = str(self.source)
            write_json(self.root / WORKSPACE_FILE, self._record)
        return cat

    def encode(self, products: pd.DataFrame, settings: EncodeSettings, log=print, progress: bool = True,
               modalities=S.MODALITIES, engine=None) -> dict:
        name, args = (engine.name, engine.args) if engine is not None else ("local", {})
        home = self.root.parent  # a store under this workspace's home shares its content store
        content = home / CONTENT_DIR if self.store_dir.resolve().is_relative_to(home.resolve()) else None
        return encode_catalog(products, self.store_dir, settings, engine=name, engine_args=args,
                              progress=progress, log=lambda m: log("  " + m), modalities=list(modalities),
                              content_dir=content, catalog_dir=self.catalog_dir)


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


# --- freshness of a store, for the open path -----------------------------------------------------
def _hash_table(store: EmbeddingStore, feature: str) -> tuple[dict[str, str], dict]:
    """A feature's hash by product id and its metadata, without reading the vectors."""
    t = pq.read_table(store.path(feature), columns=[S.PRODUCT_ID, HASH])
    meta = json.loads((t.schema.metadata or {}).get(b"fusionrank", b"{}"))
    return dict(zip(t.column(S.PRODUCT_ID).to_pylist(), t.column(HASH).to_pylist())), meta


def _objects(values) -> np.ndarray:
    """A column as a numpy object array (None where missing), away from pandas' arrow strings."""
    return np.asarray(pd.Series(values).astype(object).where(pd.Series(values).notna(), None).tolist(), dtype=object)


def _some(ids, n: int = 3) -> str:
    ids = list(ids)
    return ", ".join(map(str, ids[:n])) + (", ..." if len(ids) > n else "")


def _products(n: int) -> str:
    return f"{n:,} product" + ("" if n == 1 else "s")


def _prepare_command(store_dir: Path, manifest: dict, settings: EncodeSettings, modalities: Sequence[str]) -> str:
    cat = manifest.get("catalog_dir")
    if not cat or not (Path(cat) / S.CATALOG_PRODUCTS_FILE).exists():
        sibling = store_dir.parent / "catalog"
        cat = str(sibling) if (sibling / S.CATALOG_PRODUCTS_FILE).exists() else "CATALOG"
    cmd = f"fusionrank encode {shlex.quote(str(cat))} --store {shlex.quote(str(store_dir))}"
    if set(modalities) != set(S.MODALITIES):
        cmd += f" --modalities {','.join(dict.fromkeys(['text', *modalities]))}"
    default = asdict(EncodeSettings())
    custom = {k: v for k, v in asdict(settings).items() if v != default[k]}
    if custom:
        cmd += f" --config ENCODE.toml  (an [encode] table with {json.dumps(custom, default=str)})"
    return cmd


def _failures_file(store_dir: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    p = store_dir / FAILURES_FILE
    for line in (p.read_text().splitlines() if p.exists() else []):
        r = json.loads(line)
        out.setdefault(r["feature"], set()).add(str(r[S.PRODUCT_ID]))
    return out


def check_encoded(products: pd.DataFrame, store_dir: Path, settings: EncodeSettings, modalities: Sequence[str]) -> None:
    """Raise :class:`StaleArtefactError` unless ``store_dir`` holds every feature a ranker of
    ``modalities`` needs for ``products``, encoded from this catalogue's content with ``settings``.

    Text features: the hash of each product's text must be its row's (a changed title is
    stale, a new product is missing). Media features: every product with a photo/clip must
    have a row or a failure recorded by the last encode (files are not read: a photo
    replaced in place under the same path is not detected). Trained features (image
    projection, PCA): a row per product with a base row, hashed from that base row. Rows
    of products no longer in the catalogue are ignored.

    A feature whose table is as the last encode left it (size and mtime recorded in
    ``manifest.json``) and whose recorded inputs digest equals this catalogue's is fresh
    without a row-by-row look; otherwise only ids and hashes are read, never vectors.
    """
    store_dir = Path(store_dir)
    problems: list[str] = []
    manifest = read_manifest(store_dir) if store_dir.is_dir() else {}
    if not store_dir.is_dir():
        problems.append(f"the store {store_dir} does not exist")
    else:
        store = EmbeddingStore(store_dir)
        products = products.reset_index(drop=True)
        ids = _objects(products[S.PRODUCT_ID].astype(str))
        recorded, skipped = manifest.get("features", {}), manifest.get("skipped", {})
        tables: dict[str, tuple[dict[str, str], dict]] = {}
        failures: dict[str, set[str]] | None = None

        def table(feature: str) -> tuple[dict[str, str], dict]:
            if feature not in tables:
                tables[feature] = _hash_table(store, feature)
            return tables[feature]

        for pf in plan_features(products, settings, modalities, store):
            if not store.exists(pf.name):
                if pf.name in skipped:
                    continue  # encode could not build it for this catalogue (e.g. too few (title, photo) pairs)
                problems.append(f"{pf.name}: not encoded")
                continue
            # fast path: the table is as the last encode left it, and that encode was given these very inputs
            ent = recorded.get(pf.name) or {}
            as_left = bool(ent.get("inputs")) and ent.get("file") == table_stamp(store.path(pf.name)) and \
                (pf.signature is None or ent.get("signature") == pf.signature)
            if pf.kind == "text":
                texts = _objects(pf.values)
                sel = np.flatnonzero(texts != None)  # noqa: E711  (elementwise)
                tids, tvals = ids[sel], [str(t) for t in texts[sel]]
                if as_left and not ent.get("failed") and ent["inputs"] == inputs_digest(tids, tvals):
                    continue
            elif pf.kind == "media":
                with_file = products[pf.column].notna().to_numpy()
                mids = ids[with_file]
                if as_left and ent["inputs"] == inputs_digest(mids, _objects(products[pf.column])[with_file]):
                    continue
            else:
                if not store.exists(pf.base):
                    continue  # reported with the base
                base, _ = table(pf.base)
                pids = [i for i in ids if i in base]
                fold = None if pf.folds is None else dict(zip(ids, pf.folds))
                base_hashes = projection_keys([base[i] for i in pids], None if fold is None else [fold[i] for i in pids])
                if as_left and ent["inputs"] == inputs_digest(pids, base_hashes):
                    continue
            # row by row
            have, meta = table(pf.name)
            if pf.signature is not None and meta.get("signature") != pf.signature:
                problems.append(f"{pf.name}: encoded with other encoder settings (signature {meta.get('signature')}, "
                                f"these settings give {pf.signature})")
            elif pf.kind == "text":
                want = text_hashes(tvals, pf.signature)
                got = [have.get(i) for i in tids]
                absent = np.array([g is None for g in got], bool)
                changed = np.array([g is not None and g != w for g, w in zip(got, want)], bool)
                if changed.any():
                    problems.append(f"{pf.name}: the text of {_products(int(changed.sum()))} changed since it was encoded "
                                    f"(e.g. {_some(tids[changed])})")
                if absent.any():
                    problems.append(f"{pf.name}: {_products(int(absent.sum()))} not encoded (e.g. {_some(tids[absent])})")
            elif pf.kind == "media":
                if ent:
                    failed = set(ent.get("failed", []))
                else:  # a store encoded before manifests: its failures file
                    failures = _failures_file(store_dir) if failures is None else failures
                    failed = failures.get(pf.name, set())
                lacking = [i for i in mids if i not in have and i not in failed]
                if lacking:
                    what = {S.IMAGE: "photo", S.AUDIO: "clip"}.get(pf.column, pf.column)
                    problems.append(f"{pf.name}: {_products(len(lacking))} with a {what} not encoded (e.g. {_some(lacking)})")
            else:  # derived from a base feature by a trained encoder, whose signature the table records
                want = text_hashes(base_hashes, meta.get("signature", ""))
                stale = [i for i, w in zip(pids, want) if have.get(i) != w]
                if stale:
                    problems.append(f"{pf.name}: {_products(len(stale))} not derived from the current {pf.base} rows "
                                    f"(e.g. {_some(stale)})")
    if problems:
        command = _prepare_command(store_dir, manifest, settings, modalities)
        msg = (f"the embedding store {store_dir} is not up to date with the catalogue ({_products(len(products))}):\n"
               + "".join(f"  - {p}\n" for p in problems)
               + f"prepare it with:\n  {command}\n"
               + "or run `fusionrank train --config CONFIG`, which ingests and encodes")
        raise StaleArtefactError(msg, problems=problems, command=command, store=str(store_dir))
