"""Encode one product for the serving index, with the same encoders the catalogue was encoded with.

``PUT /products/{id}`` sends a product record (the ingest schema: ``title``,
``description``, ``category``, ``image`` and ``audio`` paths, ...). It is validated
by the ingest validator (the id must come out of it unchanged: ids are stored exactly as
given or refused; unknown fields are kept as ``attributes``), then its title is embedded with MiniLM, its photo with
EfficientNet-Lite0 and the catalogue's trained image->text projection, and its
spoken description transcribed by Whisper and embedded. With photo attributes configured
(``[encoders.attributes]``), a title that states no colour gets the colour the catalogue's
colour head reads from the photo appended to its BM25 title text, as ``fusionrank encode``
gives catalogue products. Encoders load on first use.

Media paths must lie under the allowed roots (:class:`~fusionrank.serving.media.MediaRoots`)
and decode fully, whether or not an encoder uses them; see :mod:`fusionrank.serving.media`.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import schema as S
from ..encode import EncodeSettings
from ..encoders import Encoder, base_encoder, build_encoder, encoder_from_spec, fold_of
from ..errors import FusionrankError, RowError
from ..ingest.validate import validate_product
from ..encoders.attributes import colour_evidence
from ..modalities import COLOUR_TABLE, MODALITIES, modality
from ..ranking.catalog import INDEXED_TITLE, TRANSCRIPT_TEXT, lexical_texts
from .media import MediaError, MediaRoots, audio_bytes, image_bytes


class ProductInputError(FusionrankError, ValueError):
    """A product that cannot be indexed as sent (the message names the field)."""


def projection_mismatch(proj: Encoder | None, spec: dict | None) -> str | None:
    """Why the store's photo projection ``proj`` is not the one the model's config names (``spec``), or None.

    The store keeps one projection per title field: training another config on the same catalogue (one photo
    projection instead of cross-fitted ones, other epochs) replaces it, and the catalogue's rows with it. A model
    trained before then must not project a new product's photo with the replacement: its vector would not be
    what the model's catalogue rows are.
    """
    if proj is None or not spec:
        return None
    args = dict(spec.get("args") or {})
    want = {"name": spec["name"], "folds": int(args.pop("folds", 1)), **args}
    got = {"name": proj.name, "folds": int(getattr(proj, "folds", 1)), **proj.config()}
    diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    if not diff:
        return None
    said = ", ".join(f"{k} {g!r} where the model's config says {w!r}" for k, (g, w) in sorted(diff.items()))
    return (f"the store's image->text projection is not this model's ({said}): another config was trained on "
            f"this catalogue since; run `fusionrank encode` with this model's config to restore it")


class ProductEncoder:
    """``text_encoder``: the model's text encoder block (``ExperimentConfig.text_encoder_spec``); one derived from MiniLM
    (the trained ``minilm_adapter``) maps the title, transcript and projected photo vectors as the catalogue's were.
    ``transcript_colours``: a colour the transcript states is colour evidence, as for the catalogue's products
    (``CatalogConfig.transcript_attributes``)."""

    def __init__(self, title_field: str, settings: EncodeSettings | None = None, store_dir: str | Path | None = None,
                 media_dirs: list[str | Path] | None = None, text_encoder: dict | None = None,
                 transcript_colours: bool = False):
        self.title_field = title_field
        self.transcript_colours = transcript_colours
        derived = encoder_from_spec(text_encoder) if text_encoder and base_encoder(text_encoder["name"]) else None
        self._adapt = derived.adapt if derived is not None else None
        self.media_dirs = media_dirs  # the catalogue's media folders; None: the service fills them in from its index
        self.settings = settings or EncodeSettings()
        self.store_dir = Path(store_dir) if store_dir else None
        self._enc: dict[str, Encoder] = {}
        self._projection_problem: str | None = None  # why the store's projection is not the model's (then unused)
        self._lock = threading.Lock()

    def _encoder(self, key: str) -> Encoder | None:
        with self._lock:
            if key not in self._enc:
                s = self.settings
                if key == "projection":
                    d = self.store_dir / "models" / f"image_projection.{self.title_field}" if self.store_dir else None
                    proj = Encoder.load(d) if d is not None and (d / "config.json").exists() else None
                    self._projection_problem = projection_mismatch(proj, s.projection)
                    self._enc[key] = None if self._projection_problem else proj
                elif key == "attributes":  # the colour head the catalogue's photo colours came from
                    from ..encoders.attributes import colour_head_dir

                    d = colour_head_dir(self.store_dir, self.title_field) if self.store_dir and s.attributes else None
                    self._enc[key] = Encoder.load(d) if d is not None and (d / "config.json").exists() else None
                else:
                    spec = {"text": s.text, "image": s.image, "transcriber": s.transcriber}[key]
                    self._enc[key] = build_encoder(spec["name"], **spec.get("args", {})) if spec else None
            return self._enc[key]

    def media_roots(self) -> MediaRoots:
        """The catalogue's media folders plus ``FUSIONRANK_UPLOAD_ROOTS`` (read at each call)."""
        from ..settings import get_settings

        return MediaRoots([*(self.media_dirs or ()), *get_settings().upload_root_paths])

    def _local_file(self, path: str, name: str) -> str:
        """The real path of an allowed media file that decodes fully; the error never names the path or why it failed."""
        try:
            real = self.media_roots().resolve(path)
            (image_bytes if name == S.IMAGE else audio_bytes)(real)
        except MediaError as e:
            raise ProductInputError(f"{name}: {e}") from None
        return str(real)

    def encode(self, raw: dict[str, Any]) -> tuple[dict, dict, dict, dict]:
        """``(record, bm25 texts, vectors, report)`` for one product; :class:`ProductInputError` if it cannot be indexed."""
        try:
            p, fixes = validate_product(raw, "PUT /products", 0)
        except RowError as e:
            raise ProductInputError(f"{e.field}: {e.reason}") from None
        given = raw.get(S.PRODUCT_ID)
        if not isinstance(given, str) or p[S.PRODUCT_ID] != given:
            raise ProductInputError(f"product_id: {given!r} would be stored as {p[S.PRODUCT_ID]!r}; ids are stored exactly as "
                                    f"given, so send it without leading/trailing spaces, entities or compatibility characters")
        report: dict[str, Any] = {"fixes": fixes, "attributes": dict(p.get(S.ATTRIBUTES) or {})}
        title = p[S.TITLE]
        indexed = title if self.title_field == S.TITLE else (p[S.ATTRIBUTES].get(self.title_field) or title)
        t0 = time.perf_counter()
        text, image, audio = (modality(m).table for m in ("text", "image", "audio"))
        vectors: dict[str, np.ndarray | None] = {text: self._encoder("text").encode([indexed])[0], image: None, audio: None}
        transcript = photo_colour = photo_proba = None
        if p[S.IMAGE]:
            path = p[S.IMAGE] = self._local_file(p[S.IMAGE], S.IMAGE)
            proj = self._encoder("projection")
            features: dict[str, np.ndarray] = {}  # per image encoder, the photo's features: computed once

            def photo_features(name: str | None = None) -> np.ndarray:
                """``(1, d)`` features of the photo by the image encoder ``name`` (None: the configured one)."""
                enc = self._encoder("image") if name in (None, self.settings.image["name"]) else self._named(name)
                if enc.name not in features:
                    try:
                        features[enc.name] = enc.encode([path])
                    except Exception as e:
                        raise ProductInputError(f"{S.IMAGE}: cannot decode the photo ({type(e).__name__})") from None
                return features[enc.name]

            if proj is None:
                report["image"] = f"not encoded: {self._projection_problem or 'no image->text projection was trained for this catalogue'}"
            else:
                x = photo_features()
                # a cross-fitted projection: the model of the title's fold, as for the catalogue's products
                vectors[image] = proj.encode([(fold_of(indexed, proj.folds), x[0])] if proj.cross_fitted else x)[0]
            photo_colour, photo_proba = self._photo_colour(photo_features, indexed, report)
        if p[S.AUDIO]:
            path = p[S.AUDIO] = self._local_file(p[S.AUDIO], S.AUDIO)
            tr = self._encoder("transcriber")
            if tr is None:
                report["audio"] = "not encoded: no transcriber configured"
            else:
                try:
                    transcript = (tr.encode([path])[0] or "").strip() or None
                except Exception as e:
                    raise ProductInputError(f"{S.AUDIO}: cannot decode the clip ({type(e).__name__})") from None
                if transcript:
                    vectors[audio] = self._encoder("text").encode([transcript])[0]
        if self._adapt is not None:  # every modality's vector here lives in MiniLM's space
            vectors = {k: None if v is None else self._adapt(np.asarray(v, np.float32)[None])[0] for k, v in vectors.items()}
        # as the catalogue's products (colour_table)
        vectors[COLOUR_TABLE] = colour_evidence(indexed, photo_proba, transcript if self.transcript_colours else None)
        report["seconds"] = round(time.perf_counter() - t0, 3)
        report["modalities"] = {m.name: vectors[m.table] is not None for m in MODALITIES}
        desc = p.get(S.DESCRIPTION) or ""
        record = {S.PRODUCT_ID: p[S.PRODUCT_ID], S.TITLE: title, INDEXED_TITLE: indexed, S.DESCRIPTION: p.get(S.DESCRIPTION),
                  S.BRAND: p.get(S.BRAND), S.COLOR: p.get(S.COLOR), S.CATEGORY: p.get(S.CATEGORY), S.IMAGE: p[S.IMAGE],
                  S.AUDIO: p[S.AUDIO], TRANSCRIPT_TEXT: transcript}
        lex = {f: v[0] for f, v in lexical_texts([indexed], [desc], [transcript], [photo_colour]).items()}
        return record, lex, vectors, report

    def _named(self, name: str) -> Encoder:
        """An encoder by registry name with its default arguments (an attribute head's photo features), built once."""
        with self._lock:
            key = f"named:{name}"
            if key not in self._enc:
                self._enc[key] = build_encoder(name)
            return self._enc[key]

    def _photo_colour(self, photo_features: Callable[[str], np.ndarray], indexed: str, report: dict[str, Any]
                      ) -> tuple[str | None, np.ndarray | None]:
        """The colour the photo shows, by the catalogue's colour head, for a title that states none, and the head's
        probability of every colour class (as ``fusionrank encode`` gives catalogue products); ``(None, None)``
        without a head or for a title that states a colour, and no colour when the head abstains."""
        from ..encoders.attributes import title_colour

        if not self.settings.attributes:
            return None, None
        head = self._encoder("attributes")
        if head is None:
            report["photo_colour"] = "not read: no colour head was trained for this catalogue"
            return None, None
        if title_colour(indexed) != "":
            return None, None
        x = np.hstack([photo_features(name) for name in head.inputs])
        colour = head.encode(x)[0] or None
        report["photo_colour"] = colour
        return colour, head.class_proba(x)[0]
