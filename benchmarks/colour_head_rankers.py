"""fashion44k dev: the `title` -> `title_sparse` NDCG@10 drop of a text-only ranker and a text+image fusion ranker,
with and without the photo colour expansion of the title's BM25 text.

    PYTHONPATH=src .venv/bin/python benchmarks/colour_head_rankers.py --workspace ~/.cache/fusionrank/fashion44k-full-<hash> \\
        --store /tmp/colour-store [--train-queries 1500] [--epochs 8] [--max-seconds 150]

Needs a store (a copy of the workspace's) where ``benchmarks/colour_head.py`` has run the encode job
(``photo_colour.<title field>``). Per setting (expansion off / on, ``CatalogConfig.photo_attributes``), the slates of both
title fields are built by the ranking path (:func:`fusionrank.experiment.training_data`, as ``fusionrank train`` does),
one text-only ranker and one text+image fusion ranker (configs/fashion44k.toml otherwise; no audio: the store copy
holds no transcripts) are trained on the training queries of both variants, with early stopping on held-out training
queries, and evaluated on the 500 dev queries over the whole catalogue. Writes ``benchmarks/results/colour_head_rankers.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fusionrank import schema as S  # noqa: E402
from fusionrank.experiment import Block, ExperimentConfig, evaluate_pipeline, ideal_for, split_frame, training_data  # noqa: E402
from fusionrank.ingest import Catalog, split_queries  # noqa: E402
from fusionrank.ranking import QueryEncoder, RankingPipeline, feature_groups  # noqa: E402

VARIANTS = ["title", "title_sparse"]
SYSTEMS = {"text-only ranker": ["text"], "fusion text+image": ["text", "image"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--store", required=True, help="the store copy colour_head.py encoded (photo_colour.* present)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "fashion44k.toml"))
    ap.add_argument("--head-args", default="{}", help="colour_head arguments (JSON), as given to colour_head.py")
    ap.add_argument("--train-queries", type=int, default=1500)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--max-seconds", type=float, default=150)
    ap.add_argument("--seed", type=int, default=None, help="the rankers' seed (default: the config's); the query split stays the config's")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "colour_head_rankers"))
    args = ap.parse_args()
    t_all = time.perf_counter()
    cat = Catalog.load(Path(args.workspace).expanduser() / "catalog")
    store = Path(args.store).expanduser()
    base = ExperimentConfig.load(args.config)
    base.training.epochs, base.training.max_train_seconds = args.epochs, args.max_seconds
    train_q = split_frame(cat, "train")
    sp = split_queries(train_q, {"train": 0.9, "valid": 0.1}, seed=base.seed)
    tq = train_q[sp == "train"].sample(n=min(args.train_queries, int((sp == "train").sum())), random_state=base.seed)
    vq = train_q[sp == "valid"]
    dev = split_frame(cat, "dev")
    qenc = QueryEncoder(text_encoder=base.text_encoder_spec, cache_size=len(dev) + len(vq) + len(tq) + 16)
    rows = []
    for expanded in (False, True):
        cfg = base.model_copy(deep=True)
        cfg.modalities = ["text", "image"]
        if args.seed is not None:
            cfg.seed = args.seed  # the ranker's initialisation and shuffling (the query sample was drawn above)
        if expanded:
            cfg.encoders["attributes"] = Block(name="colour_head", args=json.loads(args.head_args))
        t0 = time.perf_counter()
        train_sl, valid_sl, tables, catalogs = training_data(cat.products, store, cfg, tq, vq, cat.qrels, title_fields=VARIANTS,
                                                             log=lambda m: None)
        print(f"expansion {'on' if expanded else 'off'}: slates in {time.perf_counter() - t0:.0f} s", flush=True)
        for system, mods in SYSTEMS.items():
            c = cfg.model_copy(deep=True)
            c.modalities = list(mods)
            if len(mods) == 1:
                c.training.modality_dropout = 0.0
                c.fusion.name = "weighted_sum"
            ranker = c.build_ranker()
            t1 = time.perf_counter()
            ranker.fit(train_sl, feature_groups(mods), tables, valid=valid_sl, valid_ideal_dcg=ideal_for(valid_sl, cat.qrels), log=None)
            res = {tf: evaluate_pipeline(RankingPipeline.over(catalogs[tf], ranker, qenc), dev, cat.qrels)["mean"]["ndcg@10"]
                   for tf in VARIANTS}
            rows.append({"system": system, "photo colour expansion": "on" if expanded else "off",
                         "dev ndcg@10 title": round(res["title"], 4), "dev ndcg@10 title_sparse": round(res["title_sparse"], 4),
                         "drop": round(res["title"] - res["title_sparse"], 4), "train s": round(time.perf_counter() - t1, 1)})
            print(rows[-1], flush=True)
    text_off = next(r["drop"] for r in rows if r["system"] == "text-only ranker" and r["photo colour expansion"] == "off")
    for r in rows:
        r["drop / text-only drop without expansion"] = round(r["drop"] / text_off, 3) if text_off else None
    cols = list(rows[0])
    md = [f"# Photo colour expansion and the title -> title_sparse drop (`benchmarks/colour_head_rankers.py`)\n",
          f"{len(tq)} training queries per variant x 2 variants, {len(vq)} validation queries per variant, epochs <= {args.epochs}, "
          f"{args.max_seconds:.0f} s cap per model; ranker seed {args.seed if args.seed is not None else base.seed}; config {Path(args.config).name} with modalities text (+ image); head "
          f"`{args.head_args}`; {time.perf_counter() - t_all:.0f} s in all on a shared 2-core machine.\n",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    Path(args.out + ".md").write_text("\n".join(md) + "\n")
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}.md")


if __name__ == "__main__":
    main()
