"""The last two stages: scoring candidates with a ranker, and explaining the top ``k``.

:class:`Scorer` runs any :class:`~fusionrank.rankers.Ranker` over :class:`Slates`.
:class:`Explainer` turns the top ``k`` of one query into result records with:

- per-modality *contributions* by occlusion: ``s(all) - s(all but modality k)``, the
  ranker re-scoring the candidate as if the product lacked that modality (fusion
  renormalises over the rest, exactly as for a product that really lacks it);
- the fusion weights the ranker applied (gated and weighted-sum fusion);
- the query terms each BM25 field matched (and which of the title field's came from the photo,
  ``matched_from_photo``), and the features themselves.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import schema as S
from ..encoders.text import tokenize
from ..modalities import LEXICAL_FIELDS, SCALAR_FEATURES, modality
from .catalog import INDEXED_TITLE, TRANSCRIPT_TEXT
from .features import Slates
from .stage import Stage


@dataclass
class Scored:
    """Slates with their scores ``[B, N]`` (``-inf`` on padding) and fusion weights ``[B, N, K]`` (or None)."""

    slates: Slates
    scores: np.ndarray
    weights: np.ndarray | None
    tables: dict[str, np.ndarray]

    def order(self, b: int, k: int | None = None) -> np.ndarray:
        """Slate positions of query ``b`` by score, ties to the earlier candidate; padding left out."""
        s = self.scores[b]
        n = int((self.slates.rows[b] >= 0).sum())
        o = np.lexsort((np.arange(n), -s[:n]))
        return o if k is None else o[:k]


class Scorer(Stage):
    """``Slates -> Scored`` with one ranker over the catalogue's embedding tables."""

    def __init__(self, ranker, catalog):
        self.ranker, self.catalog = ranker, catalog

    def transform(self, slates: Slates) -> Scored:
        tables = self.catalog.tables()
        if not slates.rows.size or not (slates.rows >= 0).any():
            return Scored(slates, np.full(slates.rows.shape, -np.inf, np.float32), None, tables)
        scores, weights = self.ranker.predict(slates, tables, return_weights=True)
        return Scored(slates, scores, weights, tables)


def occlusion_contributions(ranker, slates: Slates, tables) -> np.ndarray:
    """Per-modality contribution to each score, ``[B, N, K]``: the full slates and K occluded copies in one batch.

    Works for any ranker that honours the modality mask (the neural rankers renormalise
    fusion weights; LightGBM reads an absent modality's features as missing).
    """
    groups = ranker.groups_
    K, B = len(groups), len(slates.rows)
    masks = [slates.mask]
    for g in groups:
        m = slates.mask.copy()
        m[..., g.mask_column] = False
        masks.append(m)
    stacked = copy.copy(slates)
    stacked.rows = np.concatenate([slates.rows] * (K + 1))
    stacked.x = np.concatenate([slates.x] * (K + 1))
    stacked.mask = np.concatenate(masks)
    stacked.q = None if slates.q is None else np.concatenate([slates.q] * (K + 1))
    stacked.y = None
    s = ranker.predict(stacked, tables).reshape(K + 1, B, -1)
    base = s[0]
    out = np.zeros(slates.rows.shape + (K,), np.float32)
    for k, g in enumerate(groups):
        with np.errstate(invalid="ignore"):  # padding: -inf - -inf, masked out below
            out[..., k] = np.where(np.isfinite(base) & slates.mask[..., g.mask_column], base - s[k + 1], 0.0)
    return out


def photo_terms(record: dict[str, Any], matched: dict[str, list[str]]) -> list[str]:
    """The matched terms of the title's BM25 field that came from the photo (the colour head's expansion,
    :func:`~fusionrank.ranking.catalog.lexical_texts`): in that field's text but in neither the indexed title nor
    the description."""
    field = modality("text").lexical
    own = set(tokenize(str(record.get(INDEXED_TITLE) or record.get(S.TITLE) or ""))) | set(tokenize(str(record.get(S.DESCRIPTION) or "")))
    return [t for t in matched.get(field, []) if t not in own]


class Explainer:
    """Result records of the top ``k`` of one query (``b``) of a :class:`Scored` batch."""

    def __init__(self, catalog, contributions: bool = True):
        self.catalog, self.contributions = catalog, contributions

    def hits(self, scored: Scored, ranker, k: int, b: int = 0, explain: bool = True,
             order: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Records of query ``b``'s top ``k`` by score, or of the slate positions ``order`` (e.g. an interleaved list)."""
        cat = self.catalog
        sl = scored.slates
        order = scored.order(b, k) if order is None else np.asarray(order, np.int64)
        groups = [g.name for g in ranker.groups_]
        contrib = None
        if explain and self.contributions and len(order):
            contrib = occlusion_contributions(ranker, sl.subset([b]).columns(order), scored.tables)[0]
        q_terms = set(tokenize(sl.queries[b]))
        out = []
        for rank, i in enumerate(order):
            row = int(sl.rows[b, i])
            rec = cat.record(row)
            pid = rec[S.PRODUCT_ID]
            out.append({
                "rank": rank + 1, "product_id": pid, "score": float(scored.scores[b, i]),
                "title": rec[INDEXED_TITLE] or rec[S.TITLE], "category": rec[S.CATEGORY], "brand": rec[S.BRAND],
                "color": rec[S.COLOR],
                "image_url": f"/products/{pid}/image" if rec[S.IMAGE] else None,
                "audio_url": f"/products/{pid}/audio" if rec[S.AUDIO] else None,
                "transcript": rec[TRANSCRIPT_TEXT],
                "modalities": rec["modalities"],
                "contributions": {g: float(contrib[rank, j]) for j, g in enumerate(groups)} if contrib is not None else {},
                "weights": ({g: float(scored.weights[b, i, j]) for j, g in enumerate(groups)}
                            if scored.weights is not None else {}),
                "matched_terms": (matched := {f: sorted(q_terms & set(tokenize(str(cat.lex_text[f][row] or ""))))
                                              for f in LEXICAL_FIELDS}),
                "matched_from_photo": photo_terms(rec, matched),
                "features": {f: float(sl.x[b, i, j]) for j, f in enumerate(SCALAR_FEATURES)},
            })
        return out
