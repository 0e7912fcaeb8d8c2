"""LETOR benchmark: our neural scorers (every loss) beside LightGBM lambdarank on public LTR data.

One command::

    .venv/bin/python benchmarks/ltr_letor.py              # both data sets, 3 model seeds: ~2-3 min on 2 cores
    .venv/bin/python benchmarks/ltr_letor.py --data /path/to/ltr --datasets mq2008
    .venv/bin/python benchmarks/ltr_letor.py --tune       # the small hyperparameter grid (hold-out only)

Data (``--data``, default ``<repo>/../shared/data/ltr``):

* ``mq2008/``: train on ``vali.txt`` (157 queries), test on ``test.txt`` (156 queries);
* ``lightgbm-lambdarank/``: LightGBM's lambdarank example, ``rank.train`` + ``.query``
  (201 queries), test ``rank.test`` + ``.query`` (50 queries).

~15% of the training queries (fixed seed) are held out; every model trains on the rest
and uses the hold-out for early stopping (neural rankers, our GBDTRanker) and for the
hyperparameter grid of ``--tune``. The test files are used only for the final numbers.
Every model is trained once per model seed (``--seeds``, default 0,1,2: initialisation,
shuffling, LightGBM's bagging) and the tables show means, with the spread of NDCG@10;
the test sets are small (156 and 50 queries), so differences of a point or two are noise.

Models: ``linear`` and ``mlp`` scorers of :class:`fusionrank.rankers.NeuralRanker` with
each loss (mse, bce, ranknet, listnet, lambdaloss); plain ``lightgbm.LGBMRanker``
(lambdarank, parameters of the example's ``train.conf``: 100 trees, learning rate 0.1,
31 leaves, min 50 rows and hessian 5 per leaf, bagging 0.9 every iteration, 255 bins; no
early stopping, as in the example); our :class:`fusionrank.rankers.GBDTRanker`
(defaults, early stopping on the hold-out).

Reported per model: NDCG@1/5/10 on the test queries with :func:`fusionrank.metrics.evaluate`
(trec_eval convention: gain 2^g-1, a query without relevant documents scores 0 and
counts), the ratio of NDCG@10 to plain LightGBM's, NDCG@10 in LightGBM's own convention
(queries without relevant documents score 1, ties by input order) for comparison with
numbers LightGBM prints, the hold-out NDCG@10, training time (wall clock of ``fit``)
and training peak memory: the peak resident set size reached during ``fit`` minus the
resident size just before it, measured in a fresh forked process per model (Linux
``VmHWM`` after resetting it through ``/proc/self/clear_refs``), so it covers torch and
LightGBM's native allocations, which tracemalloc does not see. Neural models first take
one tiny torch training step (before the measurement) so that torch's one-off runtime
set-up is not counted as the model's memory. "NDCG@10 (LightGBM conv.)" of plain
LGBMRanker equals what LightGBM itself reports for the test set as ``eval_set``
(checked to 1e-15 on both data sets).

Writes the tables to ``benchmarks/results/ltr_letor.md`` (``--out``).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from fusionrank.data.letor import LetorData, load_letor_files  # noqa: E402
from fusionrank.metrics import evaluate, ideal_dcg, ndcg_at_k_padded  # noqa: E402

LOSSES = ("mse", "bce", "ranknet", "listnet", "lambdaloss")
SCORERS = ("linear", "mlp")
KS = (1, 5, 10)

DATASETS = {
    "mq2008": {"train": ("mq2008/vali.txt", None), "test": ("mq2008/test.txt", None)},
    "lightgbm": {"train": ("lightgbm-lambdarank/rank.train", "lightgbm-lambdarank/rank.train.query"),
                 "test": ("lightgbm-lambdarank/rank.test", "lightgbm-lambdarank/rank.test.query")},
}

# Shared by every neural run.
NEURAL_BASE = {"fusion": "weighted_sum", "modality_dropout": 0.0, "batch_size": 16, "epochs": 100, "patience": 10,
               "weight_decay": 1e-5, "clip_norm": 1.0, "use_embeddings": False}
# Chosen with --tune on the held-out training queries (best mean hold-out NDCG@10 over the
# five losses, per data set and scorer); see benchmarks/README.md.
NEURAL_HP = {
    ("mq2008", "linear"): {"lr": 1e-2, "dropout": 0.0},
    ("mq2008", "mlp"): {"lr": 3e-3, "hidden": 64, "dropout": 0.1},
    ("lightgbm", "linear"): {"lr": 3e-3, "dropout": 0.0},
    ("lightgbm", "mlp"): {"lr": 3e-4, "hidden": 32, "dropout": 0.1},
}
TUNE_GRID = {
    "linear": [{"lr": lr, "dropout": 0.0} for lr in (1e-3, 3e-3, 1e-2)],
    "mlp": [{"lr": lr, "hidden": h, "dropout": 0.1} for lr in (3e-4, 1e-3, 3e-3) for h in (32, 64)],
}
# lightgbm-lambdarank/train.conf, mapped to LGBMRanker's argument names.
LGBM_CONF = {"objective": "lambdarank", "n_estimators": 100, "learning_rate": 0.1, "num_leaves": 31, "max_bin": 255,
             "colsample_bytree": 1.0, "subsample": 0.9, "subsample_freq": 1, "min_child_samples": 50,
             "min_child_weight": 5.0}


# --------------------------------------------------------------------------------------------
# data


@dataclass
class Split:
    name: str
    train: LetorData
    hold: LetorData
    test: LetorData


def load_dataset(name: str, root: Path, holdout: float, seed: int) -> Split:
    spec = DATASETS[name]
    paths = [root / spec["train"][0], root / spec["test"][0]]
    qfiles = [root / spec[s][1] if spec[s][1] else None for s in ("train", "test")]
    for p in paths:
        if not p.is_file():
            raise SystemExit(f"missing {p}: pass --data DIR (the folder holding mq2008/ and lightgbm-lambdarank/)")
    full, test = load_letor_files(paths, query_files=qfiles)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(full))
    n_hold = max(1, int(round(holdout * len(full))))
    return Split(name, full.subset(np.sort(perm[n_hold:])), full.subset(np.sort(perm[:n_hold])), test)


# --------------------------------------------------------------------------------------------
# metrics


def trec_ndcg(data: LetorData, scores: np.ndarray) -> dict[str, float]:
    res = evaluate(data.qrels, data.run(scores), [f"ndcg@{k}" for k in KS])
    return {k: res.mean[k] for k in res.mean}


def lightgbm_ndcg(data: LetorData, scores: np.ndarray, k: int = 10) -> float:
    """LightGBM's convention: gain 2^g-1, ties by input order, queries without relevant docs score 1."""
    valid = data.slates.rows >= 0
    grades = np.where(valid, data.slates.y, 0.0)
    nd = ndcg_at_k_padded(np.where(valid, scores, 0.0), grades, k, mask=valid)
    idcg = ideal_dcg(grades, k)
    return float(np.where(idcg > 0, nd, 1.0).mean())


def holdout_ndcg10(data: LetorData, scores: np.ndarray) -> float:
    valid = data.slates.rows >= 0
    return float(ndcg_at_k_padded(np.where(valid, scores, 0.0), np.where(valid, data.slates.y, 0.0), 10, mask=valid).mean())


# --------------------------------------------------------------------------------------------
# models (each runs in its own forked process; see measure())


def _torch_warmup() -> None:
    """One tiny forward/backward/Adam step, so torch's one-off runtime set-up is not counted as the model's memory."""
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(net.parameters())
    net(torch.zeros(2, 3, 4)).sum().backward()
    opt.step()


def fit_neural(split: Split, scorer: str, loss: str, hp: dict, threads: int, seed: int):
    import torch

    from fusionrank.rankers import NeuralRanker

    torch.set_num_threads(threads)
    _torch_warmup()
    args = {"max_grade": float(split.train.max_grade)} if loss in ("mse", "bce") else {}
    r = NeuralRanker(scorer=scorer, loss={"name": loss, "args": args}, seed=seed, **{**NEURAL_BASE, **hp})

    def fit():
        r.fit(split.train.slates, split.train.feature_groups(), valid=split.hold.slates, log=None)

    def info():
        best = int(np.argmax([h.get("valid_ndcg@10", -1) for h in r.history_]))
        return f"{best + 1}/{len(r.history_)} ep"

    return fit, (lambda d: r.predict(d.slates)), info


def fit_gbdt(split: Split, threads: int, seed: int):
    from fusionrank.rankers import GBDTRanker

    r = GBDTRanker(num_threads=threads, seed=seed)

    def fit():
        r.fit(split.train.slates, split.train.feature_groups(), valid=split.hold.slates, log=None)

    return fit, (lambda d: r.predict(d.slates)), (lambda: f"{r.booster_.best_iteration or r.booster_.num_trees()} trees")  # best (early stopping)


def fit_lgbm(split: Split, threads: int, seed: int):
    import lightgbm

    m = lightgbm.LGBMRanker(**LGBM_CONF, n_jobs=threads, random_state=seed, verbose=-1)
    X, y, sizes = split.train.flat()

    def fit():
        m.fit(X, y.astype(int), group=sizes)

    def predict(d: LetorData):
        Xd, _, _ = d.flat()
        out = np.full(d.slates.rows.shape, -np.inf, np.float32)
        out[d.slates.rows >= 0] = m.predict(Xd)
        return out

    return fit, predict, (lambda: f"{m.booster_.num_trees()} trees")


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def _child(conn, split: Split, factory, args):
    try:
        fit, predict, info = factory(split, *args)
        try:  # reset the peak RSS to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        rss0 = _status_kb("VmRSS")
        t0 = time.perf_counter()
        fit()
        seconds = time.perf_counter() - t0
        peak_mb = max(0, _status_kb("VmHWM") - rss0) / 1024
        conn.send(("ok", {"seconds": seconds, "peak_mb": peak_mb, "info": info(),
                          "hold_scores": predict(split.hold), "test_scores": predict(split.test)}))
    except BaseException:  # noqa: BLE001 - reported to the parent
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def measure(split: Split, factory, *args) -> dict:
    """Fit and predict in a fresh forked process: clean timing and peak-memory numbers per model."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(send, split, factory, args))
    p.start()
    send.close()
    status, payload = recv.recv()
    p.join()
    if status != "ok":
        raise RuntimeError(f"model failed in child process:\n{payload}")
    return payload


# --------------------------------------------------------------------------------------------
# runs and tables

NOTES = [
    "- NDCG@1/5/10: `fusionrank.metrics.evaluate` on the test queries (trec_eval convention: gain 2^g-1, ideal DCG "
    "from all judged documents, a query without relevant documents scores 0 and counts, ties by product id "
    "descending), mean over the model seeds; ± is the population std of NDCG@10 across seeds (same hold-out split).",
    "- ours / LightGBM @10: mean NDCG@10 of the model / mean NDCG@10 of plain `lightgbm.LGBMRanker`.",
    "- NDCG@10 LightGBM conv.: LightGBM's own convention (a query without relevant documents scores 1, ties by "
    "input order); for plain LGBMRanker it equals what LightGBM reports for the test set.",
    "- hold-out NDCG@10: on the ~15% of training queries used for early stopping and tuning (trec convention).",
    "- train s: mean wall time of `fit` (neural: includes scoring the hold-out after every epoch).",
    "- train peak RSS MB: largest over seeds of (peak resident memory during `fit` - resident memory just before), "
    "each model in a fresh forked process (Linux VmHWM, reset via /proc/self/clear_refs); neural models take one "
    "tiny torch step first, so torch's one-off set-up is not counted. Not tracemalloc, which misses torch's and "
    "LightGBM's native allocations.",
    "- best/run epochs: epoch whose weights were kept (best hold-out NDCG@10) / epochs run before early stopping "
    "(patience 10); trees: trees used (GBDTRanker: best iteration on the hold-out; LGBMRanker: all 100).",
    "",
]


@dataclass
class Row:
    """One model, aggregated over the model seeds: means (and the std of test NDCG@10 across seeds)."""

    model: str
    ndcg: dict[str, float]
    ndcg10_std: float
    lgb_ndcg10: float
    hold_ndcg10: float
    seconds: float
    peak_mb: float
    info: list[str] = field(default_factory=list)


def run_model(split: Split, model: str, seeds: list[int], factory, *args) -> Row:
    runs = []
    for seed in seeds:
        out = measure(split, factory, *args, seed)
        runs.append({"ndcg": trec_ndcg(split.test, out["test_scores"]), "lgb": lightgbm_ndcg(split.test, out["test_scores"]),
                     "hold": holdout_ndcg10(split.hold, out["hold_scores"]), **out})
    n10 = [r["ndcg"]["ndcg@10"] for r in runs]
    row = Row(model, {k: float(np.mean([r["ndcg"][k] for r in runs])) for k in runs[0]["ndcg"]}, float(np.std(n10)),
              float(np.mean([r["lgb"] for r in runs])), float(np.mean([r["hold"] for r in runs])),
              float(np.mean([r["seconds"] for r in runs])), float(max(r["peak_mb"] for r in runs)), [r["info"] for r in runs])
    print(f"  {model:<22} ndcg@10 {row.ndcg['ndcg@10']:.4f} (per seed {' '.join(f'{v:.4f}' for v in n10)})  "
          f"hold-out {row.hold_ndcg10:.4f}  {row.seconds:5.2f} s  {row.peak_mb:6.1f} MB  {', '.join(row.info)}", flush=True)
    return row


def benchmark(split: Split, threads: int, seeds: list[int]) -> list[Row]:
    rows = [run_model(split, "LightGBM LGBMRanker", seeds, fit_lgbm, threads),
            run_model(split, "GBDTRanker (ours)", seeds, fit_gbdt, threads)]
    for scorer in SCORERS:
        hp = NEURAL_HP[(split.name, scorer)]
        for loss in LOSSES:
            rows.append(run_model(split, f"{scorer} / {loss}", seeds, fit_neural, scorer, loss, hp, threads))
    return rows


def tune(split: Split, threads: int, seed: int) -> list[str]:
    """The small grid on the hold-out queries only; prints and returns markdown lines."""
    lines = [f"### {split.name}: hold-out NDCG@10 (mean over the five losses)", "",
             "| scorer | hyperparameters | " + " | ".join(LOSSES) + " | mean |", "|---|---|" + "---:|" * (len(LOSSES) + 1)]
    for scorer in SCORERS:
        for hp in TUNE_GRID[scorer]:
            vals = []
            for loss in LOSSES:
                out = measure(split, fit_neural, scorer, loss, hp, threads, seed)  # one model seed: the grid is brief
                vals.append(holdout_ndcg10(split.hold, out["hold_scores"]))
            line = f"| {scorer} | {hp} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {np.mean(vals):.4f} |"
            print(line, flush=True)
            lines.append(line)
    return lines + [""]


def table(split: Split, rows: list[Row]) -> list[str]:
    ref = next(r for r in rows if r.model.startswith("LightGBM")).ndcg["ndcg@10"]
    head = ("| model | NDCG@1 | NDCG@5 | NDCG@10 (± std over seeds) | ours / LightGBM @10 | NDCG@10 LightGBM conv. "
            "| hold-out NDCG@10 | train s | train peak RSS MB | best/run epochs or trees (per seed) |")
    out = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = "1.000 (ref)" if r.model.startswith("LightGBM") else f"{r.ndcg['ndcg@10'] / ref:.3f}"
        out.append(f"| {r.model} | {r.ndcg['ndcg@1']:.4f} | {r.ndcg['ndcg@5']:.4f} | {r.ndcg['ndcg@10']:.4f} ± {r.ndcg10_std:.4f} "
                   f"| {ratio} | {r.lgb_ndcg10:.4f} | {r.hold_ndcg10:.4f} | {r.seconds:.2f} | {r.peak_mb:.1f} | {', '.join(r.info)} |")
    return out


def describe(split: Split) -> str:
    d = split
    return (f"train {len(d.train)} queries / {d.train.n_docs} docs, hold-out {len(d.hold)} / {d.hold.n_docs}, "
            f"test {len(d.test)} / {d.test.n_docs}; {d.train.n_features} features, grades 0..{d.train.max_grade}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ltr",
                    help="folder holding mq2008/ and lightgbm-lambdarank/ (default: %(default)s)")
    ap.add_argument("--datasets", default="mq2008,lightgbm", help="comma-separated subset of: " + ", ".join(DATASETS))
    ap.add_argument("--threads", type=int, default=1, help="threads for torch and LightGBM alike (default: %(default)s)")
    ap.add_argument("--holdout", type=float, default=0.15, help="share of training queries held out (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the hold-out split (default: %(default)s)")
    ap.add_argument("--seeds", default="0,1,2",
                    help="model seeds (init, shuffling, LightGBM bagging); results are means over them (default: %(default)s)")
    ap.add_argument("--tune", action="store_true", help="run the hold-out hyperparameter grid instead of the benchmark")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown output (default: benchmarks/results/ltr_letor.md; with --tune only when given)")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.datasets.split(",") if n.strip()]
    seeds = [int(v) for v in a.seeds.split(",") if v.strip()]
    if not seeds:
        ap.error("--seeds needs at least one seed")
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        ap.error(f"unknown data set(s) {unknown}; valid: {', '.join(DATASETS)}")
    out = a.out if (a.out or a.tune) else REPO / "benchmarks" / "results" / "ltr_letor.md"

    import lightgbm
    import torch  # imported before forking so each child starts warm; no compute happens in the parent

    t_all = time.perf_counter()
    md = ["# LETOR benchmark" + (": hyperparameter grid (hold-out queries only)" if a.tune else ""), "",
          f"`python benchmarks/ltr_letor.py{' --tune' if a.tune else ''}` on {platform.machine()} with {os.cpu_count()} cores, "
          f"{a.threads} thread(s) per model, hold-out split seed {a.seed}, model seeds {seeds}; torch {torch.__version__}, lightgbm {lightgbm.__version__}, "
          f"{time.strftime('%Y-%m-%d')}; load average at start {os.getloadavg()[0]:.1f} (other jobs make timings noisy).", ""]
    for name in names:
        split = load_dataset(name, a.data, a.holdout, a.seed)
        print(f"\n== {name}: {describe(split)}", flush=True)
        md += [f"## {name}", "", describe(split) + ".", ""]
        if a.tune:
            md += tune(split, a.threads, seeds[0])
            continue
        rows = benchmark(split, a.threads, seeds)
        tab = table(split, rows)
        print("\n" + "\n".join(tab), flush=True)
        hp = {s: {**NEURAL_HP[(name, s)]} for s in SCORERS}
        md += tab + ["", f"Neural hyperparameters: {hp}, plus {NEURAL_BASE}.", ""]
    total = time.perf_counter() - t_all
    md += [f"Total wall time {total:.0f} s.", ""]
    if not a.tune:
        md += NOTES
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(md))
        print(f"\nwrote {out}")
    print(f"total {total:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
