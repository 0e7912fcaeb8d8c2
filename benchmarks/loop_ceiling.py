"""How far can retraining from a logger's clicks go? True grades on what the logger shows, against full information.

    .venv/bin/python benchmarks/loop_ceiling.py --logger MODEL_DIR [--depths 10,20,50] [--stem loop_ceiling]

The loop of ``interleaving.py --parts loop`` retrains from clicks on what the promoted version shows.
This measures the ceiling of that information, without click noise: the fusion ranker of
``learning_from_clicks.py`` (same trainer, 4 epochs, seed 0) trained on the **true** grades of the
3,000 training queries' candidates, but only of the candidates the logger ranks in its top ``d``:

- *others 0*: the rest of the candidates stay in the slate with label 0 (what ``ips`` labels do
  with a product never shown);
- *only*: the rest are left out of the slate (no evidence about them either way).

Beside them, in the same run: the logger itself and the ranker trained on every candidate's grade
(full information). Dev NDCG@10 as everywhere in ``interleaving.py`` (prepared dev slates, 500
queries, gain 2^g-1, ideal DCG from all judged products). Reads the prepared data of
``clicks_prepare.py`` (``--prepared``). Writes ``benchmarks/results/STEM.md`` (+ ``.json``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"

from interleaving import machine_load  # noqa: E402
from learning_from_clicks import Bench, log  # noqa: E402


def top_by(scores: np.ndarray, real: np.ndarray, depth: int) -> np.ndarray:
    """``[B, N]`` True where a real candidate is among its query's ``depth`` highest scores (ties to the earlier)."""
    s = np.where(real, scores, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(s.shape[1])[None, :].repeat(len(s), 0), axis=1)
    return (rank < depth) & real


def main() -> None:
    from fusionrank.rankers import load_ranker
    from fusionrank.settings import get_settings

    home = get_settings().home
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logger", type=Path, required=True, help="model directory of the logging version")
    ap.add_argument("--prepared", type=Path, default=home / "bench-clicks-11f")
    ap.add_argument("--depths", default="10,20,50")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stem", default="loop_ceiling")
    a = ap.parse_args()
    t0 = time.perf_counter()
    before = machine_load()
    b = Bench(a.prepared, 4, 32)
    full = b.full_information()
    real = b.train.rows >= 0
    logger = load_ranker(a.logger / "ranker")
    scores = logger.predict(b.train, b.tables["title"])
    rows = [{"arm": "the logger itself", "depth": None, "dev": b.ndcg(logger)}]
    log(f"logger {rows[0]['dev']}")
    r, _ = b.fit(full, a.seed)
    rows.append({"arm": "full information (every candidate's grade)", "depth": None, "dev": b.ndcg(r)})
    log(f"full information {rows[-1]['dev']}")
    for d in [int(x) for x in a.depths.split(",")]:
        top = top_by(scores, real, d)
        zero = dataclasses.replace(full, y=np.where(real, np.where(top, full.y, 0.0), -1.0).astype(np.float32))
        rows.append({"arm": "grades of the logger's top d, the others label 0", "depth": d, "dev": b.ndcg(b.fit(zero, a.seed)[0])})
        log(f"top {d}, others 0: {rows[-1]['dev']}")
        only = dataclasses.replace(full, rows=np.where(top, b.train.rows, -1), y=np.where(top, full.y, -1.0).astype(np.float32))
        rows.append({"arm": "grades of the logger's top d only", "depth": d, "dev": b.ndcg(b.fit(only, a.seed)[0])})
        log(f"top {d} only: {rows[-1]['dev']}")
    cmd = "python benchmarks/loop_ceiling.py " + " ".join(sys.argv[1:])
    res = {"command": cmd, "run": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "logger": str(a.logger),
           "seconds": round(time.perf_counter() - t0), "machine_before": before, "machine_after": machine_load(), "rows": rows}
    (RESULTS / f"{a.stem}.json").write_text(json.dumps(res, indent=1))
    full_dev = rows[1]["dev"]["title"]
    L = ["# The ceiling of retraining from a logger's clicks (fashion44k, true grades on what the logger shows)", "",
         f"Run {res['run']}: `{cmd}` ({res['seconds']} s). Logger: `{a.logger}`.", "",
         "The fusion ranker of `learning_from_clicks.py` (gated fusion, MLP head, `ips_listwise`, 4 epochs, batch 32, "
         f"seed {a.seed}) trained on the 3,000 training queries' candidates with true relevance (2^g-1)/15, but only of "
         "the candidates the logger ranks in its top d: *the others label 0* keeps the rest in the slate at 0 (what click "
         "labels give a product never shown), *only* leaves the rest out. No click noise, no position bias: what the "
         "logger's page can teach at best. Dev NDCG@10 over the full catalogue (500 dev queries as typed, gain 2^g-1).", "",
         "| training labels | d | dev NDCG@10 title | title_sparse | minus full information (title) |",
         "|---|---:|---:|---:|---:|"]
    for x in rows:
        L.append(f"| {x['arm']} | {x['depth'] or '-'} | {x['dev']['title']:.4f} | {x['dev']['title_sparse']:.4f} | "
                 f"{x['dev']['title'] - full_dev:+.4f} |")
    L += ["", f"Machine before: {before}.", "", f"After: {res['machine_after']}.", ""]
    (RESULTS / f"{a.stem}.md").write_text("\n".join(L))
    log(f"wrote {RESULTS / (a.stem + '.md')}")


if __name__ == "__main__":
    main()
