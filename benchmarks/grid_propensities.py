"""Grid-cell propensities from simulated shoppers on fashion44k: with randomised swaps and without randomisation.

    .venv/bin/python benchmarks/grid_propensities.py [--sessions 100000]

The page shows results in a 4-column grid. Shoppers examine cells by the grid click model
(:class:`~fusionrank.feedback.clickmodels.GridPositionBased`: row decay and column weights), logged
through the service (:class:`SearchService`, 44k catalogue) by the weak BM25 policy and the strong
full-information model of ``learning_from_clicks.py`` (run that first: it prepares both). Estimates:

- with randomisation: 50% of the BM25 policy's searches swap the top result with a random one;
  ``swaps`` with ``grid=True`` estimates every cell's propensity relative to cell (1, 1);
- without randomisation: ``harvest`` across the two policies' logs (each rank is one cell of the grid).

Writes ``benchmarks/results/grid_propensities.md``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from learning_from_clicks import Bench, log, machine_load  # noqa: E402


def main() -> None:
    from fusionrank.feedback.clickmodels import GridPositionBased
    from fusionrank.feedback.propensity import ESTIMATORS
    from fusionrank.settings import get_settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=get_settings().home / "bench-clicks")
    ap.add_argument("--sessions", type=int, default=100_000)
    a = ap.parse_args()
    before = machine_load()
    bench = Bench(a.out, 1, 32)
    cm = GridPositionBased()
    truth = cm.bias(10)
    logs = a.out / "logs"
    logs.mkdir(exist_ok=True)
    n = a.sessions
    runs = {"bm25": (a.out / "models" / "bm25", 0.0, 21), "full": (a.out / "models" / "full", 0.0, 22),
            "bm25-randomised": (a.out / "models" / "bm25", 0.5, 23)}
    cl = {}
    for name, (model, share, seed) in runs.items():
        p = logs / f"grid-{name}-{n}.sqlite"
        bench.simulate(model, p, cm, n, seed=seed, share=share)
        cl[name] = bench.click_log(p)
        log(f"{name}: {len(cl[name]):,} impressions")
    swaps = ESTIMATORS.get("swaps")(cl["bm25-randomised"], ranks=10, grid=True).relative()
    harvest = ESTIMATORS.get("harvest")(pd.concat([cl["bm25"], cl["full"]]), ranks=10).relative()
    t = truth.relative()
    rows, cols = t.theta_grid.shape
    L = ["# Grid-cell propensities (fashion44k, simulated shoppers)", "",
         f"`.venv/bin/python benchmarks/grid_propensities.py --sessions {n}`: {n:,} sessions per log, grid click model "
         f"(4 columns), cells relative to (1, 1); 10 results fill rows 1-2 and half of row 3.", "",
         "| cell (row, col) | rank | true | swaps, 50% randomised | rel. error | harvest, 2 loggers, none randomised | rel. error |",
         "|---|---:|---:|---:|---:|---:|---:|"]
    errs_s, errs_h = [], []
    for k in range(1, 11):
        r, c = (k - 1) // cols, (k - 1) % cols
        tv, sv, hv = t.theta_grid[r, c], swaps.theta_grid[r, c], harvest.theta[k - 1]
        es, eh = abs(sv - tv) / tv, abs(hv - tv) / tv
        errs_s.append(es)
        errs_h.append(eh)
        L.append(f"| ({r + 1}, {c + 1}) | {k} | {tv:.3f} | {sv:.3f} | {es:.1%} | {hv:.3f} | {eh:.1%} |")
    L += ["", f"Max relative error over the 10 cells: swaps {max(errs_s):.1%}, harvest {max(errs_h):.1%}.", "",
          f"Machine before: {before}. After: {machine_load()}."]
    (ROOT / "benchmarks" / "results" / "grid_propensities.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
