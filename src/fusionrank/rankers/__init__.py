"""Rankers: neural fusion rankers (linear, logistic, MLP heads), LightGBM lambdarank and single-feature rankers, registered by kind."""
from __future__ import annotations

import json
from pathlib import Path

from ..registry import Registry
from .base import FeatureGroup, Ranker
from .feature import FeatureRanker
from .gbdt import GBDTRanker
from .trainer import NeuralRanker

RANKERS: Registry[type] = Registry("ranker")
RANKERS.register(NeuralRanker.kind, NeuralRanker)
RANKERS.register(GBDTRanker.kind, GBDTRanker)
RANKERS.register(FeatureRanker.kind, FeatureRanker)


def ranker_kind(scorer: str) -> str:
    """The ranker kind a config's ``[scorer]`` name selects: ``lightgbm`` is its own kind, every other scorer is a neural head."""
    return scorer if scorer in RANKERS and scorer != NeuralRanker.kind else NeuralRanker.kind


def load_ranker(directory: str | Path) -> Ranker:
    """A saved ranker, of the kind its ``ranker.json`` names (older saves: told apart by their files)."""
    d = Path(directory)
    meta = json.loads((d / "ranker.json").read_text()) if (d / "ranker.json").exists() else {}
    kind = meta.get("kind") or (GBDTRanker.kind if (d / "lightgbm.txt").exists() else NeuralRanker.kind)
    return RANKERS.get(kind).load(d)


__all__ = ["RANKERS", "FeatureGroup", "Ranker", "NeuralRanker", "GBDTRanker", "FeatureRanker", "ranker_kind", "load_ranker"]
