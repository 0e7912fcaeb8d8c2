"""Recovered vs true position bias (ranks 1-10) for each estimator, on simulated PBM and trust-bias logs.

    PYTHONPATH=src python benchmarks/propensity_recovery.py [--sessions 100000] [--seeds 0,1,2,3,4]

Each click model simulates ``--sessions`` searches over 100 queries x 20 candidates (grades drawn
with P = 0.3, 0.25, 0.2, 0.15, 0.1 for 0-4; the same setting as ``tests/feedback/test_propensity.py``):

* ``swaps``    one ranker, 50% of searches randomised (rank 1 swapped with rank k, k uniform in 2..10);
* ``harvest``  two ranker versions (grade + N(0, 1) noise fixed per version), no randomisation;
* ``em``       the same two-ranker log, one relevance per (query, product);
* ``trust_em`` (trust-bias model only) the same two-ranker log: alpha_k and beta_k on their absolute
  scale, per (query, product) with 5 latent relevance levels, and with ``features=["grade"]``.

The table shows the first seed's estimate per rank; the last line the largest relative error at
ranks 1-10 for every seed. Writes ``benchmarks/results/propensity_recovery.md``.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from fusionrank.feedback.clickmodels import PositionBased, PowerLawExamination, TrustBias, simulate_log
from fusionrank.feedback.propensity import ESTIMATORS

SIM = dict(n_queries=100, n_candidates=20, grade_probs=(0.3, 0.25, 0.2, 0.15, 0.1))
RANKS = 10
THETA_METHODS = ["em", "harvest", "swaps"]          # estimators of theta_k / theta_1 (PBM)
TRUST = {"trust_em (per pair)": {}, "trust_em (features=grade)": {"features": ["grade"]}}


def machine_load() -> str:
    load = os.getloadavg()
    top = subprocess.run(["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    rows = [l.split(None, 2) for l in top.splitlines()[1:10]]
    busy = [(p, c) for pid, p, c in rows if int(pid) != os.getpid()][:6]        # not this benchmark itself
    busy = ", ".join(f"{c.strip()} {p}%" for p, c in busy if float(p) >= 5.0) or "nothing above 5% CPU"
    return f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} cores; busiest processes: {busy}"


def run(model, sessions: int, seed: int, trust: bool = False) -> tuple[dict, dict]:
    swap_log = simulate_log(model, sessions, swap_share=0.5, rng=seed * 100 + 1, **SIM)
    two = simulate_log(model, sessions, versions=("old", "new"), ranker_noise=1.0, rng=seed * 100 + 2, **SIM)
    logs = {"swaps": swap_log, "harvest": two, "em": two}
    est, secs = {}, {}
    for name, log in logs.items():
        t = time.perf_counter()
        est[name] = ESTIMATORS.get(name)(log, ranks=RANKS).theta
        secs[name] = time.perf_counter() - t
    if trust:
        k = np.arange(1, RANKS + 1)
        for name, kw in TRUST.items():
            t = time.perf_counter()
            b = ESTIMATORS.get("trust_em")(two, ranks=RANKS, **kw)
            secs[name] = time.perf_counter() - t
            est[name] = (b.alpha(k), b.beta(k))
    return est, secs


def trust_table(true, per_seed, times) -> list[str]:
    """alpha_k, beta_k (absolute scale) recovered by trust_em vs the truth, first seed per rank, errors per seed."""
    k = np.arange(1, RANKS + 1)
    alpha, beta = true.alpha(k), true.beta(k)
    names = list(TRUST)
    out = ["### trust_em: alpha_k = theta_k (eps+_k - eps-_k) and beta_k = theta_k eps-_k, absolute scale", "",
           "| rank | true alpha | " + " | ".join(f"alpha, {n}" for n in names) + " | true beta | "
           + " | ".join(f"beta, {n}" for n in names) + " |",
           "|---:|---:|" + "---:|" * len(names) + "---:|" + "---:|" * len(names)]
    first = per_seed[0]
    for i in range(RANKS):
        out.append(f"| {i + 1} | {alpha[i]:.4f} | " + " | ".join(f"{first[n][0][i]:.4f}" for n in names)
                   + f" | {beta[i]:.4f} | " + " | ".join(f"{first[n][1][i]:.4f}" for n in names) + " |")

    def per(f):
        return {n: " / ".join(f"{100 * f(e[n]):.1f}%" for e in per_seed) for n in names}

    a19 = per(lambda e: np.max(np.abs(e[0][:9] / alpha[:9] - 1)))
    a10 = per(lambda e: abs(e[0][9] / alpha[9] - 1))
    b1 = per(lambda e: abs(e[1][0] / beta[0] - 1))
    bsh = per(lambda e: np.max(np.abs(e[1] - beta) / alpha))
    blank = " | ".join("" for _ in names)
    out += [f"| max rel. error of alpha, ranks 1-9, per seed | | " + " | ".join(a19[n] for n in names) + f" | | {blank} |",
            f"| rel. error of alpha, rank 10, per seed | | " + " | ".join(a10[n] for n in names) + f" | | {blank} |",
            f"| rel. error of beta, rank 1, per seed | | {blank} | | " + " | ".join(b1[n] for n in names) + " |",
            f"| max abs(beta error) / alpha_k (label offset), per seed | | {blank} | | " + " | ".join(bsh[n] for n in names) + " |",
            f"| seconds per estimate (mean) | | " + " | ".join(f"{np.mean([t[n] for t in times]):.2f}" for n in names)
            + f" | | {blank} |", "",
            "Relevance is anchored at 0 for the lowest latent level and 1 for the highest (the clicks fix alpha and beta "
            "only up to that choice). Per pair, the lowest of the 5 levels mixes grade 0 (r = 0) with some grade-1 pairs "
            "(r = 1/15), so alpha comes out low (by 8-27% at worst over ranks 1-9 across these seeds) and beta shifted up by up to a fifth of alpha, which is "
            "a large relative error where beta is tiny (deep ranks). With features=grade the levels are exact.", ""]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "propensity_recovery.md"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    before = machine_load()
    models = {"PBM, theta_k = 1/k (eta = 1), ClickNoise(0.1, 1.0)": PositionBased(PowerLawExamination(1.0)),
              "trust bias (ULTRA table theta, eps+_k = 1 - (k+1)/100, eps-_k = 0.65/k)": TrustBias()}
    lines = [f"# Position-bias recovery from {args.sessions:,} simulated sessions", "",
             "`PYTHONPATH=src python benchmarks/propensity_recovery.py "
             f"--sessions {args.sessions} --seeds {args.seeds}` (Python {platform.python_version()}).", "",
             "theta normalised so rank 1 = 1. `swaps`: one ranker, 50% of searches swap rank 1 with rank k; "
             "`harvest` (AllPairs) and `em` (one relevance per query-product): two ranker versions, no randomisation. "
             "Simulation: 100 queries x 20 candidates, grades 0-4 with P = 0.3/0.25/0.2/0.15/0.1.", ""]
    for title, model in models.items():
        true = model.bias(RANKS)
        rel = true.relative().theta
        per_seed, times = [], []
        trust = isinstance(model, TrustBias)
        for seed in seeds:
            est, secs = run(model, args.sessions, seed, trust)
            per_seed.append(est)
            times.append(secs)
        first = per_seed[0]
        lines += [f"## {title}", "", "| rank | true theta | " + " | ".join(THETA_METHODS) + " |",
                  "|---:|---:|" + "---:|" * len(THETA_METHODS)]
        for k in range(RANKS):
            lines.append(f"| {k + 1} | {rel[k]:.3f} | " + " | ".join(f"{first[n][k]:.3f}" for n in THETA_METHODS) + " |")
        errs = {n: [float(np.max(np.abs(e[n] / rel - 1))) for e in per_seed] for n in THETA_METHODS}
        lines.append("| max rel. error, per seed | | " + " | ".join(
            " / ".join(f"{100 * x:.1f}%" for x in errs[n]) for n in THETA_METHODS) + " |")
        lines.append("| seconds per estimate (mean) | | " + " | ".join(
            f"{np.mean([t[n] for t in times]):.2f}" for n in THETA_METHODS) + " |")
        lines.append("")
        print("\n".join(lines[-RANKS - 5:]))
        if trust:
            lines += trust_table(true, per_seed, times)
            print("\n".join(lines[-RANKS - 8:]))
    lines += ["Under trust bias the three estimators assume the PBM, so they recover the ratio of click rates "
              "theta_k (eps-_k + (eps+_k - eps-_k) rbar) / theta_1 (...), not theta_k: the trust-bias table shows "
              "how far that is from the examination propensity; `trust_em` estimates the affine correction's alpha_k and beta_k instead.", "",
              f"Other work on the machine before the run (ps %CPU is each process's lifetime average): {before}.", f"Other work on the machine after the run: {machine_load()}.", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
