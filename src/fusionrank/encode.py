"""``fusionrank encode``: every modality of a catalogue into the embedding store.

Jobs, in order (each only encodes products whose content hash changed):

1. text fields (``title``, the ``title_sparse`` attribute, ``description``) -> MiniLM;
2. photos -> EfficientNet-Lite0 features;
3. spoken descriptions -> Whisper transcripts -> MiniLM, and log-mel/MFCC statistics;
4. the image->text projection, trained once per title field on the catalogue's own
   (title, photo) pairs and saved under ``<store>/models/``, applied to every photo;
5. optional PCA of chosen features.

Feature names in the store are ``<source>.<encoder>``, e.g. ``title.minilm``,
``image.efficientnet_lite0``, ``audio.whisper_tiny_en``, ``transcript.minilm``,
``image_proj.title``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from . import schema as S
from .encoders import Encoder, ImageTextProjection, build_encoder
from .engine import Engine, get_engine
from .errors import FusionrankError
from .store import EmbeddingStore, file_hash, text_hash

TRANSCRIPT = "transcript"


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

    @property
    def per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "modality": self.modality, "present": self.present, "cached": self.cached,
                "encoded": self.encoded, "failed": self.failed, "seconds": round(self.seconds, 2),
                "items_per_second": round(self.per_second, 1)}


def field_values(products: pd.DataFrame, name: str) -> pd.Series:
    """A text field as a Series (column or attribute); missing -> None."""
    if name in products.columns:
        s = products[name]
    else:
        s = pd.Series([(a or {}).get(name) for a in products[S.ATTRIBUTES]], index=products.index)
    return s.where(s.notna() & (s.astype(str).str.strip() != ""), None)


class Encoding:
    """Runs encode jobs against one store with one engine and records stats and failures."""

    def __init__(self, store: EmbeddingStore, engine: Engine, settings: EncodeSettings, progress: bool = True,
                 log: Callable[[str], None] | None = None):
        self.store, self.engine, self.settings, self.progress = store, engine, settings, progress
        self.log = log or (lambda m: None)
        self.stats: list[JobStats] = []
        self.failures: list[dict] = []
        self._encoders: dict[str, Encoder] = {}
        self.checkpoint_seconds = 120.0

    def encoder(self, spec: dict) -> Encoder:
        key = json.dumps(spec, sort_keys=True)
        if key not in self._encoders:
            self._encoders[key] = build_encoder(spec["name"], **spec.get("args", {}))
        return self._encoders[key]

    # generic job ---------------------------------------------------------
    def run_job(self, feature: str, modality: str, encoder: Encoder, ids: Sequence[str], items: Sequence[Any],
                hashes: Sequence[str | None], batch_size: int, reuse: dict[str, np.ndarray | str] | None = None) -> JobStats:
        st = JobStats(feature, modality, present=len(ids))
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
        st.seconds = time.perf_counter() - t0
        self.stats.append(st)
        self.log(f"{feature}: {st.encoded} encoded, {st.cached} cached, {st.failed} failed in {st.seconds:.1f} s")
        return st

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
        return self.run_job(f"{name}.{enc.name}", S.TEXT, enc, ids, texts, hashes, self.settings.batch_size["text"], reuse=self._text_reuse(enc))

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
        return self.run_job(f"{column}.{enc.name}", modality, enc, ids, paths, hashes, bs)

    def projection(self, products: pd.DataFrame, title_field: str) -> JobStats | None:
        spec = self.settings.projection
        img_feat = f"image.{self.encoder(self.settings.image).name}"
        txt_feat = f"{title_field}.{self.encoder(self.settings.text).name}"
        if spec is None or not self.store.exists(img_feat) or not self.store.exists(txt_feat):
            return None
        model_dir = self.store.root / "models" / f"image_projection.{title_field}"
        ids = products[S.PRODUCT_ID].tolist()
        X, xm = self.store.matrix(img_feat, ids)
        if (model_dir / "config.json").exists() and not self.settings.refit_projection:
            proj = Encoder.load(model_dir)
        else:
            T, tm = self.store.matrix(txt_feat, ids)
            both = xm & tm
            if both.sum() < 100:
                self.log(f"image projection ({title_field}): only {int(both.sum())} (title, photo) pairs; skipped")
                return None
            t0 = time.perf_counter()
            proj = build_encoder(spec["name"], **spec.get("args", {}))
            assert isinstance(proj, ImageTextProjection)
            proj.fit(X[both], T[both], progress=self.progress)
            proj.save(model_dir)
            self.log(f"trained image projection ({title_field}) on {int(both.sum())} pairs in {time.perf_counter() - t0:.1f} s; "
                     f"held-out photo->own-title recall@10 = {proj.history_[-1].get('valid_recall@10', float('nan')):.3f}")
        img_hashes = self.store.hashes(img_feat)
        sig = proj.signature()
        sel = [i for i, m in enumerate(xm) if m]
        pids = [ids[i] for i in sel]
        hashes = [text_hash(img_hashes[p], sig) for p in pids]
        return self.run_job(f"image_proj.{title_field}", S.IMAGE_MODALITY, proj, pids, list(X[sel]), hashes,
                            self.settings.batch_size["projection"])

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
                         [text_hash(h, sig) for h in f.hashes], 8192)


def encode_catalog(products: pd.DataFrame, store_dir: str | Path, settings: EncodeSettings | None = None,
                   engine: str = "local", engine_args: dict | None = None, modalities: Sequence[str] = S.MODALITIES,
                   progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Encode every modality of ``products`` into ``store_dir``; returns a summary dict."""
    settings = settings or EncodeSettings()
    store = EmbeddingStore(store_dir)
    eng = get_engine(engine, **(engine_args or {}))
    run = Encoding(store, eng, settings, progress=progress, log=log)
    t0 = time.perf_counter()
    try:
        if S.TEXT in modalities:
            for name in settings.text_fields:
                run.encode_text_field(products, name)
        if S.IMAGE_MODALITY in modalities:
            run.encode_media(products, S.IMAGE, settings.image, S.IMAGE_MODALITY)
            for tf in settings.projection_fields:
                run.projection(products, tf)
        if S.AUDIO_MODALITY in modalities:
            run.transcripts(products)
            if settings.audio_features:
                run.encode_media(products, S.AUDIO, settings.audio_features, S.AUDIO_MODALITY)
        run.pca(products)
    finally:
        eng.close()
    summary = {
        "store": str(store.root), "engine": engine, "products": int(len(products)),
        "seconds": round(time.perf_counter() - t0, 2), "jobs": [s.as_dict() for s in run.stats],
        "failures": len(run.failures),
    }
    if run.failures:
        with open(store.root / "failures.jsonl", "w") as f:
            for r in run.failures:
                f.write(json.dumps(r) + "\n")
        summary["failures_file"] = str(store.root / "failures.jsonl")
    (store.root / "encode_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
