"""Model versions over time: the registry, retraining from the event store, and gated promotion.

- :mod:`.registry`: every version with its config, training data, offline metrics, parent, state and decisions;
- :mod:`.retrain`: a candidate trained from logged searches on top of the promoted version;
- :mod:`.gate`: the promotion rule (offline metrics within a tolerance AND an interleaving preference above zero).

(:mod:`fusionrank.registry` is something else: the name -> implementation registries of encoders, losses, ...)
"""
from .gate import GateResult, PromotionPolicy, decide, gate, offline_comparison, start_interleaving
from .registry import STATES, Decision, ModelRegistry, ModelVersion, RegistryError, RegistryIndex

__all__ = ["ModelRegistry", "ModelVersion", "Decision", "RegistryIndex", "RegistryError", "STATES", "PromotionPolicy",
           "GateResult", "gate", "decide", "start_interleaving", "offline_comparison"]
