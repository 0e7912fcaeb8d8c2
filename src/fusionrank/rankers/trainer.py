"""``NeuralRanker``: fit/predict estimator around :class:`FusionRankerNet`.

Training: Adam with weight decay (L2), dropout, modality dropout, gradient-norm
clipping, early stopping on validation NDCG@10 (ideal DCG from all judged products
when ``valid_ideal_dcg`` is given), fixed seeds. The loss is any registered loss
(``{name, args}``) over padded ``[batch, slate]`` tensors. Labels are graded relevance (>= 0, padded
with -1) or, for losses that take signed labels (debiased clicks, e.g. ``ips_listwise``), any
finite value, padded with ``-inf`` (:func:`~fusionrank.losses.label_padding`).
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import FusionrankError, NotFittedError
from ..losses import LOSSES, PADDED_Y_VALUE, get_loss, label_padding
from ..metrics import ndcg_at_k_padded
from .base import FeatureGroup
from .neural import FusionRankerNet


def _to_t(a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


class NeuralRanker:
    """Hyperparameters are constructor arguments; learned state ends in ``_``."""

    kind = "neural"

    def __init__(self, fusion: str = "weighted_sum", scorer: str = "mlp", loss: dict | None = None, hidden: int = 64,
                 dropout: float = 0.1, modality_dropout: float = 0.1, normalize: str = "l2", lr: float = 2e-3,
                 weight_decay: float = 1e-5, epochs: int = 30, batch_size: int = 16, clip_norm: float = 1.0,
                 patience: int = 4, seed: int = 0, use_embeddings: bool = True, fusion_args: dict | None = None,
                 max_train_seconds: float | None = None):
        self.fusion, self.scorer, self.loss = fusion, scorer, loss or {"name": "lambdaloss", "args": {}}
        self.hidden, self.dropout, self.modality_dropout, self.normalize = hidden, dropout, modality_dropout, normalize
        self.lr, self.weight_decay, self.epochs, self.batch_size = lr, weight_decay, epochs, batch_size
        self.clip_norm, self.patience, self.seed, self.use_embeddings = clip_norm, patience, seed, use_embeddings
        self.fusion_args, self.max_train_seconds = fusion_args or {}, max_train_seconds
        self.net_: FusionRankerNet | None = None
        self.groups_: list[FeatureGroup] | None = None
        self.history_: list[dict] = []
        self.n_features_: int | None = None

    @classmethod
    def from_config(cls, config) -> "NeuralRanker":
        """The ranker an :class:`~fusionrank.experiment.ExperimentConfig` describes (fusion, scorer, loss, optimizer, training)."""
        if config.optimizer.name != "adam":
            raise FusionrankError(f"unknown optimizer {config.optimizer.name!r}; valid: adam")
        sargs = dict(config.scorer.args)
        t = config.training
        return cls(fusion=config.fusion.name, fusion_args=config.fusion.args, scorer=config.scorer.name,
                   loss=config.loss.model_dump(), hidden=sargs.pop("hidden", 64), dropout=sargs.pop("dropout", 0.1),
                   normalize=sargs.pop("normalize", "l2"), seed=config.seed, lr=config.optimizer.args.get("lr", 2e-3),
                   weight_decay=config.optimizer.args.get("weight_decay", 1e-5), epochs=t.epochs, batch_size=t.batch_size,
                   patience=t.patience, clip_norm=t.clip_norm, modality_dropout=t.modality_dropout,
                   max_train_seconds=t.max_train_seconds, **sargs)

    def get_params(self) -> dict[str, Any]:
        keys = ("fusion", "scorer", "loss", "hidden", "dropout", "modality_dropout", "normalize", "lr", "weight_decay",
                "epochs", "batch_size", "clip_norm", "patience", "seed", "use_embeddings", "fusion_args", "max_train_seconds")
        return {k: getattr(self, k) for k in keys}

    # batching ---------------------------------------------------------------
    def _inputs(self, x, mask, rows, q, tables, idx):
        g = self.groups_
        xs = _to_t(x[idx][..., [c for grp in g for c in grp.columns]])
        ms = torch.from_numpy(np.ascontiguousarray(mask[idx][..., [grp.mask_column for grp in g]]))
        embs = []
        r = np.where(rows[idx] >= 0, rows[idx], 0)
        for grp in g:
            if grp.table is not None and self.use_embeddings:
                embs.append(_to_t(tables[grp.table][r]))
            else:
                embs.append(None)
        qt = _to_t(q[idx]) if q is not None else None
        return xs, ms, embs, qt

    def _check_tables(self, tables: dict[str, np.ndarray] | None) -> None:
        if not self.use_embeddings:
            return
        for g in self.groups_:
            if g.table is not None and (tables is None or g.table not in tables):
                raise FusionrankError(f"feature group {g.name!r} uses embedding table {g.table!r}, which is not in the tables "
                                      f"given ({', '.join(sorted(tables or {})) or 'none'}); pass tables= or use_embeddings=False")

    def _build(self, groups: list[FeatureGroup], tables: dict[str, np.ndarray] | None, qdim: int):
        emb_dims = [(tables[g.table].shape[1] if (g.table is not None and self.use_embeddings) else 0) for g in groups]
        return self._net(groups, emb_dims, qdim)

    def _net(self, groups: list[FeatureGroup], emb_dims: list[int], qdim: int) -> FusionRankerNet:
        return FusionRankerNet([len(g.columns) for g in groups], emb_dims, qdim, fusion=self.fusion, scorer=self.scorer,
                               hidden=self.hidden, dropout=self.dropout, normalize=self.normalize,
                               modality_dropout=self.modality_dropout, fusion_args=self.fusion_args)

    # estimator API ----------------------------------------------------------
    def fit(self, train, groups: Sequence[FeatureGroup], tables: dict[str, np.ndarray] | None = None, valid=None,
            valid_ideal_dcg: np.ndarray | None = None, log=print) -> "NeuralRanker":
        """``train``/``valid``: objects with ``x [B,N,F]``, ``mask [B,N,K]``, ``rows [B,N]``, ``q [B,D]``, ``y [B,N]``.

        ``train.y`` on real candidates (``rows >= 0``) must be finite; it may be negative only
        for a loss that takes signed labels. Slates whose labels are all 0 are skipped.
        ``valid=None`` trains for exactly ``epochs`` epochs (or ``max_train_seconds``).
        """
        if train.y is None:
            raise FusionrankError("training slates have no labels (qrels)")
        pad = label_padding(self.loss["name"])
        real = train.rows >= 0
        labels = train.y[real]
        if not np.isfinite(labels).all():
            raise FusionrankError(f"training labels must be finite; found {int((~np.isfinite(labels)).sum())} that are not")
        if pad == PADDED_Y_VALUE and (labels < 0).any():
            signed = [n for n in LOSSES.names() if getattr(LOSSES.get(n), "signed_labels", False)]
            raise FusionrankError(f"loss {self.loss['name']!r} takes graded labels >= 0 but {int((labels < 0).sum())} are "
                                  f"negative; losses that take signed labels: {', '.join(signed)}")
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.groups_ = list(groups)
        self._check_tables(tables)
        self.n_features_ = train.x.shape[-1]
        qdim = train.q.shape[1] if train.q is not None else 1
        net = self._build(self.groups_, tables, qdim)
        valid_items = train.rows >= 0
        cols = [c for g in self.groups_ for c in g.columns]
        xv = train.x[valid_items][:, cols]
        net.set_standardisation(_to_t(xv.mean(0)), _to_t(xv.std(0)))
        loss_fn = get_loss(self.loss["name"], **self.loss.get("args", {}))
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best, best_state, bad = -1.0, None, 0
        self.history_ = []
        t_start = time.perf_counter()
        keep = np.flatnonzero(((train.y != 0) & real).any(1))  # all-zero slates carry no ranking signal
        for ep in range(self.epochs):
            net.train()
            t0 = time.perf_counter()
            order = rng.permutation(keep)
            tot, nb = 0.0, 0
            for i in range(0, len(order), self.batch_size):
                idx = order[i:i + self.batch_size]
                xs, ms, embs, qt = self._inputs(train.x, train.mask, train.rows, train.q, tables, idx)
                y = _to_t(np.where(train.rows[idx] >= 0, train.y[idx], pad))
                s = net(xs, ms, embs, qt)
                loss = loss_fn(s, y, padded_value_indicator=pad)
                opt.zero_grad()
                loss.backward()
                if self.clip_norm:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), self.clip_norm)
                opt.step()
                tot += loss.item()
                nb += 1
            rec: dict[str, Any] = {"epoch": ep, "loss": tot / max(nb, 1), "seconds": round(time.perf_counter() - t0, 2)}
            self.net_ = net
            if valid is not None and valid.y is not None:
                sc = self.predict(valid, tables)
                nd = ndcg_at_k_padded(sc, np.where(valid.rows >= 0, valid.y, 0), 10, mask=valid.rows >= 0, ideal_dcg=valid_ideal_dcg)
                rec["valid_ndcg@10"] = float(np.mean(nd))
                if rec["valid_ndcg@10"] > best + 1e-5:
                    best, best_state, bad = rec["valid_ndcg@10"], copy.deepcopy(net.state_dict()), 0
                else:
                    bad += 1
            self.history_.append(rec)
            if log:
                log("  epoch {epoch:2d} loss {loss:.4f}".format(**rec) + (f" valid ndcg@10 {rec['valid_ndcg@10']:.4f}" if "valid_ndcg@10" in rec else "") + f" ({rec['seconds']} s)")
            if valid is not None and bad >= self.patience:
                break
            if self.max_train_seconds and time.perf_counter() - t_start > self.max_train_seconds:
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        self.net_ = net
        self.best_valid_ndcg_ = best if best_state is not None else None
        return self

    def _check(self) -> None:
        if self.net_ is None:
            raise NotFittedError(self)

    def predict(self, slates, tables: dict[str, np.ndarray] | None = None, batch: int = 64, return_weights: bool = False):
        """Scores ``[B, N]`` (``-inf`` on padding); with ``return_weights`` also modality weights ``[B, N, K]``."""
        self._check()
        if slates.x.shape[-1] != self.n_features_:
            raise FusionrankError(f"Expected {self.n_features_} features, but found {slates.x.shape[-1]}")
        self._check_tables(tables)
        self.net_.eval()
        out = np.empty(slates.rows.shape, np.float32)
        ws = np.zeros(slates.rows.shape + (len(self.groups_),), np.float32) if return_weights else None
        with torch.no_grad():
            for i in range(0, len(slates.rows), batch):
                idx = np.arange(i, min(i + batch, len(slates.rows)))
                xs, ms, embs, qt = self._inputs(slates.x, slates.mask, slates.rows, slates.q, tables, idx)
                s, w = self.net_(xs, ms, embs, qt, return_weights=True)
                out[idx] = s.numpy()
                if ws is not None:
                    ws[idx] = w.numpy()
        out = np.where(slates.rows >= 0, out, -np.inf)
        return (out, ws) if return_weights else out

    def contributions(self, slates, tables=None) -> np.ndarray:
        """Per-modality contributions by occlusion, ``[B, N, K]`` (see :func:`fusionrank.ranking.occlusion_contributions`)."""
        from ..ranking.explain import occlusion_contributions

        self._check()
        return occlusion_contributions(self, slates, tables)

    def table_dims(self) -> dict[str, int]:
        """Embedding size of each table the ranker reads."""
        self._check()
        return {g.table: d for g, d in zip(self.groups_, self.net_.emb_dims) if g.table and d}

    def modality_weights(self) -> dict[str, float] | None:
        """The learned ``alpha_k`` of ``weighted_sum`` fusion (None for other methods)."""
        self._check()
        f = self.net_.fusion
        if hasattr(f, "alpha"):
            return {g.name: float(a) for g, a in zip(self.groups_, f.alpha.detach().numpy())}
        return None

    # persistence ---------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        self._check()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        torch.save(self.net_.state_dict(), d / "weights.pt")
        meta = {"kind": self.kind, "params": self.get_params(), "groups": [g.__dict__ for g in self.groups_], "n_features": self.n_features_,
                "query_dim": self.net_.fusion.D, "emb_dims": self.net_.emb_dims, "history": self.history_}
        (d / "ranker.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "NeuralRanker":
        d = Path(directory)
        meta = json.loads((d / "ranker.json").read_text())
        r = cls(**meta["params"])
        r.groups_ = [FeatureGroup(**g) for g in meta["groups"]]
        r.n_features_ = meta["n_features"]
        r.history_ = meta.get("history", [])
        net = r._net(r.groups_, meta["emb_dims"], meta["query_dim"])
        net.load_state_dict(torch.load(d / "weights.pt", map_location="cpu", weights_only=True))
        r.net_ = net.eval()
        return r
