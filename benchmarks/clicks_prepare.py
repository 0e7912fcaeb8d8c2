"""Prepare the learning-from-clicks benchmark on fashion44k (cached; ``learning_from_clicks.py`` runs it when needed).

    .venv/bin/python benchmarks/clicks_prepare.py [--out ~/.cache/fusionrank/bench-clicks] [--candidates 200]

Writes, under ``--out``:

- ``slates_train.npz``: the ranking path's candidates and features of every fashion44k training
  query (title field ``title``, the catalogue the simulated shop serves), with their true grades;
- ``slates_dev_title.npz``, ``slates_dev_title_sparse.npz``: the same for the dev queries on both
  title fields (NDCG@10 over the full catalogue, with the ideal DCG from all judged products);
- ``index/``: the serving index of the full catalogue (title field ``title``);
- ``models/bm25``: the weak logging policy, BM25 on titles (a ``feature`` ranker) as a model directory.

Nothing here is a result; it only saves repeating the ranking path for every training run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

FIELDS = ("title", "title_sparse")


def bench_config(candidates: int = 200):
    """The benchmark's experiment config: the shipped architecture on text and photos (the voice transcripts of the
    full catalogue are not all encoded on this machine), trained per run by the benchmark itself."""
    from fusionrank.experiment import ExperimentConfig
    from fusionrank.settings import get_settings

    return ExperimentConfig.model_validate({
        "name": "clicks-44k", "seed": 0, "modalities": ["text", "image"],
        "data": {"source": str(get_settings().fashion44k_dir), "adapter": "fashion44k", "title_field": "title",
                 "train_title_fields": ["title"], "train_split": "train", "eval_split": "dev", "valid_fraction": 0.0001},
        "encoders": {"text": {"name": "minilm"}, "image": {"name": "efficientnet_lite0", "args": {"resolution": 128}},
                     "projection": {"name": "image_projection", "args": {"epochs": 12, "temperature": 0.05}},
                     "transcriber": {"name": "whisper_tiny_en"}, "audio_features": {"name": "logmel_stats"}},
        "candidates": {"n": candidates, "depth": 200, "rrf_k": 60.0},
        "fusion": {"name": "gated"}, "scorer": {"name": "mlp", "args": {"hidden": 64, "dropout": 0.1}},
        "loss": {"name": "lambdaloss", "args": {"weighing_scheme": "ndcgLoss2++"}},
        "optimizer": {"name": "adam", "args": {"lr": 0.002, "weight_decay": 1e-5}},
        "training": {"epochs": 6, "batch_size": 16, "patience": 3, "clip_norm": 1.0, "modality_dropout": 0.1},
    })


def save_slates(path: Path, sl, ideal=None) -> None:
    np.savez(path, query_ids=np.array(sl.query_ids, dtype=object), queries=np.array(sl.queries, dtype=object), rows=sl.rows,
             x=sl.x, mask=sl.mask, q=sl.q, y=sl.y, ideal=ideal if ideal is not None else np.zeros(len(sl)))


def load_slates(path: Path):
    from fusionrank.ranking import Slates

    z = np.load(path, allow_pickle=True)
    return Slates(list(z["query_ids"]), list(z["queries"]), z["rows"], z["x"], z["mask"], z["q"], z["y"]), z["ideal"]


def prepare(out: Path, candidates: int = 200, log=print) -> dict:
    from fusionrank import schema as S
    from fusionrank.experiment import split_frame, ideal_for, prepare_training
    from fusionrank.modeldir import ModelDir, WorkspaceRecord
    from fusionrank.ranking import CatalogTables, QueryEncoder, RankingPipeline, feature_groups
    from fusionrank.rankers import FeatureRanker

    out.mkdir(parents=True, exist_ok=True)
    config = bench_config(candidates)
    src, ws, cat, _, tq, vq = prepare_training(config, None, log, progress=False)
    # the dev slates of title_sparse need that field encoded too (the model trains on title alone); cached when done
    ws.encode(cat.products, config.encode_settings(FIELDS), log, False, modalities=config.encoded_modalities(), engine=config.engine)
    train_q = split_frame(cat, "train")
    dev_q = split_frame(cat, "dev")
    enc = QueryEncoder(text_encoder=config.text_encoder_spec, cache_size=len(train_q) + len(dev_q) + 16)
    info = {"train_queries": len(train_q), "dev_queries": len(dev_q), "candidates": candidates}
    for tf in FIELDS:
        want = [out / f"slates_dev_{tf}.npz"] + ([out / "slates_train.npz"] if tf == "title" else [])
        if all(p.exists() for p in want):
            continue
        t0 = time.perf_counter()
        tables = CatalogTables.from_store(cat.products, ws.store_dir, config.catalog_config(tf, codec="exact"),
                                          config.text_encoder_name, config.transcriber_name, log=lambda m: None)
        pipe = RankingPipeline.over(tables, None, enc)
        if tf == "title":
            sl = pipe.slates(train_q[S.QUERY_ID].tolist(), train_q[S.QUERY].tolist(), cat.qrels)
            save_slates(out / "slates_train.npz", sl, ideal_for(sl, cat.qrels))
        sl = pipe.slates(dev_q[S.QUERY_ID].tolist(), dev_q[S.QUERY].tolist(), cat.qrels)
        save_slates(out / f"slates_dev_{tf}.npz", sl, ideal_for(sl, cat.qrels))
        log(f"slates for {tf}: {time.perf_counter() - t0:.0f} s")
    weak = out / "models" / "bm25"
    if not (weak / "ranker" / "ranker.json").exists():
        sl, _ = load_slates(out / "slates_dev_title.npz")
        r = FeatureRanker("bm25_title").fit(sl, feature_groups(config.modalities))
        md = ModelDir(weak)
        md.write(config=config.model_copy(update={"scorer": config.scorer.model_copy(update={"name": "feature", "args": {"feature": "bm25_title"}})}),
                 ranker=r, workspace=WorkspaceRecord(str(src), str(ws.catalog_dir), str(ws.store_dir), None))
    if not (out / "index" / "index.json").exists():
        t0 = time.perf_counter()
        ModelDir.open(weak).build_index(codec="exact", index_dir=out / "index", log=lambda m: None)  # exact: served candidates == the slates' candidates
        log(f"serving index: {time.perf_counter() - t0:.0f} s")
    return info


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from fusionrank.settings import get_settings

    ap.add_argument("--out", type=Path, default=get_settings().home / "bench-clicks")
    ap.add_argument("--candidates", type=int, default=200)
    a = ap.parse_args()
    print(prepare(a.out, a.candidates))
