"""Visual attribute heads: the colour a photo shows, learned from the titles that state one.

A product whose title names no colour cannot match a colour query by its words. The
:class:`ColourHead` reads the colour from the photo instead: a multinomial logistic
regression (scikit-learn, standardised features) from EfficientNet-Lite0 photo features
to the colour phrase a title states, trained only on products whose title states exactly
one colour, and applied to those whose title states none. Its output is text (a colour
phrase, or "" when it abstains) that the ranking path appends to the product's indexed
title (document expansion, :func:`fusionrank.ranking.catalog.lexical_texts`).

:data:`COLOURS` is the one colour vocabulary; :func:`stated_colours` finds its phrases in
a text (longest whole-word match, case-insensitive), :func:`canonical_colour` folds
spelling variants ("gray" -> "grey", "navy" -> "navy blue") into one class.

Switched on by an experiment config block (off by default)::

    [encoders.attributes]
    name = "colour_head"
    args = { threshold = 0.5 }

``fusionrank encode`` then trains one head per title field (saved as ``<store>/models/colour_head.<title field>``,
trained only on that field's titles) and stores ``photo_colour.<title field>``; the ranking path appends it to the
indexed title's BM25 text in training, evaluation and serving alike, and ``PUT /products`` reads a new product's
photo with the same head. Measured on fashion44k in ``benchmarks/results/colour_head.md``.
"""
from __future__ import annotations

import hashlib
import json
import pickle
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import FusionrankError, NotFittedError
from .base import ENCODERS, Encoder, ItemError
from .text import tokenize

# Common fashion colour names; multi-word phrases are matched as a whole before their words.
COLOURS: tuple[str, ...] = (
    "black", "white", "off white", "cream", "beige", "khaki", "brown", "coffee brown", "tan", "camel", "taupe",
    "grey", "gray", "charcoal", "grey melange", "silver", "gold", "golden", "bronze", "copper", "metallic", "steel",
    "red", "maroon", "burgundy", "wine", "rust", "coral", "peach", "orange", "mustard", "yellow", "lemon",
    "green", "olive", "olive green", "lime green", "sea green", "fluorescent green", "mint", "teal",
    "turquoise", "turquoise blue", "blue", "navy", "navy blue", "royal blue", "sky blue", "light blue", "dark blue",
    "indigo", "purple", "violet", "lavender", "mauve", "magenta", "pink", "rose", "rose gold", "fuchsia", "nude",
    "mushroom brown", "multi", "multicolour", "multicolor", "multi coloured", "multicoloured", "multi colour",
    "transparent",
)

PHOTO_COLOUR = "photo_colour"  # store feature prefix of the colour read from a product's photo
PHOTO_COLOUR_PROBA = "photo_colour_proba"  # ... and of the head's probability of every colour class


def photo_colour_feature(title_field: str) -> str:
    """The store feature holding, per product whose title in ``title_field`` states no colour, its photo's colour."""
    return f"{PHOTO_COLOUR}.{title_field}"


def photo_colour_proba_feature(title_field: str) -> str:
    """The store feature holding, for the same products, the head's probability of each of :func:`colour_classes`."""
    return f"{PHOTO_COLOUR_PROBA}.{title_field}"


def colour_head_dir(store_root: str | Path, title_field: str) -> Path:
    """Where the colour head of ``title_field`` is saved: ``<store>/models/colour_head.<title field>``."""
    return Path(store_root) / "models" / f"{ColourHead.name}.{title_field}"


# Spelling variants -> the class they are learned and emitted as.
ALIASES: dict[str, str] = {
    "gray": "grey", "golden": "gold", "navy": "navy blue", "multicolour": "multi", "multicolor": "multi",
    "multi coloured": "multi", "multicoloured": "multi", "multi colour": "multi",
}


@lru_cache(maxsize=None)
def _phrases() -> dict[tuple[str, ...], str]:
    """Token sequence -> colour phrase, for every phrase of :data:`COLOURS` (tokenised as the lexical fields are)."""
    out: dict[tuple[str, ...], str] = {}
    for c in COLOURS:
        toks = tuple(tokenize(c))
        if not toks:
            raise FusionrankError(f"colour vocabulary: {c!r} has no word")
        out[toks] = c
    return out


def stated_colours(text: str | None) -> list[str]:
    """The colour phrases ``text`` states, in order: longest whole-word matches, case-insensitive, never overlapping.

    >>> stated_colours("Puma Men Navy Blue T-shirt")
    ['navy blue']
    >>> stated_colours("Reddish bag")
    []
    """
    toks = tokenize(text or "")
    table = _phrases()
    longest = max(len(k) for k in table)
    found, i = [], 0
    while i < len(toks):
        for n in range(min(longest, len(toks) - i), 0, -1):
            hit = table.get(tuple(toks[i:i + n]))
            if hit is not None:
                found.append(hit)
                i += n
                break
        else:
            i += 1
    return found


def canonical_colour(phrase: str) -> str:
    """The class a colour phrase is learned as: its alias target, else itself (lower-case)."""
    p = " ".join(tokenize(phrase))
    return ALIASES.get(p, p)


@lru_cache(maxsize=None)
def colour_classes() -> tuple[str, ...]:
    """Every colour class of :data:`COLOURS` after :func:`canonical_colour`, sorted: the columns of a colour vector."""
    return tuple(sorted({canonical_colour(c) for c in COLOURS}))


@lru_cache(maxsize=4096)  # per query, once per search or training step; a miss costs microseconds
def colour_columns(text: str | None) -> tuple[int, ...]:
    """The :func:`colour_classes` columns of the colours ``text`` states (a query's, a title's), in order, no repeats."""
    col = {c: j for j, c in enumerate(colour_classes())}
    return tuple(dict.fromkeys(col[canonical_colour(c)] for c in stated_colours(text)))


def colour_evidence(title: str | None, photo_proba: np.ndarray | None = None,
                    transcript: str | None = None) -> np.ndarray | None:
    """How sure we are, per colour class, that a product has that colour: 1 for each colour its title states; for a
    title that states none, 1 for each colour its ``transcript`` states (its spoken description, given when the model
    ranks voice); for neither, the photo head's probabilities (``photo_proba``, in :func:`colour_classes` order); None
    when there is none of these (unknown). The product's own words come first: a photo is read less surely."""
    for text in (title, transcript):
        cols = colour_columns(text)
        if cols:
            v = np.zeros(len(colour_classes()), np.float32)
            v[list(cols)] = 1.0
            return v
    if photo_proba is None:
        return None
    v = np.asarray(photo_proba, np.float32).reshape(-1)
    if v.shape != (len(colour_classes()),):
        raise FusionrankError(f"photo colour probabilities: expected {len(colour_classes())} classes; got {v.shape}")
    return v


def colour_match(query_texts: Sequence[str], evidence: np.ndarray) -> np.ndarray:
    """``[B, N]``: per query and candidate, the evidence (``[B, N, C]``, :func:`colour_evidence` rows, zeros where
    unknown) for the colour the query asks for (the largest over its colours); 0 for a query without a colour."""
    out = np.zeros(evidence.shape[:2], np.float32)
    for b, text in enumerate(query_texts):
        cols = colour_columns(text)
        if cols:
            out[b] = evidence[b][:, list(cols)].max(1)
    return out


def title_colour(text: str | None) -> str | None:
    """The one colour class a text states ("" when it states none, None when it states several different ones)."""
    found = {canonical_colour(c) for c in stated_colours(text)}
    if not found:
        return ""
    return found.pop() if len(found) == 1 else None


@ENCODERS.register("colour_histogram")
class ColourHistogram(Encoder):
    """A photo's colours as a normalised HSV histogram: ``hue_bins x sat_bins x val_bins`` bins over the pixels that are
    not background (near-white, as product photos sit on white), plus the background share. Photo features made for
    colour: ImageNet features are trained to ignore it (colour augmentation).
    """

    name = "colour_histogram"
    modality = "image"

    def __init__(self, resolution: int = 64, hue_bins: int = 12, sat_bins: int = 4, val_bins: int = 4,
                 background: int = 235):
        self.resolution, self.hue_bins, self.sat_bins, self.val_bins = int(resolution), int(hue_bins), int(sat_bins), int(val_bins)
        self.background = int(background)
        self.dim = self.hue_bins * self.sat_bins * self.val_bins + 1

    def config(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "hue_bins": self.hue_bins, "sat_bins": self.sat_bins,
                "val_bins": self.val_bins, "background": self.background}

    def histogram(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 RGB ``(h, w, 3)`` -> float32 ``(dim,)``."""
        from PIL import Image

        rgb = pixels.reshape(-1, 3)
        fg = rgb.min(1) <= self.background
        hsv = np.asarray(Image.fromarray(pixels, "RGB").convert("HSV"), np.int32).reshape(-1, 3)[fg]
        h = (hsv[:, 0] + 128 // self.hue_bins) % 256 * self.hue_bins // 256  # bins centred on red, blue, ...: red is one bin
        s = hsv[:, 1] * self.sat_bins // 256
        v = hsv[:, 2] * self.val_bins // 256
        idx = (h * self.sat_bins + s) * self.val_bins + v
        out = np.zeros(self.dim, np.float32)
        out[:-1] = np.bincount(idx, minlength=self.dim - 1)[:self.dim - 1] / max(1, int(fg.sum()))
        out[-1] = 1.0 - fg.mean()
        return out

    def encode(self, items: Sequence[str]) -> np.ndarray:
        from .image import load_image

        if not len(items):
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.histogram(load_image(p, self.resolution)) for p in items])


@ENCODERS.register("colour_head")
class ColourHead(Encoder):
    """Photo features ``(n, d)`` -> the colour phrase the photo shows, or "" below ``threshold``.

    ``inputs`` names the image encoders whose store features (``image.<name>``), side by side, are the head's
    features: by default EfficientNet-Lite0 and the :class:`ColourHistogram`. ``fit(features, labels)`` drops classes with fewer than ``min_examples`` examples, holds out
    ``valid_fraction`` of the rest (stratified) to report accuracy and coverage, then refits on
    everything kept. ``encode`` returns the most probable class when its probability is at least
    ``threshold``, else "" (abstain).
    """

    name = "colour_head"
    modality = "image"
    output = "text"
    trainable = True

    def __init__(self, inputs: Sequence[str] = ("efficientnet_lite0", "colour_histogram"), threshold: float = 0.5,
                 min_examples: int = 30, C: float = 0.01, max_iter: int = 500, valid_fraction: float = 0.1, seed: int = 0):
        if isinstance(inputs, str) or not inputs:
            raise FusionrankError(f"colour_head: inputs must be a list of image encoder names; got {inputs!r}")
        if not 0.0 <= float(threshold) <= 1.0:
            raise FusionrankError(f"colour_head: threshold must be in [0, 1]; got {threshold}")
        if int(min_examples) < 2:
            raise FusionrankError(f"colour_head: min_examples must be at least 2; got {min_examples}")
        self.inputs = [str(i) for i in inputs]
        self.threshold, self.min_examples = float(threshold), int(min_examples)
        self.C, self.max_iter, self.valid_fraction, self.seed = float(C), int(max_iter), float(valid_fraction), int(seed)
        self.model_ = None          # sklearn Pipeline(StandardScaler, LogisticRegression)
        self.history_: dict[str, Any] = {}
        self.trained_on_: str | None = None  # digest of the training set (set by the caller that fits)

    def config(self) -> dict[str, Any]:
        keys = ("inputs", "threshold", "min_examples", "C", "max_iter", "valid_fraction", "seed")
        return {k: getattr(self, k) for k in keys}

    @property
    def classes_(self) -> list[str]:
        if self.model_ is None:
            raise NotFittedError(self)
        return [str(c) for c in self.model_.classes_]

    def _pipeline(self):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed))

    def fit(self, features: np.ndarray, labels: Sequence[str]) -> "ColourHead":
        """Train on photo features and the colour class of each product's title (one class per row)."""
        X = np.asarray(features, np.float32)
        y = np.asarray([str(v) for v in labels], dtype=object)
        if X.ndim != 2 or len(y) != len(X):
            raise FusionrankError(f"colour_head: expected features (n, d) and n labels; got {X.shape} and {len(y)}")
        classes, counts = np.unique(y, return_counts=True)
        kept = set(classes[counts >= self.min_examples].tolist())
        dropped = {str(c): int(n) for c, n in zip(classes, counts) if c not in kept}
        if len(kept) < 2:
            raise FusionrankError(f"colour_head: fewer than 2 colours have {self.min_examples} or more examples "
                                  f"(counts: {dict(zip(classes.tolist(), counts.tolist()))})")
        sel = np.isin(y, list(kept))
        X, y = X[sel], y[sel]
        hist: dict[str, Any] = {"examples": int(len(y)), "classes": len(kept), "dropped_classes": dropped}
        if self.valid_fraction > 0 and int(len(y) * self.valid_fraction) >= len(kept):
            from sklearn.model_selection import train_test_split

            tr, va = train_test_split(np.arange(len(y)), test_size=self.valid_fraction, random_state=self.seed, stratify=y)
            m = self._pipeline().fit(X[tr], y[tr])
            hist.update(self._quality(m, X[va], y[va]))
        self.model_ = self._pipeline().fit(X, y)
        self.history_ = hist
        return self

    def _quality(self, model, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """Held-out accuracy (argmax), and coverage and precision of the thresholded predictions."""
        proba = model.predict_proba(X)
        pred = model.classes_[proba.argmax(1)]
        conf = proba.max(1) >= self.threshold
        return {"held_out": int(len(y)), "held_out_accuracy": float((pred == y).mean()),
                "held_out_coverage": float(conf.mean()),
                "held_out_precision": float((pred[conf] == y[conf]).mean()) if conf.any() else float("nan")}

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        if self.model_ is None:
            raise NotFittedError(self)
        X = np.asarray(features, np.float32)
        d = self.model_.n_features_in_
        if X.ndim != 2 or X.shape[1] != d:
            raise ItemError(f"colour_head: expected features (n, {d}) ({' + '.join(self.inputs)}); got {X.shape}")
        return self.model_.predict_proba(X)

    def class_proba(self, features: np.ndarray) -> np.ndarray:
        """``(n, len(colour_classes()))`` float32: the probability of every colour class (0 for a class the head
        dropped for too few examples)."""
        proba = self.predict_proba(features)
        col = {c: j for j, c in enumerate(colour_classes())}
        out = np.zeros((len(proba), len(col)), np.float32)
        out[:, [col[c] for c in self.classes_]] = proba
        return out

    def encode(self, items: np.ndarray | Sequence[np.ndarray]) -> list[str]:
        if self.model_ is None:
            raise NotFittedError(self)
        if not len(items):
            return []
        proba = self.predict_proba(np.asarray(items, np.float32).reshape(len(items), -1))
        best = proba.argmax(1)
        classes = self.model_.classes_
        return [str(classes[j]) if proba[i, j] >= self.threshold else "" for i, j in enumerate(best)]

    def _state_signature(self) -> dict[str, Any]:
        if self.model_ is None:
            return {}
        lr = self.model_[-1]
        h = hashlib.sha1(np.ascontiguousarray(lr.coef_, np.float64).tobytes())
        h.update(json.dumps(self.classes_).encode())
        return {"weights": h.hexdigest()[:12]}

    def _save_state(self, d: Path) -> None:
        if self.model_ is None:
            raise NotFittedError(self)
        with open(d / "head.pkl", "wb") as f:
            pickle.dump(self.model_, f)
        (d / "history.json").write_text(json.dumps({**self.history_, "trained_on": self.trained_on_}, indent=1))

    def _load_state(self, d: Path) -> None:
        if (d / "head.pkl").exists():
            with open(d / "head.pkl", "rb") as f:
                self.model_ = pickle.load(f)
            if (d / "history.json").exists():
                h = json.loads((d / "history.json").read_text())
                self.trained_on_ = h.pop("trained_on", None)
                self.history_ = h


class ColourProbabilities(Encoder):
    """A fitted :class:`ColourHead` read as vectors: photo features ``(n, d)`` -> :meth:`ColourHead.class_proba`.

    What the encode job stores as ``photo_colour_proba.<title field>`` beside the head's thresholded colour; built
    from the head, never on its own (not registered).
    """

    name = "colour_head_proba"
    modality = "image"
    trainable = True

    def __init__(self, head: ColourHead):
        if head.model_ is None:
            raise NotFittedError(head)
        self.head = head
        self.dim = len(colour_classes())

    def config(self) -> dict[str, Any]:
        return {"head": self.head.signature(), "classes": list(colour_classes())}

    def encode(self, items: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        if not len(items):
            return np.zeros((0, self.dim), np.float32)
        return self.head.class_proba(np.asarray(items, np.float32).reshape(len(items), -1))
