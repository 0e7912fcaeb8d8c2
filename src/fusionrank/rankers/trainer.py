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
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import FusionrankError, NotFittedError
from ..losses import LOSSES, PADDED_Y_VALUE, get_loss, label_padding
from ..metrics import ndcg_at_k_padded
from .base import FeatureGroup
from .neural import FusionRankerNet


def _to_t(a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def trainable_slates(slates) -> np.ndarray:
    """Indices of the slates with a non-zero label on a real candidate: all-zero slates carry no ranking signal."""
    return np.flatnonzero(((slates.y != 0) & (slates.rows >= 0)).any(1))


def query_dim(slates) -> int:
    return slates.q.shape[1] if slates.q is not None else 1


def batches(order: np.ndarray, batch_size: int, steps: int) -> Iterator[np.ndarray]:
    """``steps`` consecutive batches of ``order``; past its end (a shard shorter than another worker's) they wrap around."""
    for s in range(steps):
        start = s * batch_size
        if start < len(order):
            yield order[start:start + batch_size]
        else:
            yield np.take(order, np.arange(start, start + batch_size), mode="wrap")


def epoch_line(rec: dict) -> str:
    """One epoch of ``history_`` as the training log prints it."""
    valid = f" valid ndcg@10 {rec['valid_ndcg@10']:.4f}" if "valid_ndcg@10" in rec else ""
    return f"  epoch {rec['epoch']:2d} loss {rec['loss']:.4f}{valid} ({rec['seconds']} s)"


class EarlyStopping:
    """The best validation score so far, the weights that gave it, and the epochs since it improved (by more than 1e-5)."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_state, self.bad = patience, -1.0, None, 0

    def update(self, score: float, net: torch.nn.Module) -> None:
        if score > self.best + 1e-5:
            self.best, self.best_state, self.bad = score, copy.deepcopy(net.state_dict()), 0
        else:
            self.bad += 1

    @property
    def exhausted(self) -> bool:
        return self.bad >= self.patience


class Replica:
    """How a process takes part in :meth:`NeuralRanker.fit_loop`. This base class is the single process: it trains the
    network itself on every training slate, with ``batch_size`` slates per step, and decides alone when to stop.
    A data-parallel worker (:class:`fusionrank.rankers.parallel.RayReplica`) overrides these."""

    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        """The module that runs forward and backward (e.g. a DistributedDataParallel wrapper of ``net``)."""
        return net

    def batch_size(self, batch_size: int) -> int:
        """Slates per step in this process."""
        return batch_size

    def steps(self, n_slates: int, batch_size: int) -> int:
        """Optimiser steps per epoch."""
        return -(-n_slates // batch_size)

    def agree(self, loss: float, stop: bool) -> tuple[float, bool]:
        """The epoch's loss and stop decision every process uses."""
        return loss, stop

    def epoch_done(self, ranker: "NeuralRanker", rec: dict) -> None:
        """Called after each epoch, in every process (e.g. to report and checkpoint)."""

    def finished(self, ranker: "NeuralRanker") -> None:
        """Called once the best weights are restored."""


class NeuralRanker:
    """Hyperparameters are constructor arguments; learned state ends in ``_``."""

    kind = "neural"

    def __init__(self, fusion: str = "weighted_sum", scorer: str = "mlp", loss: dict | None = None, hidden: int = 64,
                 dropout: float = 0.1, modality_dropout: float = 0.1, normalize: str = "l2", lr: float = 2e-3,
                 weight_decay: float = 1e-5, epochs: int = 30, batch_size: int = 16, clip_norm: float = 1.0,
                 patience: int = 4, seed: int = 0, use_embeddings: bool = True, fusion_args: dict | None = None,
                 max_train_seconds: float | None = None, lexical_dropout: float = 0.0):
        if not 0.0 <= lexical_dropout < 1.0:
            raise FusionrankError(f"lexical_dropout must be in [0, 1), got {lexical_dropout}")
        self.lexical_dropout = lexical_dropout
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
                   lexical_dropout=t.lexical_dropout, max_train_seconds=t.max_train_seconds, **sargs)

    def get_params(self) -> dict[str, Any]:
        keys = ("fusion", "scorer", "loss", "hidden", "dropout", "modality_dropout", "normalize", "lr", "weight_decay",
                "epochs", "batch_size", "clip_norm", "patience", "seed", "use_embeddings", "fusion_args", "max_train_seconds",
                "lexical_dropout")
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

    def _drop_lexical(self, xs: torch.Tensor) -> torch.Tensor:
        """Training only: for each candidate and each lexical field, with probability ``lexical_dropout``, the field's
        features (BM25, its min-max, overlap) set to 0, as for a product whose text says in other words what the
        query asks for. The ranker then learns not to demand the query's own words (regularisation against
        learning the training queries' vocabulary)."""
        if not self.lexical_dropout:
            return xs
        keep, offset = torch.ones_like(xs), 0
        for g in self.groups_:
            if g.lexical:
                cols = torch.tensor([offset + g.columns.index(c) for c in g.lexical])
                keep[..., cols] = (torch.rand(*xs.shape[:-1], 1) >= self.lexical_dropout).to(xs.dtype)
            offset += len(g.columns)
        return xs * keep

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
        Data-parallel training of the same loop: :func:`fusionrank.rankers.parallel.fit_ray`.
        """
        keep = self.prepare(train, groups, tables)
        net = self.init_net(tables, query_dim(train), self.standardisation(train))
        return self.fit_loop(net, train, keep, tables, valid, valid_ideal_dcg, log)

    def prepare(self, train, groups: Sequence[FeatureGroup], tables: dict[str, np.ndarray] | None) -> np.ndarray:
        """Check the labels and tables and set ``groups_``, ``n_features_``; the indices of the slates to train on."""
        if train.y is None:
            raise FusionrankError("training slates have no labels (qrels)")
        real = train.rows >= 0
        labels = train.y[real]
        if not np.isfinite(labels).all():
            raise FusionrankError(f"training labels must be finite; found {int((~np.isfinite(labels)).sum())} that are not")
        if label_padding(self.loss["name"]) == PADDED_Y_VALUE and (labels < 0).any():
            signed = [n for n in LOSSES.names() if getattr(LOSSES.get(n), "signed_labels", False)]
            raise FusionrankError(f"loss {self.loss['name']!r} takes graded labels >= 0 but {int((labels < 0).sum())} are "
                                  f"negative; losses that take signed labels: {', '.join(signed)}")
        self.groups_ = list(groups)
        self._check_tables(tables)
        self.n_features_ = train.x.shape[-1]
        return trainable_slates(train)

    def standardisation(self, train) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of the ranker's scalar feature columns over the real candidates of ``train``."""
        cols = [c for g in self.groups_ for c in g.columns]
        xv = train.x[train.rows >= 0][:, cols]
        return xv.mean(0), xv.std(0)

    def init_net(self, tables: dict[str, np.ndarray] | None, qdim: int, stats: tuple[np.ndarray, np.ndarray]) -> FusionRankerNet:
        """The untrained network: seeded (the same initial weights in every process), standardised with ``stats``."""
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        net = self._build(self.groups_, tables, qdim)
        net.set_standardisation(_to_t(stats[0]), _to_t(stats[1]))
        return net

    def fit_loop(self, net: FusionRankerNet, train, keep: np.ndarray, tables: dict[str, np.ndarray] | None, valid=None,
                 valid_ideal_dcg: np.ndarray | None = None, log=print, replica: "Replica | None" = None) -> "NeuralRanker":
        """The epochs: shuffled batches of ``train[keep]``, loss, clipping, early stopping on validation NDCG@10.

        ``replica`` says how this process takes part (:class:`Replica`: alone, the default; or one
        worker of a data-parallel fit, which sees only its own shard of the queries in ``train``).
        Every process runs the same number of steps per epoch, ``replica.steps`` batches.
        """
        replica = replica or Replica()
        model = replica.wrap(net)
        pad = label_padding(self.loss["name"])
        loss_fn = get_loss(self.loss["name"], **self.loss.get("args", {}))
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        rng = np.random.default_rng(self.seed)
        batch_size = replica.batch_size(self.batch_size)
        steps = replica.steps(len(keep), batch_size)
        stopping = EarlyStopping(self.patience)
        self.history_ = []
        t_start = time.perf_counter()
        for ep in range(self.epochs):
            t0 = time.perf_counter()
            net.train()
            loss = self._train_epoch(model, opt, loss_fn, pad, train, tables, batches(rng.permutation(keep), batch_size, steps))
            rec: dict[str, Any] = {"epoch": ep, "loss": loss, "seconds": round(time.perf_counter() - t0, 2)}
            self.net_ = net
            if valid is not None and valid.y is not None:
                rec["valid_ndcg@10"] = self.valid_ndcg(valid, tables, valid_ideal_dcg)
                stopping.update(rec["valid_ndcg@10"], net)
            stop = (valid is not None and stopping.exhausted) or \
                bool(self.max_train_seconds and time.perf_counter() - t_start > self.max_train_seconds)
            rec["loss"], stop = replica.agree(rec["loss"], stop)
            self.history_.append(rec)
            if log:
                log(epoch_line(rec))
            replica.epoch_done(self, rec)
            if stop:
                break
        if stopping.best_state is not None:
            net.load_state_dict(stopping.best_state)
        net.eval()
        self.net_ = net
        self.best_valid_ndcg_ = stopping.best if stopping.best_state is not None else None
        replica.finished(self)
        return self

    def _train_epoch(self, model: torch.nn.Module, opt, loss_fn, pad: float, train, tables, batch_indices) -> float:
        """One pass of optimiser steps over ``batch_indices``; the mean batch loss."""
        tot, nb = 0.0, 0
        for idx in batch_indices:
            xs, ms, embs, qt = self._inputs(train.x, train.mask, train.rows, train.q, tables, idx)
            xs = self._drop_lexical(xs)
            y = _to_t(np.where(train.rows[idx] >= 0, train.y[idx], pad))
            loss = loss_fn(model(xs, ms, embs, qt), y, padded_value_indicator=pad)
            opt.zero_grad()
            loss.backward()
            if self.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip_norm)
            opt.step()
            tot += loss.item()
            nb += 1
        return tot / max(nb, 1)

    def valid_ndcg(self, valid, tables, valid_ideal_dcg: np.ndarray | None = None) -> float:
        """Mean NDCG@10 of the current network over ``valid`` (the early-stopping criterion)."""
        sc = self.predict(valid, tables)
        nd = ndcg_at_k_padded(sc, np.where(valid.rows >= 0, valid.y, 0), 10, mask=valid.rows >= 0, ideal_dcg=valid_ideal_dcg)
        return float(np.mean(nd))

    def _check(self) -> None:
        if self.net_ is None:
            raise NotFittedError(self)

    def predict(self, slates, tables: dict[str, np.ndarray] | None = None, batch: int = 64, return_weights: bool = False):
        """Scores ``[B, N]`` (``-inf`` on padding); with ``return_weights`` also modality weights ``[B, N, K]``."""
        self._check()
        if slates.x.shape[-1] != self.n_features_:
            raise FusionrankError(f"Expected {self.n_features_} features, but found {slates.x.shape[-1]}")
        self._check_tables(tables)
        if any(m.training for m in self.net_.modules()):  # eval() sets an attribute on every module: in a forked
            self.net_.eval()  # worker, each search would copy the pages of the supervisor's modules it writes
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
