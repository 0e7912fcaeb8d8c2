"""LightGBM LambdaMART (``objective="lambdarank"``) on the same slates as the neural rankers.

Features per candidate: the scalar features of the chosen modality groups plus,
when ``interactions`` is on, the per-modality interaction ``q * e_k`` summarised
by ``interaction_dims`` fixed random projections (the full 384-d products per
modality are too wide for 600k training rows on two cores). Missing modalities
are given as NaN, LightGBM's native missing value, not as zeros.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import FusionrankError, NotFittedError
from .base import FeatureGroup


class GBDTRanker:
    """LightGBM lambdarank over the scalar features plus random projections of the query ⊙ embedding interactions."""

    kind = "lightgbm"

    def __init__(self, n_estimators: int = 500, learning_rate: float = 0.05, num_leaves: int = 63, min_child_samples: int = 20,
                 feature_fraction: float = 0.8, bagging_fraction: float = 0.8, lambdarank_truncation_level: int = 20,
                 early_stopping_rounds: int = 50, interactions: bool = True, interaction_dims: int = 32, seed: int = 0,
                 num_threads: int = 2):
        self.n_estimators, self.learning_rate, self.num_leaves = n_estimators, learning_rate, num_leaves
        self.min_child_samples, self.feature_fraction, self.bagging_fraction = min_child_samples, feature_fraction, bagging_fraction
        self.lambdarank_truncation_level, self.early_stopping_rounds = lambdarank_truncation_level, early_stopping_rounds
        self.interactions, self.interaction_dims, self.seed, self.num_threads = interactions, interaction_dims, seed, num_threads
        self.booster_ = None
        self.groups_: list[FeatureGroup] | None = None
        self.proj_: dict[str, np.ndarray] = {}
        self.n_features_: int | None = None

    @classmethod
    def from_config(cls, config) -> "GBDTRanker":
        """The ranker an :class:`~fusionrank.experiment.ExperimentConfig` with ``[scorer] name = "lightgbm"`` describes."""
        return cls(seed=config.seed, **config.scorer.args)

    def get_params(self) -> dict[str, Any]:
        keys = ("n_estimators", "learning_rate", "num_leaves", "min_child_samples", "feature_fraction", "bagging_fraction",
                "lambdarank_truncation_level", "early_stopping_rounds", "interactions", "interaction_dims", "seed", "num_threads")
        return {k: getattr(self, k) for k in keys}

    def _flat(self, slates, tables) -> tuple[np.ndarray, np.ndarray]:
        valid = slates.rows >= 0
        r = slates.rows[valid]
        qrep = np.repeat(slates.q, valid.sum(1), axis=0) if self.interactions and tables is not None else None
        cols = []
        for g in self.groups_:
            m = slates.mask[..., g.mask_column][valid]
            xs = slates.x[valid][:, g.columns].astype(np.float32)
            xs[~m] = np.nan
            cols.append(xs)
            if self.interactions and g.table is not None and tables is not None:
                inter = (tables[g.table][r] * qrep) @ self.proj_[g.table]
                inter[~m] = np.nan
                cols.append(inter.astype(np.float32))
        return np.concatenate(cols, 1), valid.sum(1)

    def fit(self, train, groups: Sequence[FeatureGroup], tables=None, valid=None, valid_ideal_dcg=None, log=print) -> "GBDTRanker":
        import lightgbm as lgb

        if train.y is None:
            raise FusionrankError("training slates have no labels (qrels)")
        self.groups_ = list(groups)
        self.n_features_ = train.x.shape[-1]
        rng = np.random.default_rng(self.seed)
        if self.interactions and tables is not None:
            for g in self.groups_:
                if g.table is not None:
                    d = tables[g.table].shape[1]
                    self.proj_[g.table] = (rng.standard_normal((d, self.interaction_dims)) * np.sqrt(d)).astype(np.float32)
        X, sizes = self._flat(train, tables)
        y = train.y[train.rows >= 0].astype(int)
        params = {"objective": "lambdarank", "metric": "ndcg", "ndcg_eval_at": [10], "learning_rate": self.learning_rate,
                  "num_leaves": self.num_leaves, "min_child_samples": self.min_child_samples,
                  "feature_fraction": self.feature_fraction, "bagging_fraction": self.bagging_fraction, "bagging_freq": 1,
                  "lambdarank_truncation_level": self.lambdarank_truncation_level, "seed": self.seed,
                  "num_threads": self.num_threads, "verbosity": -1}
        dtrain = lgb.Dataset(X, y, group=sizes)
        sets, callbacks = [dtrain], []
        if valid is not None:
            Xv, sv = self._flat(valid, tables)
            sets.append(lgb.Dataset(Xv, valid.y[valid.rows >= 0].astype(int), group=sv, reference=dtrain))
            callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        self.booster_ = lgb.train(params, dtrain, num_boost_round=self.n_estimators, valid_sets=sets[1:] or None, callbacks=callbacks)
        if log:
            log(f"  lightgbm: {self.booster_.num_trees()} trees, best iteration {self.booster_.best_iteration}")
        return self

    def predict(self, slates, tables=None, return_weights: bool = False):
        if self.booster_ is None:
            raise NotFittedError(self)
        if slates.x.shape[-1] != self.n_features_:
            raise FusionrankError(f"Expected {self.n_features_} features, but found {slates.x.shape[-1]}")
        X, _ = self._flat(slates, tables)
        s = self.booster_.predict(X, num_iteration=self.booster_.best_iteration or None)
        out = np.full(slates.rows.shape, -np.inf, np.float32)
        out[slates.rows >= 0] = s
        return (out, None) if return_weights else out

    def table_dims(self) -> dict[str, int]:
        """Embedding size of each table the interaction projections read."""
        return {t: int(p.shape[0]) for t, p in self.proj_.items()}

    def modality_weights(self):
        return None

    def save(self, directory: str | Path) -> None:
        if self.booster_ is None:
            raise NotFittedError(self)
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(str(d / "lightgbm.txt"))
        np.savez(d / "projections.npz", **self.proj_)
        (d / "ranker.json").write_text(json.dumps({"kind": self.kind, "params": self.get_params(), "groups": [g.__dict__ for g in self.groups_],
                                                   "n_features": self.n_features_}, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "GBDTRanker":
        import lightgbm as lgb

        d = Path(directory)
        meta = json.loads((d / "ranker.json").read_text())
        r = cls(**meta["params"])
        r.groups_ = [FeatureGroup(**g) for g in meta["groups"]]
        r.n_features_ = meta["n_features"]
        r.booster_ = lgb.Booster(model_file=str(d / "lightgbm.txt"))
        z = np.load(d / "projections.npz")
        r.proj_ = {k: z[k] for k in z.files}
        return r
