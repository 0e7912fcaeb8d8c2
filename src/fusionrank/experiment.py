"""Experiments: one typed config file -> a trained model directory, and evaluation.

A config has ``{name, args}`` blocks for every pluggable part (encoders, fusion,
scorer, loss, optimizer); see ``configs/fashion44k.toml``. ``train`` writes::

    MODEL_DIR/config.json     the config used (resolved)
    MODEL_DIR/ranker/         weights (+ ranker.json with the learned state summary)
    MODEL_DIR/alpha.json      learned modality weights alpha_k (weighted_sum) or mean gate weights
    MODEL_DIR/metrics.json    validation and evaluation metrics
    MODEL_DIR/workspace.json  where the catalogue and embedding store were kept
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import schema as S
from .encode import EncodeSettings
from .errors import FusionrankError
from .features import MODALITIES, IndexConfig, ProductIndex, Slates
from .ingest import Catalog, split_queries
from .metrics import evaluate as eval_metrics
from .metrics import ideal_dcg_by_query
from .pipeline import RankingPipeline, embedding_tables, feature_groups
from .rankers import GBDTRanker, NeuralRanker
from .workspace import Workspace, catalog_from_path, resolve_source

class Block(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    args: dict[str, Any] = Field(default_factory=dict)


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = "../shared/data/fashion44k"
    adapter: str = "fashion44k"
    limit: int | None = None
    title_field: str = "title"
    train_title_fields: list[str] = Field(default_factory=lambda: ["title"])
    train_split: str = "train"
    eval_split: str | None = "dev"
    valid_fraction: float = 0.1
    max_train_queries: int | None = None
    # options of the adapter (e.g. { locale = "us" } for esci); see `fusionrank ingest --list-options ADAPTER`
    adapter_args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_adapter_args(self) -> "DataConfig":
        from .errors import UnknownNameError
        from .ingest.adapters import adapter_options

        try:  # an AdapterOptionsError is a ValueError: pydantic reports it under `data`
            adapter_options(self.adapter, self.adapter_args, **({"limit": self.limit} if self.limit is not None else {}))
        except UnknownNameError as e:
            raise ValueError(str(e)) from None
        return self


class TrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = 30
    batch_size: int = 16
    patience: int = 4
    clip_norm: float = 1.0
    modality_dropout: float = 0.1
    max_train_seconds: float | None = None


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "experiment"
    seed: int = 0
    modalities: list[Literal["text", "image", "audio"]] = Field(default_factory=lambda: list(MODALITIES))
    data: DataConfig = Field(default_factory=DataConfig)
    encoders: dict[str, Block | None] = Field(default_factory=dict)
    candidates: dict[str, Any] = Field(default_factory=dict)
    fusion: Block = Field(default_factory=lambda: Block(name="weighted_sum"))
    scorer: Block = Field(default_factory=lambda: Block(name="mlp", args={"hidden": 64, "dropout": 0.1}))
    loss: Block = Field(default_factory=lambda: Block(name="lambdaloss"))
    optimizer: Block = Field(default_factory=lambda: Block(name="adam", args={"lr": 2e-3, "weight_decay": 1e-5}))
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    # batch engine for encoding: local (processes = worker processes) or ray (address, num_cpus)
    engine: Block = Field(default_factory=lambda: Block(name="local", args={"processes": 2}))

    @classmethod
    def load(cls, path: str | Path) -> "ExperimentConfig":
        from .config import load_config

        from pydantic import ValidationError

        try:
            return cls.model_validate(load_config(path))
        except ValidationError as e:
            raise FusionrankError(f"{path}: invalid experiment config:\n{e}") from None

    def encode_settings(self) -> EncodeSettings:
        d: dict[str, Any] = {}
        for k in ("text", "image", "transcriber", "audio_features", "projection"):
            if k in self.encoders:
                b = self.encoders[k]
                # TOML has no null: `name = "none"` switches an encoder off
                d[k] = None if b is None or b.name.lower() in ("none", "off") else b.model_dump()
        fields = sorted({S.TITLE, *self.data.train_title_fields, self.data.title_field})
        d["projection_fields"] = tuple(fields)
        d["text_fields"] = tuple(dict.fromkeys([*fields, S.DESCRIPTION]))
        return EncodeSettings.from_dict(d)

    def index_config(self, title_field: str | None = None) -> IndexConfig:
        ic = {"title_field": title_field or self.data.title_field, "candidates": dict(self.candidates)}
        if "text" in self.encoders and self.encoders["text"] is not None:
            ic["text_encoder"] = self.encoders["text"].model_dump()
        return IndexConfig.from_dict(ic)

    def build_ranker(self):
        if self.scorer.name == "lightgbm":
            return GBDTRanker(seed=self.seed, **self.scorer.args)
        if self.optimizer.name != "adam":
            raise FusionrankError(f"unknown optimizer {self.optimizer.name!r}; valid: adam")
        sargs = dict(self.scorer.args)
        return NeuralRanker(fusion=self.fusion.name, fusion_args=self.fusion.args, scorer=self.scorer.name,
                            loss=self.loss.model_dump(), hidden=sargs.pop("hidden", 64), dropout=sargs.pop("dropout", 0.1),
                            normalize=sargs.pop("normalize", "l2"), seed=self.seed,
                            lr=self.optimizer.args.get("lr", 2e-3), weight_decay=self.optimizer.args.get("weight_decay", 1e-5),
                            epochs=self.training.epochs, batch_size=self.training.batch_size, patience=self.training.patience,
                            clip_norm=self.training.clip_norm, modality_dropout=self.training.modality_dropout,
                            max_train_seconds=self.training.max_train_seconds, **sargs)


def _split_frames(cat: Catalog, split: str) -> pd.DataFrame:
    q = cat.queries
    if q is None:
        raise FusionrankError("the catalogue has no queries")
    if "split" in q.columns and split in set(q["split"]):
        return q[q["split"] == split].reset_index(drop=True)
    raise FusionrankError(f"no queries in split {split!r}; available: {sorted(set(q.get('split', pd.Series(dtype=str))))}")


def ideal_for(slates: Slates, qrels: pd.DataFrame, k: int = 10) -> np.ndarray:
    idcg = ideal_dcg_by_query(qrels[qrels[S.QUERY_ID].isin(set(slates.query_ids))], k)
    return np.array([idcg.get(q, 0.0) for q in slates.query_ids], np.float64)


def training_data(products: pd.DataFrame, store_dir: Path, config: ExperimentConfig, tq: pd.DataFrame, vq: pd.DataFrame,
                  qrels: pd.DataFrame, log=print, title_fields: list[str] | None = None):
    """Training and validation slates over every training title field, with stacked embedding tables.

    Each catalogue variant has its own embeddings (title text, photo projection), so
    each variant's slates index into its own block of the stacked tables.
    Returns ``(train_slates, valid_slates, tables, indexes)``.
    """
    train_parts, valid_parts, tables, offsets = [], [], {}, {}
    indexes: dict[str, ProductIndex] = {}
    off = 0
    for tf in title_fields or config.data.train_title_fields:
        t0 = time.perf_counter()
        idx = ProductIndex.build(products, store_dir, config.index_config(tf), log=lambda m: log("  " + m))
        indexes[tf] = idx
        t = idx.slates(tq[S.QUERY_ID].tolist(), tq[S.QUERY].tolist(), qrels)
        v = idx.slates(vq[S.QUERY_ID].tolist(), vq[S.QUERY].tolist(), qrels)
        for sl in (t, v):
            sl.rows[sl.rows >= 0] += off
        train_parts.append(t)
        valid_parts.append(v)
        for k, e in embedding_tables(idx).items():
            tables.setdefault(k, []).append(e)
        off += len(idx.ids)
        log(f"  slates for title field {tf!r} in {time.perf_counter() - t0:.1f} s")
    tables = {k: np.concatenate(v) for k, v in tables.items()}
    return Slates.concat(train_parts), Slates.concat(valid_parts), tables, indexes


def prepare_training(config: ExperimentConfig, config_path: Path | None = None, log=print, progress: bool = True):
    """Ingest and encode (both cached) and split the training queries into train / validation.

    Returns ``(source, workspace, catalog, encode_summary, train_queries, valid_queries)``.
    """
    src = resolve_source(config.data.source, config_path)
    ws = Workspace(src, config.data.adapter, config.data.limit, adapter_args=config.data.adapter_args)
    cat = ws.catalog(log)
    # photos are needed by the image modality; text is always encoded (candidates use it)
    mods = ["text"] + [m for m in ("image", "audio") if m in config.modalities]
    enc_summary = ws.encode(cat.products, config.encode_settings(), log, progress, modalities=mods, engine=config.engine)
    train_q = _split_frames(cat, config.data.train_split)
    split = split_queries(train_q, {"train": 1 - config.data.valid_fraction, "valid": config.data.valid_fraction}, seed=config.seed)
    tq, vq = train_q[split == "train"], train_q[split == "valid"]
    if config.data.max_train_queries:
        tq = tq.sample(n=min(len(tq), config.data.max_train_queries), random_state=config.seed)
    return src, ws, cat, enc_summary, tq, vq


def train(config: ExperimentConfig, out_dir: str | Path, config_path: Path | None = None, log=print,
          progress: bool = True) -> dict[str, Any]:
    """Ingest and encode (cached), build slates, fit the ranker, save the model directory."""
    t_all = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src, ws, cat, enc_summary, tq, vq = prepare_training(config, config_path, log, progress)
    groups = feature_groups(config.modalities)
    log(f"training queries {len(tq):,}, validation queries {len(vq):,}; modalities {config.modalities}")
    train_sl, valid_sl, tables, indexes = training_data(cat.products, ws.store_dir, config, tq, vq, cat.qrels, log)
    ranker = config.build_ranker()
    t0 = time.perf_counter()
    ranker.fit(train_sl, groups, tables, valid=valid_sl, valid_ideal_dcg=ideal_for(valid_sl, cat.qrels), log=log)
    train_seconds = time.perf_counter() - t0
    ranker.save(out / "ranker")
    alpha = ranker.modality_weights()
    metrics: dict[str, Any] = {"train_seconds": round(train_seconds, 1), "train_queries": len(tq), "valid_queries": len(vq),
                               "best_valid_ndcg@10": getattr(ranker, "best_valid_ndcg_", None)}
    cfg = config.model_dump()
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "workspace.json").write_text(json.dumps({"source": str(src), "catalog": str(ws.catalog_dir), "store": str(ws.store_dir),
                                                    "encode": enc_summary.get("jobs")}, indent=2))
    # mean gate / fusion weights on validation candidates, per title field
    pipe = RankingPipeline(indexes[config.data.title_field] if config.data.title_field in indexes else next(iter(indexes.values())),
                           ranker, config.modalities)
    if config.data.eval_split:
        try:
            eq = _split_frames(cat, config.data.eval_split)
        except FusionrankError:
            eq = None
        if eq is not None:
            for tf in dict.fromkeys([config.data.title_field, *config.data.train_title_fields]):
                idx = indexes.get(tf) or ProductIndex.build(cat.products, ws.store_dir, config.index_config(tf), log=lambda m: None)
                p = RankingPipeline(idx, ranker, config.modalities)
                res = evaluate_pipeline(p, eq, cat.qrels)
                metrics[f"{config.data.eval_split}/{tf}"] = res["mean"]
                log(f"  {config.data.eval_split} ({tf}): " + ", ".join(f"{k} {v:.4f}" for k, v in res["mean"].items()))
    if alpha is None and hasattr(ranker, "net_"):
        sl = pipe.slates(vq[S.QUERY_ID].tolist()[:100], vq[S.QUERY].tolist()[:100])
        _, w = ranker.predict(sl, pipe.tables, return_weights=True)
        present = sl.rows >= 0
        alpha = {g.name: float(w[..., j][present].mean()) for j, g in enumerate(ranker.groups_)}
        alpha_kind = "mean applied weight on validation candidates"
    else:
        alpha_kind = "learned alpha_k (softmax)" if alpha is not None else "n/a"
    (out / "alpha.json").write_text(json.dumps({"kind": alpha_kind, "weights": alpha}, indent=2))
    metrics["alpha"] = alpha
    metrics["seconds_total"] = round(time.perf_counter() - t_all, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def evaluate_pipeline(pipe: RankingPipeline, queries: pd.DataFrame, qrels: pd.DataFrame,
                      metrics=("ndcg@10", "map", "mrr", "recall@100")) -> dict[str, Any]:
    run = pipe.run(queries[S.QUERY_ID].tolist(), queries[S.QUERY].tolist())
    qr = qrels[qrels[S.QUERY_ID].isin(set(queries[S.QUERY_ID]))]
    res = eval_metrics(qr, run, list(metrics))
    return {"mean": {k: float(v) for k, v in res.mean.items()}, "per_query": res.per_query, "queries": int(res.n_queries), "run": run}


def load_model(model_dir: str | Path):
    d = Path(model_dir)
    if not (d / "config.json").exists():
        raise FusionrankError(f"{d}: not a model directory (no config.json); train one with `fusionrank train`")
    config = ExperimentConfig.model_validate(json.loads((d / "config.json").read_text()))
    ranker = GBDTRanker.load(d / "ranker") if (d / "ranker" / "lightgbm.txt").exists() else NeuralRanker.load(d / "ranker")
    ws = json.loads((d / "workspace.json").read_text()) if (d / "workspace.json").exists() else {}
    return config, ranker, ws


def open_pipeline(model_dir: str | Path, catalog: str | Path | None = None, title_field: str | None = None, log=print,
                  progress: bool = True) -> tuple[RankingPipeline, Catalog]:
    """Load a model directory and the catalogue it ranks (encoding whatever is not cached yet)."""
    config, ranker, wsinfo = load_model(model_dir)
    if catalog is None:
        if not wsinfo:
            raise FusionrankError(f"{model_dir}: no workspace recorded; pass --catalog")
        ws = Workspace(Path(wsinfo["source"]), config.data.adapter, config.data.limit, adapter_args=config.data.adapter_args)
        ws.catalog_dir, ws.store_dir = Path(wsinfo["catalog"]), Path(wsinfo["store"])
    else:
        ws = catalog_from_path(Path(catalog))
    cat = ws.catalog(log)
    tf = title_field or config.data.title_field
    settings = config.encode_settings()
    settings.projection_fields = tuple(dict.fromkeys([*settings.projection_fields, tf]))
    settings.text_fields = tuple(dict.fromkeys([*settings.text_fields, tf]))
    ws.encode(cat.products, settings, log, progress, modalities=["text"] + [m for m in ("image", "audio") if m in config.modalities],
              engine=config.engine)
    idx = ProductIndex.build(cat.products, ws.store_dir, config.index_config(tf), log=lambda m: log("  " + m))
    return RankingPipeline(idx, ranker, config.modalities), cat
