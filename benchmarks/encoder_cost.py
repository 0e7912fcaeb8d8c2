"""What the generalisation parts cost at serving time: one model against another, same queries, one run.

    .venv/bin/python benchmarks/encoder_cost.py --model current=DIR_A --model new=DIR_B [--requests 600]

Each model is served by the real CLI (`python -m fusionrank.cli serve MODEL`, one uvicorn process, its
saved index) and driven by ``benchmarks/loadgen.py`` from another process with one client and
``--requests`` distinct fashion44k train+dev query texts (k=10, explanations on, so the query cache
never helps). The models are served in the order A, B, B, A and each figure is the mean of a model's two
runs, so a drift in the machine's load falls on both. Reported per model: p50/p99 client latency, the
server's own query-encoding and total stage times (p50/p99), requests/s, the server's resident memory;
and B / A for each. The figures of `fusionrank train`'s own log (the adapter's fit, the colour heads) are
not repeated here: they are one-off training costs.

Writes benchmarks/results/encoder_cost.md (+ .json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from search_latency import load, rss_mb, start_server  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "fashion44k"


def machine_load() -> str:
    import subprocess

    la = os.getloadavg()
    ps = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()[1:5]
    return f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} on {os.cpu_count()} cores; busiest: " + \
        ", ".join(" ".join(p.split()[::-1]) + "%" for p in ps)


def one_run(model: Path, port: int, queries: list[str], tmp: Path) -> dict:
    t0 = time.perf_counter()
    srv = start_server(model, model / "index", port)
    try:
        start = time.perf_counter() - t0
        out = load(port, queries, len(queries), 1, tmp)
        out["start_seconds"] = start
        out["rss_mb"] = rss_mb(srv.pid)
    finally:
        srv.terminate()
        srv.wait(timeout=60)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="LABEL=DIR, exactly two")
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--port", type=int, default=8797)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    if len(a.model) != 2:
        raise SystemExit("give exactly two --model LABEL=DIR")
    models = {}
    for spec in a.model:
        label, _, path = spec.partition("=")
        models[label] = Path(path).expanduser()
        if not (models[label] / "index" / "index.json").exists():
            raise SystemExit(f"{models[label]} has no saved index; build it with `fusionrank index {models[label]}`")
    qs = pd.concat([pd.read_csv(a.data / f, sep="\t") for f in ("queries_train.tsv", "queries_dev.tsv")])["query"]
    queries = list(dict.fromkeys(qs.astype(str)))
    rng = np.random.default_rng(0)
    queries = [queries[i] for i in rng.permutation(len(queries))[:a.requests]]
    before = machine_load()
    (la, pa), (lb, pb) = models.items()
    runs: dict[str, list[dict]] = {la: [], lb: []}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for label in (la, lb, lb, la):
            print(f"[{time.strftime('%H:%M:%S')}] {label}: {models[label]}", flush=True)
            runs[label].append(one_run(models[label], a.port, queries, Path(tmp)))
            r = runs[label][-1]
            print(f"  p50 {r['latency_ms']['p50']:.1f} ms, p99 {r['latency_ms']['p99']:.1f} ms, "
                  f"encode p50 {r['stages_ms']['encode_ms']['p50']:.2f} ms, {r['throughput_rps']:.1f}/s", flush=True)

    def mean(label, get):
        return float(np.mean([get(r) for r in runs[label]]))

    measures = [("client latency p50 (ms)", lambda r: r["latency_ms"]["p50"]),
                ("client latency p99 (ms)", lambda r: r["latency_ms"]["p99"]),
                ("server: query encoding p50 (ms)", lambda r: r["stages_ms"]["encode_ms"]["p50"]),
                ("server: query encoding p99 (ms)", lambda r: r["stages_ms"]["encode_ms"]["p99"]),
                ("server: total p50 (ms)", lambda r: r["stages_ms"]["total_ms"]["p50"]),
                ("server: total p99 (ms)", lambda r: r["stages_ms"]["total_ms"]["p99"]),
                ("requests/s, 1 client", lambda r: r["throughput_rps"]),
                ("server resident memory after the run (MB)", lambda r: r["rss_mb"]),
                ("start-up until healthy (s)", lambda r: r["start_seconds"]),
                ("failed requests", lambda r: r["failed"])]
    rows = []
    for name, get in measures:
        va, vb = mean(la, get), mean(lb, get)
        rows.append({"measure": name, la: va, lb: vb, f"{lb} / {la}": (vb / va) if va else float("nan")})
    after = machine_load()
    lines = ["# Serving cost of the generalisation parts: two models, one run", "",
             f"`{la}` = `{pa}`, `{lb}` = `{pb}`. Command: `.venv/bin/python benchmarks/encoder_cost.py "
             + " ".join(f"--model {m}" for m in a.model) + f" --requests {a.requests}`; {time.perf_counter() - t_all:.0f} s.",
             f"One client, {a.requests} distinct train+dev queries per run, k=10, explanations on; served in the order "
             f"{la}, {lb}, {lb}, {la}; each figure is the mean of the model's two runs.", "",
             f"Machine before: {before}. After: {after}.", "",
             f"| measure | {la} | {lb} | {lb} / {la} |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['measure']} | {r[la]:.2f} | {r[lb]:.2f} | {r[f'{lb} / {la}']:.3f} |")
    lines += ["", "Per run (p50 / p99 client ms): " + "; ".join(
        f"{label} " + ", ".join(f"{r['latency_ms']['p50']:.1f} / {r['latency_ms']['p99']:.1f}" for r in rs) for label, rs in runs.items()), ""]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "encoder_cost.md").write_text("\n".join(lines))
    (a.out / "encoder_cost.json").write_text(json.dumps({"models": {k: str(v) for k, v in models.items()}, "runs": runs,
                                                          "rows": rows}, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
