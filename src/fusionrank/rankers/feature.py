"""``FeatureRanker``: ranks by one scalar feature (``bm25_title``, ``cos_title``, ...). A baseline and a logging policy.

It has nothing to learn: ``fit`` records the feature groups and checks the feature exists.
Served like any other ranker, it is how a shop runs plain BM25 (or plain vector search)
through the same path, logs, and events as a learned model, e.g. as the weak logging
policy that click data are collected under.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import FusionrankError, NotFittedError
from ..modalities import SCALAR_FEATURES, feature_set
from .base import FeatureGroup


class FeatureRanker:
    kind = "feature"

    def __init__(self, feature: str = "bm25_title"):
        if feature not in SCALAR_FEATURES:
            raise FusionrankError(f"unknown feature {feature!r}; valid: {', '.join(SCALAR_FEATURES)}")
        self.feature = feature
        self.groups_: list[FeatureGroup] | None = None
        self.n_features_: int | None = None

    @classmethod
    def from_config(cls, config) -> "FeatureRanker":
        return cls(**dict(config.scorer.args))

    def get_params(self) -> dict[str, Any]:
        return {"feature": self.feature}

    def fit(self, train, groups: Sequence[FeatureGroup], tables=None, valid=None, valid_ideal_dcg=None, log=print):
        self.groups_ = list(groups)
        self.n_features_ = int(train.x.shape[-1])
        return self

    def predict(self, slates, tables=None, return_weights: bool = False):
        if self.groups_ is None:
            raise NotFittedError(self)
        if slates.x.shape[-1] != self.n_features_:
            raise FusionrankError(f"Expected {self.n_features_} features, but found {slates.x.shape[-1]}")
        names = feature_set(slates.x.shape[-1])  # slates of an earlier feature set (saved ones) hold it elsewhere
        if self.feature not in names:
            raise FusionrankError(f"feature {self.feature!r} is not among these slates' {len(names)} features")
        s = np.where(slates.rows >= 0, slates.x[..., names.index(self.feature)], -np.inf).astype(np.float32)
        return (s, None) if return_weights else s

    def contributions(self, slates, tables=None) -> np.ndarray:
        from ..ranking.explain import occlusion_contributions

        return occlusion_contributions(self, slates, tables)

    def table_dims(self) -> dict[str, int]:
        return {}

    def modality_weights(self) -> dict[str, float] | None:
        return None

    def save(self, directory: str | Path) -> None:
        if self.groups_ is None:
            raise NotFittedError(self)
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "ranker.json").write_text(json.dumps({"kind": self.kind, "params": self.get_params(),
                                                   "groups": [g.__dict__ for g in self.groups_],
                                                   "n_features": self.n_features_}, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "FeatureRanker":
        meta = json.loads((Path(directory) / "ranker.json").read_text())
        r = cls(**meta["params"])
        r.groups_ = [FeatureGroup(**g) for g in meta["groups"]]
        r.n_features_ = meta["n_features"]
        return r
