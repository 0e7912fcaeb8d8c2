"""Data-parallel training on Ray Train against one process: time per epoch and dev NDCG@10, over seeds.

    nice -n 10 .venv/bin/python benchmarks/ray_train.py [--workers 2] [--seeds 0,1,2] [--epochs 4] [--batch 32]
        [--synthetic N]

The ranker and data are the learning-from-clicks benchmark's full-information model
(``learning_from_clicks.py``): gated fusion, MLP head (64), ``ips_listwise`` loss on the true
relevance ``(2^g - 1)/15`` of the 200 candidates of each of the 3,000 fashion44k training queries,
``--epochs`` epochs of batches of ``--batch`` slates, no validation (so both runs train every epoch);
dev NDCG@10 on the 500 dev queries over the full catalogue (title field ``title``, ideal DCG from
all judged products). Slates from ``$FUSIONRANK_HOME/bench-clicks`` (``clicks_prepare.py``).

For every seed, in alternating order: ``NeuralRanker.fit`` in this process (``--local-threads``, 1), and
``fusionrank``'s ``ray`` training engine with ``--workers`` Ray Train workers (1 thread each) on a
local Ray runtime started once (its start is timed apart). Two per-epoch times are given: the
training steps alone (``history_`` seconds: batches, forward, backward, gradient all-reduce) and,
for Ray, the wall time from one epoch's checkpoint to the next (steps + report + checkpoint);
``fit s`` is the whole call (for Ray: worker start, data put, every epoch, the final checkpoint).

``--synthetic N``: the ranker tests' synthetic problem with N training queries instead (a dry run).

Writes ``benchmarks/results/ray_train.md`` (+ ``.json``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"

from event_logging import machine_load  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclasses.dataclass
class Data:
    train: object
    dev: object
    dev_ideal: np.ndarray | None
    groups: list
    tables: dict
    what: str


def fashion_data(out: Path) -> Data:
    """The learning-from-clicks full-information training slates, the dev slates on titles, the title tables."""
    from clicks_prepare import bench_config, load_slates

    from fusionrank.feedback.clickmodels import GradeRelevance
    from fusionrank.ranking import CatalogTables, feature_groups
    from fusionrank.workspace import Workspace, resolve_source

    config = bench_config()
    ws = Workspace(resolve_source(config.data.source, None), config.data.adapter, config.data.limit,
                   adapter_args=config.data.adapter_args)
    cat = ws.catalog(lambda m: None)  # ingested and encoded by clicks_prepare.py: only opened here
    tables = CatalogTables.from_store(cat.products, ws.store_dir, config.catalog_config("title", codec="exact"),
                                      config.text_encoder_name, config.transcriber_name, log=lambda m: None).tables()
    train, _ = load_slates(out / "slates_train.npz")
    y = np.where(train.rows >= 0, GradeRelevance()(np.clip(train.y, 0, None)), -1).astype(np.float32)
    dev, ideal = load_slates(out / "slates_dev_title.npz")
    return Data(dataclasses.replace(train, y=y), dev, ideal, feature_groups(config.modalities), tables,
                f"fashion44k: {len(train):,} training queries x {train.rows.shape[1]} candidates, {len(dev):,} dev queries")


def synthetic_data(n: int) -> Data:
    sys.path.insert(0, str(ROOT / "tests" / "rankers"))
    from conftest import EMB_DIM, GROUPS, N_ITEMS, make_slates

    rng = np.random.default_rng(0)
    train, dev = make_slates(n, rng, 0), make_slates(max(n // 4, 10), rng, n * N_ITEMS)
    tables = {"img": rng.normal(size=((n + len(dev)) * N_ITEMS, EMB_DIM)).astype(np.float32)}
    return Data(train, dev, None, GROUPS, tables, f"synthetic: {n} training queries, {len(dev)} dev queries")


def ranker(seed: int, epochs: int, batch: int):
    """The learning-from-clicks benchmark's full-information ranker."""
    from fusionrank.rankers import NeuralRanker

    return NeuralRanker(fusion="gated", scorer="mlp", hidden=64, dropout=0.1, loss={"name": "ips_listwise", "args": {}},
                        epochs=epochs, batch_size=batch, patience=epochs, seed=seed, modality_dropout=0.1)


def dev_ndcg(r, data: Data) -> float:
    from fusionrank.metrics import ndcg_at_k_padded

    d = data.dev
    sc = r.predict(d, data.tables)
    return float(np.mean(ndcg_at_k_padded(sc, np.where(d.rows >= 0, d.y, 0), 10, mask=d.rows >= 0, ideal_dcg=data.dev_ideal)))


def checkpoint_walls(run_dir: Path) -> list[float]:
    """Seconds between consecutive epoch checkpoints (each written when its epoch ended)."""
    t = [(p / "ranker" / "weights.pt").stat().st_mtime for p in sorted(run_dir.glob("epoch-*"))]
    return [round(b - a, 2) for a, b in zip(t, t[1:])]


def fit_local(data: Data, seed: int, a) -> dict:
    import torch

    torch.set_num_threads(a.local_threads)
    t0 = time.perf_counter()
    r = ranker(seed, a.epochs, a.batch).fit(data.train, data.groups, data.tables, log=None)
    wall = time.perf_counter() - t0
    torch.set_num_threads(1)
    return {"fit_s": round(wall, 1), "epoch_s": [h["seconds"] for h in r.history_], "ndcg@10": dev_ndcg(r, data),
            "loss": [round(h["loss"], 5) for h in r.history_]}


def fit_ray(data: Data, seed: int, a, storage: Path) -> dict:
    from fusionrank.rankers.parallel import RUN_NAME, TrainingEngine

    t0 = time.perf_counter()
    r = TrainingEngine("ray", a.workers).fit(ranker(seed, a.epochs, a.batch), data.train, data.groups, data.tables,
                                            storage=storage, log=None)
    wall = time.perf_counter() - t0
    return {"fit_s": round(wall, 1), "epoch_s": [h["seconds"] for h in r.history_], "ndcg@10": dev_ndcg(r, data),
            "epoch_wall_s": checkpoint_walls(storage / RUN_NAME), "loss": [round(h["loss"], 5) for h in r.history_]}


def mean(xs) -> float:
    return float(statistics.fmean(xs))


def sd(xs) -> float:
    return float(statistics.stdev(xs)) if len(xs) > 1 else 0.0


def fixed_cost(ray_row: dict) -> float:
    return ray_row["fit_s"] - sum(ray_row["epoch_s"])


def write(res: dict, stem: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=2))
    w = res["workers"]
    lines = [f"# Ray Train data-parallel training ({w} workers) against one process", "",
             f"Command: `{res['command']}` ({res['started']} UTC, {res['seconds_total']} s). {res['data']}. "
             f"The full-information ranker of `learning_from_clicks.py` (gated fusion, MLP head 64, `ips_listwise` on "
             f"`(2^g-1)/15`), {res['epochs']} epochs, global batch {res['batch']} slates ({w} workers x "
             f"{-(-res['batch'] // w)}), no validation. One process: torch {res['local_threads']} thread(s). Ray: `--engine ray --workers {w}` on a local "
             f"Ray runtime ({res['ray_init_s']} s to start, once), DDP over gloo, 1 thread per worker, a checkpoint per epoch. "
             f"Dev NDCG@10: title field `title`, full catalogue, ideal DCG from all judged products. "
             f"Seeds run in alternating order ({', '.join(res['order'])}).", "",
             "Per-epoch time = training steps only (mean over the epochs of `history_` seconds); speed-up = one process / Ray. "
             "Ray epoch wall = checkpoint to checkpoint (steps + report + checkpoint). Fit = the whole call; Ray's fixed cost = "
             "its fit minus its epochs' training steps (starting the worker group, putting the data, the final checkpoint).", "",
             f"| seed | 1 process s/epoch | {w} workers s/epoch | speed-up | {w} workers epoch wall s | 1 process fit s | "
             f"{w} workers fit s | Ray fixed cost s | dev NDCG@10 1 process | dev NDCG@10 {w} workers | difference |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s, row in res["seeds"].items():
        lo, ra = row["local"], row["ray"]
        le, re_ = mean(lo["epoch_s"]), mean(ra["epoch_s"])
        wall = f"{mean(ra['epoch_wall_s']):.2f}" if ra["epoch_wall_s"] else "-"
        lines.append(f"| {s} | {le:.2f} | {re_:.2f} | {le / re_:.2f} | {wall} | {lo['fit_s']:.1f} | {ra['fit_s']:.1f} | "
                     f"{fixed_cost(ra):.1f} | {lo['ndcg@10']:.4f} | {ra['ndcg@10']:.4f} | {ra['ndcg@10'] - lo['ndcg@10']:+.4f} |")
    sm = res["summary"]
    lines += [f"| mean | {sm['local_epoch_s']:.2f} | {sm['ray_epoch_s']:.2f} | **{sm['speedup']:.2f}** | "
              f"{sm['ray_epoch_wall_s']:.2f} | {sm['local_fit_s']:.1f} | {sm['ray_fit_s']:.1f} | "
              f"{mean([fixed_cost(r['ray']) for r in res['seeds'].values()]):.1f} | "
              f"{sm['local_ndcg']:.4f} ± {sm['local_ndcg_sd']:.4f} | {sm['ray_ndcg']:.4f} ± {sm['ray_ndcg_sd']:.4f} | "
              f"{sm['ray_ndcg'] - sm['local_ndcg']:+.4f} |", "",
              "## Machine", "", f"- before: {res['load_before']}", f"- after: {res['load_after']}", ""]
    if res.get("notes"):  # the reading, written after the run into the .json
        lines += ["## Reading", "", *(f"- {n}" for n in res["notes"]), ""]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--local-threads", type=int, default=1, help="torch threads of the one-process fit")
    ap.add_argument("--out", type=Path, default=None, help="the clicks_prepare.py folder (default $FUSIONRANK_HOME/bench-clicks)")
    ap.add_argument("--synthetic", type=int, default=0, help="train on N synthetic queries instead (a dry run)")
    ap.add_argument("--results", default="ray_train", help="results file stem under benchmarks/results")
    a = ap.parse_args()

    import ray
    import torch

    from fusionrank.settings import get_settings

    torch.set_num_threads(1)
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    t_all = time.perf_counter()
    load_before = machine_load()
    log(load_before)
    data = synthetic_data(a.synthetic) if a.synthetic else fashion_data(a.out or get_settings().home / "bench-clicks")
    log(data.what)
    t0 = time.perf_counter()
    ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False)
    ray_init_s = round(time.perf_counter() - t0, 1)
    seeds = [int(s) for s in a.seeds.split(",")]
    res: dict = {"command": " ".join(["benchmarks/ray_train.py", *sys.argv[1:]]), "started": started, "data": data.what,
                 "workers": a.workers, "local_threads": a.local_threads, "epochs": a.epochs, "batch": a.batch, "ray_init_s": ray_init_s, "seeds": {}, "order": []}
    try:
        with tempfile.TemporaryDirectory(prefix="ray-train-bench-") as tmp:
            for i, seed in enumerate(seeds):
                row = {}
                order = ("local", "ray") if i % 2 == 0 else ("ray", "local")
                res["order"].append(f"seed {seed}: {' then '.join(order)}")
                for kind in order:
                    row[kind] = fit_local(data, seed, a) if kind == "local" else fit_ray(data, seed, a, Path(tmp) / f"seed{seed}")
                    log(f"seed {seed} {kind}: {row[kind]}")
                res["seeds"][str(seed)] = row
    finally:
        ray.shutdown()
    rows = list(res["seeds"].values())
    le, re_ = [mean(r["local"]["epoch_s"]) for r in rows], [mean(r["ray"]["epoch_s"]) for r in rows]
    walls = [w for r in rows for w in r["ray"]["epoch_wall_s"]]
    res["summary"] = {"local_epoch_s": mean(le), "ray_epoch_s": mean(re_), "speedup": mean(le) / mean(re_),
                      "ray_epoch_wall_s": mean(walls) if walls else float("nan"),
                      "local_fit_s": mean([r["local"]["fit_s"] for r in rows]), "ray_fit_s": mean([r["ray"]["fit_s"] for r in rows]),
                      "local_ndcg": mean([r["local"]["ndcg@10"] for r in rows]), "local_ndcg_sd": sd([r["local"]["ndcg@10"] for r in rows]),
                      "ray_ndcg": mean([r["ray"]["ndcg@10"] for r in rows]), "ray_ndcg_sd": sd([r["ray"]["ndcg@10"] for r in rows])}
    res["load_after"] = machine_load()
    res["load_before"] = load_before
    res["seconds_total"] = round(time.perf_counter() - t_all)
    log(res["load_after"])
    log(json.dumps(res["summary"]))
    write(res, a.results)


if __name__ == "__main__":
    main()
