"""Experiments: one typed config file -> a trained model directory, and evaluation.

A config has ``{name, args}`` blocks for every pluggable part (encoders, fusion,
scorer, loss, optimizer) and typed blocks for the candidate stage and the serving
index's vector search; see ``configs/fashion44k.toml``. ``train`` prepares (ingests,
encodes: both cached), fits the ranker on slates from the ranking path, evaluates,
and writes a :class:`~fusionrank.modeldir.ModelDir` including the serving index.
"""
from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from . import schema as S
from .encode import EncodeSettings
from .errors import FusionrankError
from .adaptation import fit_text_encoder
from .ingest import Catalog, split_queries
from .metrics import evaluate as eval_metrics
from .metrics import ideal_dcg_by_query
from .modalities import MODALITY_NAMES
from .modeldir import ModelDir, WorkspaceRecord
from .ranking import CandidateConfig, CatalogConfig, CatalogTables, RankingPipeline, Slates, VectorConfig, feature_groups
from .ranking.tables import TABLE_DTYPES, dense_rows
from .ranking.catalog import Bm25Config
from .rankers import RANKERS, ranker_kind
from .rankers.parallel import TrainingEngine
from .feedback.source import EventsConfig
from .workspace import Workspace, resolve_source


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    args: dict[str, Any] = Field(default_factory=dict)


def _check_args(what: str, name: str, args: dict[str, Any], target, skip: tuple[str, ...] = ()) -> None:
    """A misspelt argument of a ``{name, args}`` block is an error listing the ones ``target`` accepts."""
    params = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if n not in ("self", *skip) and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    bad = [k for k in args if k not in valid]
    if bad:
        raise ValueError(f"{what} {name!r}: unknown argument {bad[0]!r}; valid: {', '.join(valid)}")


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
    # per training slate and lexical field, the chance its BM25 and overlap features are zeroed (0 = off):
    # regularisation against learning the training queries' words (fusionrank.rankers.NeuralRanker)
    lexical_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    max_train_seconds: float | None = None
    # where the ranker trains (fusionrank.rankers.parallel.TRAINING_ENGINES): local (this process) or ray (Ray Train,
    # data-parallel over queries); workers: processes (default 1 local, 2 ray); ray_address: an existing cluster.
    # `fusionrank train --engine/--workers/--ray-address` override these.
    engine: str = "local"
    workers: int | None = Field(None, ge=1)
    ray_address: str | None = None

    def training_engine(self, engine: str | None = None, workers: int | None = None, ray_address: str | None = None):
        """The :class:`~fusionrank.rankers.parallel.TrainingEngine` of this block, with any argument given overriding it."""
        name = engine or self.engine
        n = workers or (self.workers if name == self.engine else None) or (2 if name == "ray" else 1)
        return TrainingEngine(name, n, ray_address or (self.ray_address if name == "ray" else None))


class UnderstandingConfig(BaseModel):
    """Query understanding (:mod:`fusionrank.ranking.understand`): built from the training queries, saved with the model."""
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    min_similarity: float = 0.15        # encoder similarity a lexicon candidate needs
    neighbour_similarity: float = 0.75  # encoder similarity of a nearest-term mapping
    roots: list[str] | None = None      # WordNet synsets the targets' senses must lie under (None: the shop default)


class IndexConfig(BaseModel):
    """``[index]``: how the catalogue tables store what the ranker reads (training, evaluation and the serving index alike)."""

    model_config = ConfigDict(extra="forbid")
    table_dtype: Literal[tuple(TABLE_DTYPES)] = "float32"  # type: ignore[valid-type]  # float16: half the memory


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "experiment"
    seed: int = 0
    modalities: list[Literal["text", "image", "audio"]] = Field(default_factory=lambda: list(MODALITY_NAMES))
    data: DataConfig = Field(default_factory=DataConfig)
    encoders: dict[str, Block | None] = Field(default_factory=dict)
    candidates: CandidateConfig = Field(default_factory=CandidateConfig)
    bm25: Bm25Config = Field(default_factory=Bm25Config)
    vectors: VectorConfig = Field(default_factory=VectorConfig)  # the serving index's nearest-neighbour search
    index: IndexConfig = Field(default_factory=IndexConfig)
    fusion: Block = Field(default_factory=lambda: Block(name="weighted_sum"))
    scorer: Block = Field(default_factory=lambda: Block(name="mlp", args={"hidden": 64, "dropout": 0.1}))
    loss: Block = Field(default_factory=lambda: Block(name="lambdaloss"))
    optimizer: Block = Field(default_factory=lambda: Block(name="adam", args={"lr": 2e-3, "weight_decay": 1e-5}))
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    understanding: UnderstandingConfig = Field(default_factory=UnderstandingConfig)
    # train from an event store's logged searches and shopper actions (see fusionrank.feedback.source)
    events: EventsConfig | None = None
    # batch engine for encoding: local (processes = worker processes) or ray (address, num_cpus)
    engine: Block = Field(default_factory=lambda: Block(name="local", args={"processes": 2}))

    @model_validator(mode="after")
    def _check_blocks(self) -> "ExperimentConfig":
        """Every ``{name, args}`` block names a registered component and passes only arguments it takes."""
        from .encoders import ENCODERS
        from .errors import UnknownNameError
        from .fusion import FUSIONS
        from .losses import LOSSES
        from .rankers import FeatureRanker, GBDTRanker, NeuralRanker

        try:
            for key, b in self.encoders.items():
                if b is not None and b.name.lower() not in ("none", "off"):
                    _check_args(f"encoders.{key}", b.name, b.args, ENCODERS.get(b.name).__init__)
            _check_args("fusion", self.fusion.name, self.fusion.args, FUSIONS.get(self.fusion.name).__init__,
                        ("n_modalities", "hidden", "query_dim"))
            _check_args("loss", self.loss.name, self.loss.args, LOSSES.get(self.loss.name), ("y_pred", "y_true"))
            if ranker_kind(self.scorer.name) == GBDTRanker.kind:
                _check_args("scorer", self.scorer.name, self.scorer.args, GBDTRanker.__init__, ("seed",))
            elif ranker_kind(self.scorer.name) == FeatureRanker.kind:
                _check_args("scorer", self.scorer.name, self.scorer.args, FeatureRanker.__init__)
            else:  # the other blocks set the rest of NeuralRanker's arguments
                _check_args("scorer", self.scorer.name, self.scorer.args, NeuralRanker.__init__,
                            ("fusion", "fusion_args", "scorer", "loss", "seed", "lr", "weight_decay", *TrainingConfig.model_fields))
            _check_args("optimizer", self.optimizer.name, self.optimizer.args, lambda lr=None, weight_decay=None: None)
        except UnknownNameError as e:
            raise ValueError(str(e)) from None
        return self

    @classmethod
    def load(cls, path: str | Path) -> "ExperimentConfig":
        from pydantic import ValidationError

        from .config import load_config

        try:
            return cls.model_validate(load_config(path))
        except ValidationError as e:
            raise FusionrankError(f"{path}: invalid experiment config:\n{e}") from None

    def _encoder(self, key: str) -> dict | None:
        """An encoder block as a dict, None when switched off (TOML has no null: ``name = "none"``)."""
        if key not in self.encoders:
            return EncodeSettings().__dict__[key]
        b = self.encoders[key]
        return None if b is None or b.name.lower() in ("none", "off") else b.model_dump()

    # where the trained text encoder (minilm_adapter) is saved: set by training and by ModelDir.config, never in a file
    _text_encoder_state: str | None = PrivateAttr(default=None)

    def with_text_encoder_state(self, directory: str | Path) -> "ExperimentConfig":
        """This config, reading its trained text encoder from ``directory`` (``Encoder.save``)."""
        c = self.model_copy()
        c._text_encoder_state = str(directory)
        return c

    @property
    def text_encoder_spec(self) -> dict:
        spec = self._encoder("text") or {"name": "minilm", "args": {}}
        return spec | ({"state": self._text_encoder_state} if self._text_encoder_state else {})

    @property
    def text_encoder_name(self) -> str:
        return self.text_encoder_spec["name"]

    @property
    def transcriber_name(self) -> str:
        """Whose transcripts the store holds: the configured transcriber's, or (switched off for this config, so
        nothing new is transcribed) the default one's, whose earlier transcripts are still read."""
        return (self._encoder("transcriber") or EncodeSettings().transcriber)["name"]

    @property
    def photo_attributes(self) -> bool:
        """Whether the photo's colour expands titles that state none (an ``[encoders.attributes]`` block, off by default)."""
        return "attributes" in self.encoders and self._encoder("attributes") is not None

    def encoded_modalities(self) -> list[str]:
        """Modalities the store must hold: text always (candidates use it), image and audio if the model ranks them
        (image also for the photo colour head)."""
        return ["text"] + [m for m in ("image", "audio") if m in self.modalities or (m == "image" and self.photo_attributes)]

    def encode_settings(self, extra_title_fields=()) -> EncodeSettings:
        d: dict[str, Any] = {k: self._encoder(k) for k in ("text", "image", "transcriber", "audio_features", "projection")
                             if k in self.encoders}
        if self.photo_attributes:  # `[encoders.attributes]`: the photo colour head, per title field
            d["attributes"] = self._encoder("attributes")
        fields = sorted({S.TITLE, *self.data.train_title_fields, self.data.title_field, *extra_title_fields})
        d["projection_fields"] = tuple(fields)
        d["text_fields"] = tuple(dict.fromkeys([*fields, S.DESCRIPTION]))
        return EncodeSettings.from_dict(d)

    def catalog_config(self, title_field: str | None = None, codec: str | None = None,
                       table_dtype: str | None = None) -> CatalogConfig:
        """How the catalogue is indexed for ``title_field``; ``codec`` overrides the vector search (e.g. ``exact``),
        ``table_dtype`` the ``[index]`` table storage."""
        vectors = self.vectors if codec is None else self.vectors.model_copy(update={"codec": codec})
        return CatalogConfig(title_field=title_field or self.data.title_field, candidates=self.candidates, bm25=self.bm25,
                             ann=vectors, table_dtype=table_dtype or self.index.table_dtype,
                             photo_attributes=self.photo_attributes, transcript_attributes="audio" in self.modalities)

    def build_ranker(self):
        """An unfitted ranker of the kind ``[scorer]`` selects (:data:`~fusionrank.rankers.RANKERS`)."""
        return RANKERS.get(ranker_kind(self.scorer.name)).from_config(self)


def split_frame(cat: Catalog, split: str) -> pd.DataFrame:
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
    each variant's slates index into its own block of the stacked tables. The slates
    come from the ranking path (:meth:`RankingPipeline.slates`), as at serving time.
    Returns ``(train_slates, valid_slates, tables, catalogs)``.
    """
    from .ranking import QueryEncoder

    train_parts, valid_parts, tables = [], [], {}
    catalogs: dict[str, CatalogTables] = {}
    encoder = QueryEncoder(text_encoder=config.text_encoder_spec, cache_size=len(tq) + len(vq) + 16)
    off = 0
    for tf in title_fields or config.data.train_title_fields:
        t0 = time.perf_counter()
        cat = CatalogTables.from_store(products, store_dir, config.catalog_config(tf, codec="exact"), config.text_encoder_name,
                                       config.transcriber_name, log=lambda m: log("  " + m))
        catalogs[tf] = cat
        pipe = RankingPipeline.over(cat, None, encoder)
        train_parts.append(pipe.slates(tq[S.QUERY_ID].tolist(), tq[S.QUERY].tolist(), qrels).offset_rows(off))
        valid_parts.append(pipe.slates(vq[S.QUERY_ID].tolist(), vq[S.QUERY].tolist(), qrels).offset_rows(off))
        for k, e in dense_rows(cat.tables(), cat.n_rows).items():
            tables.setdefault(k, []).append(e)
        off += cat.n_rows
        log(f"  slates for title field {tf!r} in {time.perf_counter() - t0:.1f} s")
    tables = {k: np.concatenate(v) for k, v in tables.items()}
    return Slates.concat(train_parts), Slates.concat(valid_parts), tables, catalogs


def serving_catalog_config(own: CatalogConfig, served: CatalogConfig) -> CatalogConfig:
    """``own`` (a config's catalogue settings) with what decides the candidates and their features taken from the
    index that served (``served``): candidates, BM25, vector search and table storage. The title field and the
    attribute tables stay the model's."""
    return own.model_copy(update={"candidates": served.candidates, "bm25": served.bm25, "ann": served.ann,
                                  "table_dtype": served.table_dtype})


def click_training_data(cat: Catalog, store_dir: Path, config: ExperimentConfig, tq: pd.DataFrame, vq: pd.DataFrame,
                        log=print, config_path: Path | None = None):
    """Training slates labelled from the event store's clicks (``[events]``), on the served title field.

    The judged training queries join with their grades scaled by ``events.judgments_weight`` when it
    is above 0; judged validation queries (when the catalogue has them) drive early stopping, else the
    ranker trains for ``training.epochs``. Returns ``(train, valid or None, tables, catalogs, info)``.
    """
    from .feedback.source import click_training_slates, config_relative
    from .ranking import QueryEncoder

    ev = config.events
    tf = config.data.title_field
    # the serving index's own candidate settings and vector search: the candidates the shoppers were shown come from it
    base = config_path.parent if config_path is not None else None
    cc = config.catalog_config(tf)
    if ev.index is not None:
        from .serving.index import SearchIndex

        cc = serving_catalog_config(cc, SearchIndex.saved_config(config_relative(ev.index, base)))
        log(f"  slates as the serving index {ev.index} builds them: {cc.candidates.name} candidates, {cc.ann.codec} vectors")
    tables = CatalogTables.from_store(cat.products, store_dir, cc, config.text_encoder_name,
                                      config.transcriber_name, log=lambda m: log("  " + m))
    pipe = RankingPipeline.over(tables, None, QueryEncoder(text_encoder=config.text_encoder_spec))
    train, info = click_training_slates(ev, pipe, log, base)
    if ev.judgments_weight > 0 and len(tq) and cat.qrels is not None:
        judged = pipe.slates(tq[S.QUERY_ID].tolist(), tq[S.QUERY].tolist(), cat.qrels)
        judged.y = np.where(judged.rows >= 0, judged.y * ev.judgments_weight, -1).astype(np.float32)
        train = Slates.concat([train, judged])
        info["judged_queries"] = len(judged)
    valid = pipe.slates(vq[S.QUERY_ID].tolist(), vq[S.QUERY].tolist(), cat.qrels) if len(vq) and cat.qrels is not None else None
    return train, valid, tables.tables(), {tf: tables}, info


def prepare_training(config: ExperimentConfig, config_path: Path | None = None, log=print, progress: bool = True):
    """Ingest and encode (both cached) and split the training queries into train / validation.

    Returns ``(source, workspace, catalog, encode_summary, train_queries, valid_queries)``.
    """
    src = resolve_source(config.data.source, config_path)
    ws = Workspace(src, config.data.adapter, config.data.limit, adapter_args=config.data.adapter_args)
    cat = ws.catalog(log)
    enc_summary = ws.encode(cat.products, config.encode_settings(), log, progress, modalities=config.encoded_modalities(),
                            engine=config.engine)
    try:
        train_q = split_frame(cat, config.data.train_split)
    except FusionrankError:
        if config.events is None:
            raise
        empty = pd.DataFrame({S.QUERY_ID: pd.Series(dtype=str), S.QUERY: pd.Series(dtype=str)})
        return src, ws, cat, enc_summary, empty, empty  # clicks only: no judged queries
    split = split_queries(train_q, {"train": 1 - config.data.valid_fraction, "valid": config.data.valid_fraction}, seed=config.seed)
    tq, vq = train_q[split == "train"], train_q[split == "valid"]
    if config.data.max_train_queries:
        tq = tq.sample(n=min(len(tq), config.data.max_train_queries), random_state=config.seed)
    return src, ws, cat, enc_summary, tq, vq


def train(config: ExperimentConfig, out_dir: str | Path, config_path: Path | None = None, log=print,
          progress: bool = True, build_index: bool = True, engine: TrainingEngine | None = None) -> dict[str, Any]:
    """Prepare (ingest, encode; cached), build slates, fit the ranker, evaluate, save the model directory and its index.

    ``engine`` says where the ranker trains (:class:`~fusionrank.rankers.parallel.TrainingEngine`; default: the
    config's ``[training]`` engine, this process unless it says otherwise).
    """
    t_all = time.perf_counter()
    engine = engine or config.training.training_engine()
    ranker = config.build_ranker()
    engine.check(ranker)  # before the (long) preparation
    md = ModelDir(out_dir)
    src, ws, cat, enc_summary, tq, vq = prepare_training(config, config_path, log, progress)
    config = fit_text_encoder(config, cat.products, ws.store_dir, tq, vq, cat.qrels, md.text_encoder_dir, log)
    groups = feature_groups(config.modalities)
    log(f"training queries {len(tq):,}, validation queries {len(vq):,}; modalities {config.modalities}")
    clicks = None
    if config.events is not None:
        train_sl, valid_sl, tables, catalogs, clicks = click_training_data(cat, ws.store_dir, config, tq, vq, log, config_path)
    else:
        train_sl, valid_sl, tables, catalogs = training_data(cat.products, ws.store_dir, config, tq, vq, cat.qrels, log)
    t0 = time.perf_counter()
    engine.fit(ranker, train_sl, groups, tables, valid=valid_sl,
               valid_ideal_dcg=ideal_for(valid_sl, cat.qrels) if valid_sl is not None else None, storage=md.path, log=log)
    train_seconds = time.perf_counter() - t0
    metrics: dict[str, Any] = {"train_seconds": round(train_seconds, 1), "training_engine": {"name": engine.name, "workers": engine.workers},
                               "train_queries": len(tq) if clicks is None else len(train_sl),
                               "valid_queries": len(vq) if valid_sl is not None else 0,
                               "best_valid_ndcg@10": getattr(ranker, "best_valid_ndcg_", None)}
    if clicks is not None:
        metrics["clicks"] = clicks
    md.write(config=config, ranker=ranker, workspace=WorkspaceRecord(str(src), str(ws.catalog_dir), str(ws.store_dir),
                                                                      enc_summary.get("jobs")))
    if config.understanding.enabled:
        tf = config.data.title_field
        texts = [*tq[S.QUERY].tolist(), *vq[S.QUERY].tolist()] if clicks is None else list(train_sl.queries)
        metrics["understanding"] = build_understanding(md, config, texts, catalogs.get(tf) or md.catalog_tables(tf, log=lambda m: None),
                                                       log)
    if config.data.eval_split:
        try:
            eq = split_frame(cat, config.data.eval_split)
        except FusionrankError:
            eq = None
        if eq is not None:
            for tf in dict.fromkeys([config.data.title_field, *config.data.train_title_fields]):
                tabs = catalogs.get(tf) or md.catalog_tables(tf, log=lambda m: None)
                res = evaluate_pipeline(md.pipeline(tabs, ranker), eq, cat.qrels)
                metrics[f"{config.data.eval_split}/{tf}"] = res["mean"]
                log(f"  {config.data.eval_split} ({tf}): " + ", ".join(f"{k} {v:.4f}" for k, v in res["mean"].items()))
    alpha = ranker.modality_weights()
    if alpha is not None:
        alpha_kind = "learned alpha_k (softmax)"
    else:  # gated fusion: the mean weight it applied on validation candidates
        tf = config.data.title_field
        pipe = md.pipeline(catalogs.get(tf) or md.catalog_tables(tf, log=lambda m: None), ranker)
        qids, texts = (vq[S.QUERY_ID].tolist()[:100], vq[S.QUERY].tolist()[:100]) if len(vq) else \
            (train_sl.query_ids[:100], train_sl.queries[:100])
        scored = pipe.scorer.transform(pipe.slates(qids, texts))
        if scored.weights is not None:
            present = scored.slates.rows >= 0
            alpha = {g.name: float(scored.weights[..., j][present].mean()) for j, g in enumerate(ranker.groups_)}
        alpha_kind = "mean applied weight on validation candidates" if alpha is not None else "n/a"
    metrics["alpha"] = alpha
    if build_index:
        t1 = time.perf_counter()
        md.build_index(log=lambda m: log("  " + m))
        metrics["index_seconds"] = round(time.perf_counter() - t1, 1)
    metrics["seconds_total"] = round(time.perf_counter() - t_all, 1)
    md.write(alpha={"kind": alpha_kind, "weights": alpha}, metrics=metrics)
    return metrics


def build_understanding(md: ModelDir, config: ExperimentConfig, training_queries: list[str], tables: CatalogTables,
                        log=print) -> dict[str, Any]:
    """Build the model's query understanding from the queries it trained on and save it in ``md``."""
    from .modalities import modality
    from .ranking import QueryEncoder
    from .ranking.understand import DOMAIN_ROOTS, QueryUnderstanding

    t0 = time.perf_counter()
    u = config.understanding
    enc = QueryEncoder(text_encoder=config.text_encoder_spec)
    qu = QueryUnderstanding.build(training_queries, tables.lexical[modality("text").lexical].doc_freq,
                                  lambda t: enc.encode_base(t)[0], roots=u.roots or DOMAIN_ROOTS, min_similarity=u.min_similarity,
                                  neighbour_similarity=u.neighbour_similarity)
    qu.save(md.path)
    info = {"known_terms": len(qu.known), "targets": len(qu.targets), "lexicon_entries": len(qu.lexicon),
            "seconds": round(time.perf_counter() - t0, 1)}
    log(f"  query understanding: {info['known_terms']:,} known terms, {info['targets']:,} targets, "
        f"{info['lexicon_entries']:,} lexicon entries in {info['seconds']} s")
    return info


def understand_model(model_dir: str | Path, log=print) -> dict[str, Any]:
    """(Re)build a trained model's query understanding from the judged training queries it was trained on."""
    from .ingest import Catalog

    md = ModelDir.open(model_dir)
    config = md.config()
    if config.events is not None:
        raise FusionrankError(f"{md.path} was trained from an event store; re-train it to rebuild its query understanding")
    cat = Catalog.load(Path(md.workspace().catalog))
    train_q = split_frame(cat, config.data.train_split)  # the queries train() split into train and validation
    tf = config.data.title_field
    return build_understanding(md, config, train_q[S.QUERY].tolist(), md.catalog_tables(tf, log=lambda m: None), log)


def evaluate_pipeline(pipe: RankingPipeline, queries: pd.DataFrame, qrels: pd.DataFrame,
                      metrics=("ndcg@10", "map", "mrr", "recall@100")) -> dict[str, Any]:
    run = pipe.run(queries[S.QUERY_ID].tolist(), queries[S.QUERY].tolist())
    qr = qrels[qrels[S.QUERY_ID].isin(set(queries[S.QUERY_ID]))]
    res = eval_metrics(qr, run, list(metrics))
    return {"mean": {k: float(v) for k, v in res.mean.items()}, "per_query": res.per_query, "queries": int(res.n_queries), "run": run}
