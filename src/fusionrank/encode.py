"""``fusionrank encode``: every modality of a catalogue into the embedding store.

Jobs, in order (each only encodes products whose content hash changed):

1. text fields (``title``, the ``title_sparse`` attribute, ``description``) -> MiniLM;
2. photos -> EfficientNet-Lite0 features;
3. spoken descriptions -> Whisper transcripts -> MiniLM, and log-mel/MFCC statistics;
4. the image->text projection, trained once per title field on the catalogue's own
   (title, photo) pairs and saved under ``<store>/models/``, applied to every photo;
   with ``attributes`` set, the photo colour head per title field (``photo_colour.<title field>``);
5. optional PCA of chosen features.

Feature names in the store are ``<source>.<encoder>``, e.g. ``title.minilm``,
``image.efficientnet_lite0``, ``audio.whisper_tiny_en``, ``transcript.minilm``,
``image_proj.title``.

Values of encoders that depend only on their input (text, photo and clip encoders,
speech-to-text) are also kept in a :class:`~fusionrank.store.ContentStore` under
``$FUSIONRANK_HOME/content``, keyed by content hash, when the store lies under that home
(every workspace's does): an item encoded for one catalogue is reused by every other
catalogue that holds the same text or file bytes. Trained encoders (the projection,
PCA) stay per store. ``<store>/manifest.json`` records what each feature was encoded
from (encoder signature, failed products, skipped projections) for
:func:`fusionrank.workspace.check_encoded`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from . import schema as S
from .encoders import Encoder, ImageTextProjection, base_encoder, build_encoder, fold_of
from .engine import Engine, get_engine
from .errors import FusionrankError
from .settings import get_settings
from .store import ContentStore, EmbeddingStore, file_hash, text_hash

TRANSCRIPT = "transcript"
MANIFEST_FILE = "manifest.json"
FAILURES_FILE = "failures.jsonl"
CONTENT_DIR = "content"  # under FUSIONRANK_HOME: the content store shared by every workspace
AUTO = "auto"


@dataclass
class EncodeSettings:
    """What to encode and with which encoders (each a ``{name, args}`` block)."""

    text: dict = field(default_factory=lambda: {"name": "minilm", "args": {}})
    image: dict = field(default_factory=lambda: {"name": "efficientnet_lite0", "args": {"resolution": 128}})
    transcriber: dict | None = field(default_factory=lambda: {"name": "whisper_tiny_en", "args": {}})
    audio_features: dict | None = field(default_factory=lambda: {"name": "logmel_stats", "args": {}})
    projection: dict | None = field(default_factory=lambda: {"name": "image_projection", "args": {}})
    text_fields: tuple[str, ...] = (S.TITLE, "title_sparse", S.DESCRIPTION)
    projection_fields: tuple[str, ...] = (S.TITLE, "title_sparse")
    pca: dict | None = None  # e.g. {"features": ["image.efficientnet_lite0"], "n_components": 128}
    batch_size: dict = field(default_factory=lambda: {"text": 256, "image": 64, "audio": 24, "projection": 4096})
    refit_projection: bool = False
    # visual attribute head (e.g. {"name": "colour_head", "args": {}}), one per title field of projection_fields: off by default
    attributes: dict | None = None

    def __post_init__(self) -> None:
        # a text encoder derived from another (minilm_adapter maps MiniLM's vectors) is trained with a model, and its
        # store features are derived from its base's (fusionrank.adaptation): encode stores the base's vectors
        base = base_encoder(self.text["name"]) if self.text else None
        if base is not None:
            self.text = {"name": base, "args": {}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncodeSettings":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise FusionrankError(f"unknown encode setting(s) {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}")
        d = dict(d)
        for k in ("text_fields", "projection_fields"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class JobStats:
    feature: str
    modality: str
    present: int = 0
    cached: int = 0
    encoded: int = 0
    failed: int = 0
    seconds: float = 0.0
    shared: int = 0  # of ``cached``: values found in the content store shared across workspaces

    @property
    def per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "modality": self.modality, "present": self.present, "cached": self.cached,
                "shared": self.shared, "encoded": self.encoded, "failed": self.failed, "seconds": round(self.seconds, 2),
                "items_per_second": round(self.per_second, 1)}


def inputs_digest(ids: Sequence[str], values: Sequence[str]) -> str:
    """A short hash of a job's inputs (ids and texts, paths or base hashes), in order; a few ms for 44k."""
    blob = json.dumps([[str(i) for i in ids], [str(v) for v in values]])  # JSON: unambiguous, ASCII, C-fast
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def field_values(products: pd.DataFrame, name: str) -> pd.Series:
    """A text field as a Series (column or attribute); missing -> None."""
    if name in products.columns:
        s = products[name]
    else:
        s = pd.Series([(a or {}).get(name) for a in products[S.ATTRIBUTES]], index=products.index)
    return s.where(s.notna() & (s.astype(str).str.strip() != ""), None)


def indexed_titles(products: pd.DataFrame, title_field: str) -> list[str]:
    """The title each product is indexed with for ``title_field`` (its value, else the title)."""
    return field_values(products, title_field).fillna(products[S.TITLE]).astype(str).tolist()


class Encoding:
    """Runs encode jobs against one store with one engine and records stats and failures."""

    def __init__(self, store: EmbeddingStore, engine: Engine, settings: EncodeSettings, progress: bool = True,
                 log: Callable[[str], None] | None = None, content: ContentStore | None = None):
        self.store, self.engine, self.settings, self.progress = store, engine, settings, progress
        self.content = content
        self.log = log or (lambda m: None)
        self.stats: list[JobStats] = []
        self.failures: list[dict] = []
        self.meta: dict[str, dict] = {}      # feature -> encoder meta of this run's jobs
        self.skipped: dict[str, str] = {}    # feature -> why it was not built
        self.inputs: dict[str, str] = {}     # feature -> inputs_digest of what this run's job was given
        self._encoders: dict[str, Encoder] = {}
        self.checkpoint_seconds = 120.0

    def encoder(self, spec: dict) -> Encoder:
        key = json.dumps(spec, sort_keys=True)
        if key not in self._encoders:
            self._encoders[key] = build_encoder(spec["name"], **spec.get("args", {}))
        return self._encoders[key]

    # generic job ---------------------------------------------------------
    def run_job(self, feature: str, modality: str, encoder: Encoder, ids: Sequence[str], items: Sequence[Any],
                hashes: Sequence[str | None], batch_size: int, reuse: dict[str, np.ndarray | str] | None = None,
                inputs: str | None = None) -> JobStats:
        """Encode the items whose hash changed. ``inputs`` (an :func:`inputs_digest`) is only recorded in the manifest."""
        st = JobStats(feature, modality, present=len(ids))
        if inputs is not None:
            self.inputs[feature] = inputs
        t0 = time.perf_counter()
        old = self.store.hashes(feature)
        todo_idx: list[int] = []
        new_ids, new_hashes, new_vals = [], [], []
        for i, (pid, h) in enumerate(zip(ids, hashes)):
            if h is None:
                st.failed += 1
                self.failures.append({"feature": feature, S.PRODUCT_ID: pid, "reason": f"cannot read {items[i]}"})
            elif old.get(pid) == h:
                st.cached += 1
            elif reuse is not None and h in reuse:
                st.cached += 1
                new_ids.append(pid); new_hashes.append(h); new_vals.append(reuse[h])
            else:
                todo_idx.append(i)
        # trained encoders (projection, PCA) depend on the catalogue: only the others share values
        shared = self.content if self.content is not None and not encoder.trainable else None
        if shared is not None and todo_idx:
            found = shared.lookup(encoder.name, [hashes[i] for i in todo_idx])
            rest = []
            for i in todo_idx:
                v = found.get(hashes[i])
                if v is None:
                    rest.append(i)
                    continue
                st.cached += 1
                st.shared += 1
                new_ids.append(ids[i]); new_hashes.append(hashes[i]); new_vals.append(v)
            todo_idx = rest
        # identical inputs (same hash) are encoded once
        uniq: dict[str, int] = {}
        enc_items, enc_of = [], []
        for i in todo_idx:
            h = hashes[i]
            if h not in uniq:
                uniq[h] = len(enc_items)
                enc_items.append(items[i])
            enc_of.append(uniq[h])
        results: list[Any] = [None] * len(enc_items)
        errors: dict[int, str] = {}
        meta = {"encoder": encoder.name, "signature": encoder.signature(), "modality": modality}
        self.meta[feature] = meta
        last_flush = time.perf_counter()
        for start, out in self.engine.map(encoder, enc_items, batch_size, desc=feature, progress=self.progress):
            good = np.flatnonzero(out.ok)
            for j, g in enumerate(good):
                results[start + g] = out.values[j]
            for k, e in out.errors.items():
                errors[start + k] = e
            if time.perf_counter() - last_flush > self.checkpoint_seconds:
                # checkpoint: a long job that is stopped keeps what it has encoded so far
                done = [(ids[i], hashes[i], results[u]) for i, u in zip(todo_idx, enc_of) if results[u] is not None]
                if done:
                    self._write(feature, encoder, [d[0] for d in done], [d[1] for d in done], [d[2] for d in done], None, meta)
                    if shared is not None:
                        shared.add(encoder.name, [d[1] for d in done], [d[2] for d in done])
                last_flush = time.perf_counter()
        for i, u in zip(todo_idx, enc_of):
            if results[u] is None:
                st.failed += 1
                self.failures.append({"feature": feature, S.PRODUCT_ID: ids[i], "reason": errors.get(u, "encoder returned nothing")})
                continue
            st.encoded += 1
            new_ids.append(ids[i]); new_hashes.append(hashes[i]); new_vals.append(results[u])
        # a product whose input failed must not keep the row encoded from its previous input
        failed = {f[S.PRODUCT_ID] for f in self.failures if f["feature"] == feature}
        keep = [pid for pid, h in zip(ids, hashes) if h is not None and pid not in failed]
        if new_ids or set(old) - set(keep) or not self.store.exists(feature):
            self._write(feature, encoder, new_ids, new_hashes, new_vals, keep, meta)
        if shared is not None:
            self._share(shared, feature, encoder, ids, hashes, old, todo_idx, enc_of, results)
        st.seconds = time.perf_counter() - t0
        self.stats.append(st)
        shared_note = f" ({st.shared} from the shared content store)" if st.shared else ""
        self.log(f"{feature}: {st.encoded} encoded, {st.cached} cached{shared_note}, {st.failed} failed in {st.seconds:.1f} s")
        return st

    def _share(self, shared: ContentStore, feature: str, encoder: Encoder, ids, hashes, old: dict[str, str],
               todo_idx: list[int], enc_of: list[int], results: list[Any]) -> None:
        """Add what this job encoded to the shared content store, and what the store held
        from before the content store existed (or from another home) that it lacks."""
        fresh = {hashes[i]: results[u] for i, u in zip(todo_idx, enc_of) if results[u] is not None}
        kept = {h for pid, h in zip(ids, hashes) if h is not None and old.get(pid) == h and h not in fresh}
        lacking = shared.missing(encoder.name, kept) if kept else set()
        if lacking:
            f = self.store.load(feature)
            for j, h in enumerate(f.hashes):
                if h in lacking and h not in fresh:
                    fresh[h] = f.vectors[j] if f.vectors is not None else f.texts[j]
        if fresh:
            shared.add(encoder.name, list(fresh), list(fresh.values()))

    def _write(self, feature, encoder, ids, hashes, vals, keep, meta) -> None:
        if encoder.output == "text":
            self.store.upsert(feature, ids, hashes, texts=[str(v) for v in vals], keep=keep, meta=meta)
        else:
            vec = np.stack(vals).astype(np.float32) if len(vals) else np.zeros((0, encoder.dim), np.float32)
            self.store.upsert(feature, ids, hashes, vectors=vec, keep=keep, meta=meta)

    # jobs ------------------------------------------------------------------
    def _text_reuse(self, enc: Encoder) -> dict[str, np.ndarray]:
        reuse: dict[str, np.ndarray] = {}
        for f in self.store.features():
            if f.endswith("." + enc.name):
                feat = self.store.load(f)
                if feat.vectors is not None and (feat.meta or {}).get("signature") == enc.signature():
                    reuse.update(zip(feat.hashes, feat.vectors))
        return reuse

    def encode_text_field(self, products: pd.DataFrame, name: str, values: pd.Series | None = None) -> JobStats | None:
        enc = self.encoder(self.settings.text)
        vals = field_values(products, name) if values is None else values
        present = vals.notna()
        if not present.any():
            return None
        sig = enc.signature()
        ids = products.loc[present, S.PRODUCT_ID].tolist()
        texts = vals[present].astype(str).tolist()
        hashes = [text_hash(t, sig) for t in texts]
        return self.run_job(f"{name}.{enc.name}", S.TEXT, enc, ids, texts, hashes, self.settings.batch_size["text"],
                            reuse=self._text_reuse(enc), inputs=inputs_digest(ids, texts))

    def encode_media(self, products: pd.DataFrame, column: str, spec: dict, modality: str) -> JobStats | None:
        enc = self.encoder(spec)
        present = products[column].notna()
        if not present.any():
            return None
        sig = enc.signature()
        ids = products.loc[present, S.PRODUCT_ID].tolist()
        paths = products.loc[present, column].tolist()
        hashes = [file_hash(p, sig) for p in paths]
        bs = self.settings.batch_size["image" if modality == S.IMAGE_MODALITY else "audio"]
        return self.run_job(f"{column}.{enc.name}", modality, enc, ids, paths, hashes, bs, inputs=inputs_digest(ids, paths))

    def projection(self, products: pd.DataFrame, title_field: str) -> JobStats | None:
        spec = self.settings.projection
        img_feat = f"image.{self.encoder(self.settings.image).name}"
        txt_feat = f"{title_field}.{self.encoder(self.settings.text).name}"
        if spec is None or not self.store.exists(img_feat) or not self.store.exists(txt_feat):
            return None
        model_dir = self.store.root / "models" / f"image_projection.{title_field}"
        ids = products[S.PRODUCT_ID].tolist()
        X, xm = self.store.matrix(img_feat, ids)
        wanted = build_encoder(spec["name"], **spec.get("args", {}))
        assert isinstance(wanted, ImageTextProjection)
        # a cross-fitted projection projects each photo with the model of its title's fold
        folds = title_folds(products, title_field, wanted.folds)
        saved = Encoder.load(model_dir) if (model_dir / "config.json").exists() else None
        if saved is not None and not self.settings.refit_projection and saved.config() == wanted.config():
            proj = saved
        else:
            T, tm = self.store.matrix(txt_feat, ids)
            both = xm & tm
            if both.sum() < 100:
                self.log(f"image projection ({title_field}): only {int(both.sum())} (title, photo) pairs; skipped")
                self.skipped[f"image_proj.{title_field}"] = f"only {int(both.sum())} (title, photo) pairs (100 needed)"
                return None
            t0 = time.perf_counter()
            proj = wanted
            proj.fit(X[both], T[both], progress=self.progress, folds_of=None if folds is None else folds[both])
            proj.save(model_dir)
            last = proj.history_[-1]
            quality = (f"out-of-fold photo->own-title recall@10 = "
                       f"{np.mean([h.get('out_of_fold_recall@10', np.nan) for h in proj.history_]):.3f} ({proj.folds} folds)"
                       if proj.cross_fitted else f"held-out photo->own-title recall@10 = {last.get('valid_recall@10', float('nan')):.3f}")
            self.log(f"trained image projection ({title_field}) on {int(both.sum())} pairs in {time.perf_counter() - t0:.1f} s; {quality}")
        img_hashes = self.store.hashes(img_feat)
        sig = proj.signature()
        sel = [i for i, m in enumerate(xm) if m]
        pids = [ids[i] for i in sel]
        items = [(int(folds[i]), X[i]) for i in sel] if proj.cross_fitted else list(X[sel])
        keys = projection_keys([img_hashes[p] for p in pids], None if folds is None else folds[sel])
        hashes = [text_hash(k, sig) for k in keys]
        return self.run_job(f"image_proj.{title_field}", S.IMAGE_MODALITY, proj, pids, items, hashes,
                            self.settings.batch_size["projection"], inputs=inputs_digest(pids, keys))

    def head_inputs(self, products: pd.DataFrame, inputs: Sequence[str]) -> tuple[np.ndarray, np.ndarray, dict[str, str]] | None:
        """The photo features an attribute head reads: the store features ``image.<name>`` of its ``inputs`` side by
        side (encoding those that are not the configured image encoder's here), as ``(features, mask, key)`` with
        ``key[product]`` the joined hashes of its input rows; None when the image features are not in the store."""
        ids = products[S.PRODUCT_ID].tolist()
        mats, mask, hashes = [], np.ones(len(ids), bool), []
        for name in inputs:
            done = any(st.feature == f"image.{name}" for st in self.stats)  # this run (for another title field)
            if name != self.encoder(self.settings.image).name and not done:
                self.encode_media(products, S.IMAGE, {"name": name, "args": {}}, S.IMAGE_MODALITY)
            if not self.store.exists(f"image.{name}"):
                return None
            M, m = self.store.matrix(f"image.{name}", ids)
            mats.append(M)
            mask &= m
            hashes.append(self.store.hashes(f"image.{name}"))
        key = {p: "|".join(h[p] for h in hashes) for p, m in zip(ids, mask) if m}
        return np.hstack(mats), mask, key

    def photo_attributes(self, products: pd.DataFrame, title_field: str) -> JobStats | None:
        """The colour head of ``title_field`` (:class:`~fusionrank.encoders.attributes.ColourHead`), trained on the photos of
        the products whose title *in that field* states exactly one colour, and its colour for the photo of every product
        whose title in that field states none: store feature ``photo_colour.<title field>`` ("" where it abstains), and
        its probability of every colour class for the same photos: ``photo_colour_proba.<title field>``.

        The head is saved under ``<store>/models/colour_head.<title field>`` and refitted when its settings or its
        training set (photo hashes and colours) change.
        """
        from .encoders.attributes import (ColourHead, ColourProbabilities, colour_head_dir, photo_colour_feature,
                                          photo_colour_proba_feature, title_colour)

        spec = self.settings.attributes
        if spec is None:
            return None
        feature = photo_colour_feature(title_field)
        wanted = build_encoder(spec["name"], **spec.get("args", {}))
        if not isinstance(wanted, ColourHead):
            raise FusionrankError(f"encode setting attributes: {spec['name']!r} is not an attribute head; valid: {ColourHead.name}")
        ids = products[S.PRODUCT_ID].tolist()
        inputs = self.head_inputs(products, wanted.inputs)
        if inputs is None:
            return None
        X, xm, img_hashes = inputs
        colour = [title_colour(t) for t in indexed_titles(products, title_field)]  # this field only, never another
        train = [i for i, c in enumerate(colour) if xm[i] and c]  # exactly one colour ("" none, None several)
        digest = inputs_digest([img_hashes[ids[i]] for i in train], [colour[i] for i in train])
        model_dir = colour_head_dir(self.store.root, title_field)
        saved = Encoder.load(model_dir) if (model_dir / "config.json").exists() else None
        if saved is not None and saved.config() == wanted.config() and getattr(saved, "trained_on_", None) == digest:
            head = saved
        else:
            t0 = time.perf_counter()
            try:
                head = wanted.fit(X[train], [colour[i] for i in train])
            except FusionrankError as e:
                self.log(f"colour head ({title_field}): {e}; skipped")
                self.skipped[feature] = str(e)
                return None
            head.trained_on_ = digest
            head.save(model_dir)
            h = head.history_
            self.log(f"trained colour head ({title_field}) on {h['examples']} photos, {h['classes']} colours, in "
                     f"{time.perf_counter() - t0:.1f} s; held-out accuracy {h.get('held_out_accuracy', float('nan')):.3f}, "
                     f"coverage {h.get('held_out_coverage', float('nan')):.3f} at precision {h.get('held_out_precision', float('nan')):.3f}")
        sel = [i for i, c in enumerate(colour) if xm[i] and c == ""]
        pids = [ids[i] for i in sel]
        keys = [img_hashes[p] for p in pids]
        items, batch = list(X[sel]), self.settings.batch_size["projection"]
        for enc, feat in ((head, feature), (ColourProbabilities(head), photo_colour_proba_feature(title_field))):
            sig = enc.signature()
            st = self.run_job(feat, S.IMAGE_MODALITY, enc, pids, items, [text_hash(k, sig) for k in keys], batch,
                              inputs=inputs_digest(pids, keys))
        return st

    def transcripts(self, products: pd.DataFrame) -> JobStats | None:
        if self.settings.transcriber is None:
            return None
        st = self.encode_media(products, S.AUDIO, self.settings.transcriber, S.AUDIO_MODALITY)
        feat = f"{S.AUDIO}.{self.encoder(self.settings.transcriber).name}"
        tm = self.store.text_map(feat)
        vals = products[S.PRODUCT_ID].map(tm)
        vals = vals.where(vals.notna() & (vals.astype(str).str.strip() != ""), None)
        self.encode_text_field(products, TRANSCRIPT, values=vals)
        return st

    def pca(self, products: pd.DataFrame) -> None:
        spec = self.settings.pca
        if not spec:
            return
        from .encoders import PCAReducer

        for feat in spec.get("features", []):
            if not self.store.exists(feat):
                continue
            f = self.store.load(feat)
            model_dir = self.store.root / "models" / f"pca.{feat}"
            if (model_dir / "config.json").exists() and not spec.get("refit", False):
                red = Encoder.load(model_dir)
            else:
                red = PCAReducer(n_components=spec.get("n_components", 128), whiten=spec.get("whiten", False)).fit(f.vectors)
                red.save(model_dir)
            sig = red.signature()
            self.run_job(f"{feat}.pca{red.dim}", "reduced", red, list(f.ids), list(f.vectors),
                         [text_hash(h, sig) for h in f.hashes], 8192, inputs=inputs_digest(f.ids, f.hashes))


def settings_signature(settings: EncodeSettings) -> str:
    """A short hash of every encode setting (an attribute head left off does not count: signatures stay as before it)."""
    d = {k: v for k, v in asdict(settings).items() if not (k == "attributes" and v is None)}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def catalog_digest(products: pd.DataFrame, text_fields: Sequence[str] = ()) -> str:
    """A short hash of what encode reads from a catalogue: ids, the text fields and media paths."""
    ids = products[S.PRODUCT_ID].astype(str).tolist()
    cols = [products[c] for c in (S.IMAGE, S.AUDIO) if c in products.columns] + [field_values(products, f) for f in text_fields]
    return hashlib.sha1("".join(inputs_digest(ids, c.tolist()) for c in cols).encode()).hexdigest()[:16]


def shared_content_dir(store_dir: str | Path) -> Path | None:
    """``$FUSIONRANK_HOME/content`` when ``store_dir`` lies under that home (as workspaces do), else None."""
    home = Path(get_settings().home).expanduser().resolve()
    return home / CONTENT_DIR if Path(store_dir).resolve().is_relative_to(home) else None


def table_stamp(path: Path) -> list[int] | None:
    """Size, mtime and inode of a feature table: every write (a new file renamed in place) changes it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when it is missing, unreadable or not an object."""
    try:
        d = json.loads(Path(path).read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temp file + rename)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def read_manifest(store_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(store_dir) / MANIFEST_FILE)


def _update_manifest(store: EmbeddingStore, run: Encoding, products: pd.DataFrame, settings: EncodeSettings,
                     modalities: Sequence[str], catalog_dir: str | Path | None, seconds: float) -> None:
    """Record, per feature this run touched, what it was encoded from; keep older features' entries."""
    man = read_manifest(store.root)
    at = time.strftime("%Y-%m-%dT%H:%M:%S")
    digest, sig = catalog_digest(products, settings.text_fields), settings_signature(settings)
    feats, skipped = man.get("features", {}), man.get("skipped", {})
    for st in run.stats:
        failed = sorted({str(f[S.PRODUCT_ID]) for f in run.failures if f["feature"] == st.feature})
        path = store.path(st.feature)
        feats[st.feature] = {**run.meta.get(st.feature, {}), "present": st.present, "failed": failed,
                             "inputs": run.inputs.get(st.feature),
                             # the table as this run left it: a later change to it voids "inputs"
                             "file": table_stamp(path),
                             "catalog": digest, "settings": sig, "at": at}
        skipped.pop(st.feature, None)
    for feat, why in run.skipped.items():
        skipped[feat] = {"reason": why, "catalog": digest, "settings": sig, "at": at}
    runs = man.get("runs", [])[-19:] + [{
        "at": at, "catalog": digest, "products": int(len(products)), "settings": sig, "modalities": list(modalities),
        "encoded": sum(s.encoded for s in run.stats), "shared": sum(s.shared for s in run.stats),
        "cached": sum(s.cached for s in run.stats), "failed": sum(s.failed for s in run.stats), "seconds": round(seconds, 2)}]
    man = {"format": 1, "catalog_dir": str(catalog_dir) if catalog_dir else man.get("catalog_dir"),
           "features": feats, "skipped": skipped, "runs": runs}
    write_json(store.root / MANIFEST_FILE, man)


def encode_catalog(products: pd.DataFrame, store_dir: str | Path, settings: EncodeSettings | None = None,
                   engine: str = "local", engine_args: dict | None = None, modalities: Sequence[str] = S.MODALITIES,
                   progress: bool = True, log: Callable[[str], None] | None = None,
                   content_dir: str | Path | None = AUTO, catalog_dir: str | Path | None = None) -> dict[str, Any]:
    """Encode every modality of ``products`` into ``store_dir``; returns a summary dict.

    ``content_dir``: the shared content store to consult and fill ("auto": the home's,
    if ``store_dir`` is under ``FUSIONRANK_HOME``; None: none). ``catalog_dir`` is only
    recorded in the manifest (to name it in messages about a stale store).
    """
    settings = settings or EncodeSettings()
    store = EmbeddingStore(store_dir)
    if content_dir == AUTO:
        content_dir = shared_content_dir(store.root)
    content = ContentStore(content_dir) if content_dir is not None else None
    eng = get_engine(engine, **(engine_args or {}))
    run = Encoding(store, eng, settings, progress=progress, log=log, content=content)
    t0 = time.perf_counter()
    try:
        if S.TEXT in modalities:
            for name in settings.text_fields:
                run.encode_text_field(products, name)
        if S.IMAGE_MODALITY in modalities:
            run.encode_media(products, S.IMAGE, settings.image, S.IMAGE_MODALITY)
            for tf in settings.projection_fields:
                run.projection(products, tf)
            if settings.attributes is not None:
                for tf in settings.projection_fields:
                    run.photo_attributes(products, tf)
        if S.AUDIO_MODALITY in modalities:
            run.transcripts(products)
            if settings.audio_features:
                run.encode_media(products, S.AUDIO, settings.audio_features, S.AUDIO_MODALITY)
        run.pca(products)
    finally:
        eng.close()
    seconds = time.perf_counter() - t0
    summary = {
        "store": str(store.root), "engine": engine, "products": int(len(products)),
        "seconds": round(seconds, 2), "jobs": [s.as_dict() for s in run.stats],
        "failures": len(run.failures),
    }
    if content is not None:
        summary["content_store"] = str(content.root)
    failures_file = store.root / FAILURES_FILE
    if run.failures:
        with open(failures_file, "w") as f:
            for r in run.failures:
                f.write(json.dumps(r) + "\n")
        summary["failures_file"] = str(failures_file)
    elif failures_file.exists():  # the failures of an earlier run are not this run's
        failures_file.unlink()
    (store.root / "encode_summary.json").write_text(json.dumps(summary, indent=2))
    _update_manifest(store, run, products, settings, modalities, catalog_dir, seconds)
    return summary


# --- what a store must hold for a catalogue (used by workspace.check_encoded) -------------------
def projection_keys(photo_hashes: Sequence[str], folds: Sequence[int] | None) -> list[str]:
    """What a projected photo is derived from: its photo row's hash and, for a cross-fitted projection, the fold
    of its title (``folds``, per photo; None for one projection)."""
    if folds is None:
        return list(photo_hashes)
    return [f"{h}|fold{int(k)}" for h, k in zip(photo_hashes, folds)]


def title_folds(products: pd.DataFrame, title_field: str, folds: int) -> np.ndarray | None:
    """The fold of each product's title (in ``products`` order) for a projection cross-fitted over ``folds`` folds;
    None for one projection."""
    if folds <= 1:
        return None
    return np.array([fold_of(t, folds) for t in indexed_titles(products, title_field)], np.int64)


@dataclass
class PlannedFeature:
    """A feature ``encode_catalog`` builds for a catalogue, and how to check it without encoding.

    ``kind`` "text": rows are keyed by the hash of ``values`` (text per product, None where
    absent) and ``signature``; "media": one row per product with a file in ``column`` unless
    it failed (files are not hashed here); "derived": one row per row of ``base``, hashed from
    the base row's hash and the feature's own (trained) signature.
    """

    name: str
    kind: str
    modality: str
    signature: str | None = None
    values: pd.Series | None = None
    column: str | None = None
    base: str | None = None
    folds: np.ndarray | None = None  # a cross-fitted projection: each product's fold (see projection_keys)


def plan_features(products: pd.DataFrame, settings: EncodeSettings, modalities: Sequence[str],
                  store: EmbeddingStore) -> list[PlannedFeature]:
    """The features ``encode_catalog(products, store, settings, modalities=...)`` writes, in job order."""
    enc = lambda spec: build_encoder(spec["name"], **spec.get("args", {}))  # noqa: E731  (cheap: models load lazily)
    text = enc(settings.text)
    out: list[PlannedFeature] = []

    def text_feature(name: str, values: pd.Series) -> None:
        if values.notna().any():
            out.append(PlannedFeature(f"{name}.{text.name}", "text", S.TEXT, text.signature(), values=values))

    def media(column: str, spec: dict, modality: str) -> str | None:
        if column not in products.columns or not products[column].notna().any():
            return None
        e = enc(spec)
        out.append(PlannedFeature(f"{column}.{e.name}", "media", modality, e.signature(), column=column))
        return out[-1].name

    if S.TEXT in modalities:
        for name in settings.text_fields:
            text_feature(name, field_values(products, name))
    if S.IMAGE_MODALITY in modalities:
        img = media(S.IMAGE, settings.image, S.IMAGE_MODALITY)
        if img and settings.projection is not None:
            planned = {f.name for f in out}
            for tf in settings.projection_fields:  # encode trains a projection only where the title feature exists
                if f"{tf}.{text.name}" in planned or store.exists(f"{tf}.{text.name}"):
                    k = int((settings.projection.get("args") or {}).get("folds", 1))
                    out.append(PlannedFeature(f"image_proj.{tf}", "derived", S.IMAGE_MODALITY, base=img,
                                              folds=title_folds(products, tf, k)))
    if S.AUDIO_MODALITY in modalities:
        if settings.transcriber is not None:
            tr = media(S.AUDIO, settings.transcriber, S.AUDIO_MODALITY)
            if tr:
                vals = products[S.PRODUCT_ID].map(store.text_map(tr)) if store.exists(tr) else pd.Series(None, index=products.index, dtype=object)
                vals = vals.where(vals.notna() & (vals.astype(str).str.strip() != ""), None)
                text_feature(TRANSCRIPT, vals)
        if settings.audio_features:
            media(S.AUDIO, settings.audio_features, S.AUDIO_MODALITY)
    if settings.pca:
        planned = {f.name for f in out}
        for feat in settings.pca.get("features", []):
            if feat in planned:
                out.append(PlannedFeature(f"{feat}.pca{settings.pca.get('n_components', 128)}", "derived", "reduced", base=feat))
    return out
