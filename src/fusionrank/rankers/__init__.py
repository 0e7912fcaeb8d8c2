"""Scorers: neural fusion rankers (linear, logistic, MLP heads) and LightGBM lambdarank."""
from ..registry import Registry
from .gbdt import GBDTRanker
from .trainer import FeatureGroup, NeuralRanker

RANKERS: Registry[type] = Registry("ranker")
RANKERS.register("neural", NeuralRanker)
RANKERS.register("lightgbm", GBDTRanker)

__all__ = ["RANKERS", "FeatureGroup", "NeuralRanker", "GBDTRanker"]
