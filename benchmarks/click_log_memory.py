"""Memory and time of reading a large click log, against the code of an earlier commit, in one run.

    python benchmarks/click_log_memory.py [--store EVENTS.sqlite] [--baseline-commit 39836be] [--model VERSION_DIR]

Each measurement runs in a fresh process (its peak resident memory is the kernel's ``VmHWM``):

1. ``EventStore.click_log()`` of this checkout: one row per (search, shown product) with its event counts;
2. the same call with the package as it was at ``--baseline-commit`` (``git archive`` into a temporary folder):
   every row fetched as Python tuples at once, and the counts joined by a merge;
3. with ``--model`` (a retrained version's folder, whose config names the store), the whole data preparation of
   retraining from clicks (``experiment.click_training_data``: the log, position bias, slates, skew check, direct
   method and labels), with this checkout and with the baseline's package; its peak is what retraining needs
   before the ranker trains.

The two reads must agree (rows, clicks, carts, purchases). Default store: the second loop run's event store
(``benchmarks/interleaving.py --parts loop --seed 1``, 1,500,000 logged searches). Writes
``benchmarks/results/click_log_memory.md`` (+ .json).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HOME = Path(os.environ.get("FUSIONRANK_HOME", Path.home() / ".cache" / "fusionrank"))
RUN = HOME / "bench-interleave-11f" / "run-loop-x5-bulk-seq-s1" / "loop-registry"

READ = """
import json, os, sys, time
def mem():
    d = {}
    for line in open(f"/proc/{os.getpid()}/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            d[line.split(":")[0]] = int(line.split()[1]) * 1024
    return d
from fusionrank.feedback.store import open_existing
t0 = time.perf_counter()
with open_existing(sys.argv[1], None) as s:
    cl = s.click_log()
    out = {"seconds": time.perf_counter() - t0, "rows": len(cl), "searches": int(cl["query_id"].nunique()),
           "frame_bytes": int(cl.memory_usage(deep=True).sum()),
           **{a: int(cl[a].sum()) for a in ("click", "add_to_cart", "purchase")}}
m = mem()
out.update(peak_bytes=m["VmHWM"], rss_after_bytes=m["VmRSS"])
print(json.dumps(out))
"""

PREPARE = """
import json, os, sys, time
import pandas as pd
def mem():
    for line in open(f"/proc/{os.getpid()}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
from fusionrank import schema as S
from fusionrank.experiment import click_training_data
from fusionrank.ingest import Catalog
from fusionrank.modeldir import ModelDir
steps = []
t0 = time.perf_counter()
def log(m):
    steps.append({"seconds": round(time.perf_counter() - t0, 1), "peak_bytes": mem(), "step": m.strip()[:90]})
md = ModelDir.open(sys.argv[1])
cat_dir, store = md.catalog_location()
empty = pd.DataFrame({S.QUERY_ID: [], S.QUERY: []})
train, *_ = click_training_data(Catalog.load(cat_dir), store, md.config(), empty, empty, log=log)
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_bytes": mem(), "slates": len(train), "steps": steps}))
"""


def run(code: str, arg: str, src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    return subprocess.run(["sh", "-c", "uptime; top -bn1 | head -15"], capture_output=True, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=str(RUN / "service-data" / "events.sqlite"))
    ap.add_argument("--baseline-commit", default="39836be")
    ap.add_argument("--model", default=str(RUN / "versions" / "v4"), help="a retrained version (its config names the "
                    "store); '' skips the data preparation")
    ap.add_argument("--stem", default="click_log_memory")
    a = ap.parse_args()
    res = {"command": "python " + " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "store": a.store, "store_bytes": Path(a.store).stat().st_size, "baseline_commit": a.baseline_commit,
           "machine_before": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", a.baseline_commit, "src/fusionrank"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        print("click_log, this checkout", flush=True)
        res["now"] = run(READ, a.store, ROOT / "src")
        print(f"  {res['now']['seconds']:.0f} s, peak {res['now']['peak_bytes'] / 1e9:.2f} GB", flush=True)
        print(f"click_log, {a.baseline_commit}", flush=True)
        res["baseline"] = run(READ, a.store, Path(tmp) / "src")
        print(f"  {res['baseline']['seconds']:.0f} s, peak {res['baseline']['peak_bytes'] / 1e9:.2f} GB", flush=True)
        if a.model:
            for key, name, src in (("prepare", "this checkout", ROOT / "src"),
                                   ("prepare_baseline", a.baseline_commit, Path(tmp) / "src")):
                print(f"data preparation of retraining, {name}", flush=True)
                res[key] = run(PREPARE, a.model, src)
                print(f"  {res[key]['seconds']:.0f} s, peak {res[key]['peak_bytes'] / 1e9:.2f} GB", flush=True)
    keys = ("rows", "searches", "click", "add_to_cart", "purchase")
    res["same_log"] = all(res["now"][k] == res["baseline"][k] for k in keys)
    if a.model:
        res["same_slates"] = res["prepare"]["slates"] == res["prepare_baseline"]["slates"]
    res["machine_after"] = machine()
    write(res, a.stem)


def write(res: dict, stem: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=2))
    now, old = res["now"], res["baseline"]
    gb = 1e9
    L = ["# Reading a large click log: memory and time against an earlier commit (one run)", "",
         f"Command: `{res['command']}` ({res['started']} UTC). Store `{res['store']}` "
         f"({res['store_bytes'] / gb:.1f} GB, SQLite): {now['searches']:,} searches, {now['rows']:,} impressions "
         f"(rows of the log), {now['click']:,} clicks. Each figure from a fresh process; peak = the kernel's VmHWM. "
         f"Baseline: the package at commit `{res['baseline_commit']}` (the same call, `EventStore.click_log()`). "
         f"The two logs agree (rows, searches, clicks, carts, purchases): **{res['same_log']}**.", "",
         "| | seconds | peak resident | resident after | the log's own size (deep) | peak / log size |",
         "|---|---|---|---|---|---|"]
    for name, r in (("this checkout", now), (f"`{res['baseline_commit']}`", old)):
        L.append(f"| {name} | {r['seconds']:.0f} | {r['peak_bytes'] / gb:.2f} GB | {r['rss_after_bytes'] / gb:.2f} GB | "
                 f"{r['frame_bytes'] / gb:.2f} GB | {r['peak_bytes'] / r['frame_bytes']:.2f} |")
    L += ["", f"Ratio (this checkout / baseline): peak **{now['peak_bytes'] / old['peak_bytes']:.2f}**, time "
          f"**{now['seconds'] / old['seconds']:.2f}**."]
    if "prepare" in res:
        p, b = res["prepare"], res["prepare_baseline"]
        L += ["", "## Retraining's data preparation", "",
              f"`experiment.click_training_data` with the config of `--model` ({p['slates']:,} training slates; the "
              f"same number at the baseline: {res['same_slates']}): this checkout {p['seconds']:.0f} s, **peak "
              f"{p['peak_bytes'] / gb:.2f} GB**; `{res['baseline_commit']}` {b['seconds']:.0f} s, peak "
              f"{b['peak_bytes'] / gb:.2f} GB. Ratio: peak **{p['peak_bytes'] / b['peak_bytes']:.2f}**, time "
              f"**{p['seconds'] / b['seconds']:.2f}**. (The baseline read the log twice when the position bias was "
              "estimated from every search, the default, holding one log while it built the other.) Peak after each "
              "step:", "", "| s | peak | step | baseline s | baseline peak |", "|---|---|---|---|---|"]
        for x, y in zip(p["steps"], b["steps"]):
            L.append(f"| {x['seconds']:.0f} | {x['peak_bytes'] / gb:.2f} GB | {x['step']} | {y['seconds']:.0f} | "
                     f"{y['peak_bytes'] / gb:.2f} GB |")
    L += ["", "## Machine", "", "```", res["machine_before"].strip(), "", "after:", res["machine_after"].strip(), "```", ""]
    (RESULTS / f"{stem}.md").write_text("\n".join(L))
    print(f"wrote {RESULTS / (stem + '.md')}")


if __name__ == "__main__":
    main()
