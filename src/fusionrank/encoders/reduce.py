"""Optional PCA reduction of an embedding, fitted on the catalogue."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FusionrankError, NotFittedError
from .base import ENCODERS, Encoder


@ENCODERS.register("pca")
class PCAReducer(Encoder):
    """scikit-learn PCA (optionally whitened) from ``in_dim`` to ``n_components``."""

    name = "pca"
    modality = "any"
    trainable = True

    def __init__(self, n_components: int = 128, whiten: bool = False, seed: int = 0):
        self.n_components, self.whiten, self.seed = n_components, whiten, seed
        self.dim = n_components
        self.pca_ = None

    def config(self) -> dict[str, Any]:
        return {"n_components": self.n_components, "whiten": self.whiten, "seed": self.seed}

    def fit(self, X: np.ndarray) -> "PCAReducer":
        from sklearn.decomposition import PCA

        X = np.asarray(X, np.float32)
        if X.ndim != 2 or X.shape[0] < self.n_components:
            raise FusionrankError(f"PCA to {self.n_components} dims needs at least that many rows; got shape {X.shape}")
        self.pca_ = PCA(n_components=self.n_components, whiten=self.whiten, random_state=self.seed).fit(X)
        return self

    @property
    def explained_variance(self) -> float:
        if self.pca_ is None:
            raise NotFittedError(self)
        return float(self.pca_.explained_variance_ratio_.sum())

    def encode(self, items: np.ndarray) -> np.ndarray:
        if self.pca_ is None:
            raise NotFittedError(self)
        return self.pca_.transform(np.asarray(items, np.float32)).astype(np.float32)

    def _state_signature(self) -> dict[str, Any]:
        return {"mean": None if self.pca_ is None else float(self.pca_.mean_.sum())}

    def _save_state(self, d: Path) -> None:
        if self.pca_ is None:
            raise NotFittedError(self)
        p = self.pca_
        np.savez(d / "pca.npz", components=p.components_, mean=p.mean_, var=p.explained_variance_,
                 ratio=p.explained_variance_ratio_)

    def _load_state(self, d: Path) -> None:
        if (d / "pca.npz").exists():
            from sklearn.decomposition import PCA

            z = np.load(d / "pca.npz")
            p = PCA(n_components=self.n_components, whiten=self.whiten)
            p.components_, p.mean_, p.explained_variance_, p.explained_variance_ratio_ = z["components"], z["mean"], z["var"], z["ratio"]
            p.n_components_ = self.n_components
            p.n_features_in_ = z["mean"].shape[0]
            self.pca_ = p
