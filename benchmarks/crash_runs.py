"""kill -9 restarts of ``fusionrank serve`` under write load, and the cost of durable logging, in one run.

    .venv/bin/python benchmarks/crash_runs.py [--kills 20] [--before REV] [--out benchmarks/results/crash_runs.md]

1. Builds the tiny test catalogue (120 products, ``tests/fixtures_fashion.py``) and trains the tiny
   model into a scratch ``FUSIONRANK_HOME``, then ``fusionrank index`` builds its serving index.
2. Throughput, before and after: ``git archive REV src`` (default: the commit before the durability
   change) is exported to a temporary folder; each side, in a fresh process with the same
   virtualenv and model, times (a) ``SearchIndex.upsert`` of 300 products with precomputed vectors
   then 300 ``delete`` (each logged to ``changes.jsonl``), (b) 1000 ``SearchService.record_events``
   calls of one event (logged to ``events.jsonl``), then the same from 4 threads at once, (c) 300 searches served and logged. Before, events and searches were
   written without ``fsync`` and changes with one; after, every record is checksummed and ``fsync``-ed.
   Sides alternate, two rounds each; the table shows the median.
3. Crash runs (current code): the real ``fusionrank serve`` process, three writer threads (PUT with
   a new title, or DELETE, over 12 product ids) and two search+event threads; after 1-3 s (random)
   it is killed with SIGKILL, restarted on the same port, and every acknowledged product state,
   search id and event is looked up (``tests/serving/crash_harness.py``). Counts per restart.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "serving"))
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_BEFORE = "48c2a79"

MEASURE = r"""
import json, shutil, sys, time, tempfile
from pathlib import Path
import numpy as np
from fusionrank.serving.index import SearchIndex, RECORD_COLUMNS
from fusionrank.serving.service import SearchService, load_handle
model, n_writes, n_events = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
work = Path(tempfile.mkdtemp())
shutil.copytree(model / "index", work / "index")
idx = SearchIndex.load(work / "index", log=lambda m: None)
svc = SearchService(idx, load_handle(model), data_dir=work / "data")
src = [r for r in range(idx.n_rows) if idx.live[r]][:50]
def item(i):
    r = src[i % len(src)]
    rec = {c: idx.records[c][r] for c in RECORD_COLUMNS}
    rec["product_id"] = f"tp-{i}"
    vec = {t: (np.array(idx.emb[t][r]) if idx.emb_mask[t][r] else None) for t in idx.emb}
    return rec, {f: idx.lex_text[f][r] for f in idx.lex_text}, vec
items = [item(i) for i in range(n_writes)]
t0 = time.perf_counter()
for rec, lex, vec in items:
    idx.upsert(rec, lex, vec)
t_up = time.perf_counter() - t0
t0 = time.perf_counter()
for i in range(n_writes):
    idx.delete(f"tp-{i}")
t_del = time.perf_counter() - t0
ev = {"type": "click", "search_id": "a" * 32, "model_version": svc.model.version, "product_id": "x", "position": 1,
      "timestamp": 1.7e9, "value": None}
t0 = time.perf_counter()
for i in range(n_events):
    svc.record_events([{**ev, "position": i % 100 + 1}])
t_ev = time.perf_counter() - t0
import threading
def burst():
    for i in range(n_events // 4):
        svc.record_events([{**ev, "position": i % 100 + 1}])
threads = [threading.Thread(target=burst) for _ in range(4)]
t0 = time.perf_counter()
for t in threads:
    t.start()
for t in threads:
    t.join()
t_ev4 = time.perf_counter() - t0
q = ["red shirt", "blue dress", "black watch"]
t0 = time.perf_counter()
for i in range(300):  # served and logged (searches.jsonl before the event store, the event store after)
    svc.search(q[i % 3], k=10, explain=False)
t_s = time.perf_counter() - t0
print(json.dumps({"upserts_per_s": n_writes / t_up, "deletes_per_s": n_writes / t_del, "events_per_s": n_events / t_ev,
                  "events_4_threads_per_s": 4 * (n_events // 4) / t_ev4,
                  "searches_logged_per_s": 300 / t_s}))
shutil.rmtree(work, ignore_errors=True)
"""


def export_src(rev: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dst)], input=tar, check=True)
    return dst / "src"


def measure(src: Path, model: Path, env: dict) -> dict:
    p = subprocess.run([sys.executable, "-c", MEASURE, str(model), "300", "1000"], env={**env, "PYTHONPATH": str(src)},
                       capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def build_model(work: Path, env: dict) -> Path:
    """Train the tiny model in a fresh process (its own FUSIONRANK_HOME)."""
    code = ("import sys; from pathlib import Path; sys.path.insert(0, %r)\n"
            "from fixtures_fashion import make_tiny_fashion, tiny_config_dict\n"
            "from fusionrank.experiment import ExperimentConfig, train\n"
            "import torch; torch.set_num_threads(1)\n"
            "t = make_tiny_fashion(Path(sys.argv[1]) / 'tinyfashion')\n"
            "train(ExperimentConfig.model_validate(tiny_config_dict(t.root)), Path(sys.argv[1]) / 'trained', log=lambda m: None,"
            " progress=False)\n") % str(ROOT / "tests")
    p = subprocess.run([sys.executable, "-c", code, str(work)], env=env, capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return work / "trained"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--before", default=DEFAULT_BEFORE)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS / "crash_runs.md")
    ap.add_argument("--work", type=Path, help="scratch folder to reuse: its trained tiny model (and FUSIONRANK_HOME) is kept")
    args = ap.parse_args()

    from crash_harness import Ledger, Server, check, load_then_kill, prepare_model, serve_env

    t_all = time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="crash-runs-"))
    env = serve_env(FUSIONRANK_HOME=str(work / "home"), PYTHONPATH=str(ROOT / "src"))
    if (work / "trained" / "config.json").exists():
        trained = work / "trained"
    else:
        print("training the tiny model ...", flush=True)
        trained = build_model(work, env)
    for old in ("model", "before"):
        shutil.rmtree(work / old, ignore_errors=True)
    (work / "serve.stderr").unlink(missing_ok=True)
    model = prepare_model(trained, work / "model", env)

    print("throughput before/after ...", flush=True)
    before_src = export_src(args.before, work / "before")
    sides = {"before": [], "after": []}
    for _ in range(2):
        for name, src in (("before", before_src), ("after", ROOT / "src")):
            sides[name].append(measure(src, model, env))
    tput = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in sides.items()}
    print(json.dumps(tput, indent=1), flush=True)

    print(f"{args.kills} kill -9 restarts ...", flush=True)
    rng = random.Random(args.seed)
    server = Server(model, env)
    ledger = Ledger()
    rows = []
    starts = [server.start()]
    load_seconds = 0.0
    try:
        for cycle in range(args.kills):
            secs = rng.uniform(1.0, 3.0)
            w0, e0 = ledger.writes_acked, ledger.events_acked
            load_then_kill(server, ledger, secs, rng, cycle=cycle)
            load_seconds += secs
            starts.append(server.start())
            c = check(server, ledger, model / "service-data")
            rows.append({"restart": cycle + 1, "load_s": round(secs, 2), "writes_acked_this_run": ledger.writes_acked - w0,
                         "events_acked_this_run": ledger.events_acked - e0, "products_checked": c.writes_acked,
                         "products_as_acked": c.writes_found, "events_acked_total": c.events_acked,
                         "events_found": c.events_found, "searches_acked_total": c.searches_acked,
                         "searches_found": c.searches_found, "lost": c.writes_lost[:3]})
            print(rows[-1], flush=True)
        with httpx_client(server.url) as cl:
            logs = cl.get("/stats").json()["logs"]
    finally:
        server.stop()
    stderr = server.stderr_path.read_text()
    repairs = [line.strip() for line in stderr.splitlines() if "cut off a torn" in line or "REPAIRED" in line]
    tracebacks = stderr.count("Traceback")
    total = {"kills": args.kills, "writes_acked": ledger.writes_acked, "events_acked": ledger.events_acked,
             "searches_acked": len(ledger.searches), "writes_lost": sum(len(r["lost"]) for r in rows),
             "events_lost": rows[-1]["events_acked_total"] - rows[-1]["events_found"] if rows else 0,
             "searches_lost": rows[-1]["searches_acked_total"] - rows[-1]["searches_found"] if rows else 0,
             "client_errors": len(ledger.errors), "tracebacks": tracebacks, "torn_tail_repairs_logged": len(repairs),
             "median_start_s": round(statistics.median(starts), 1), "load_seconds": round(load_seconds, 1),
             "http_writes_per_s_under_load": round(ledger.writes_acked / load_seconds, 1),
             "http_events_per_s_under_load": round(ledger.events_acked / load_seconds, 1),
             "wall_s": round(time.time() - t_all)}
    print(json.dumps(total, indent=1))
    write_md(args, tput, rows, total, repairs, logs)


def httpx_client(url):
    import httpx

    return httpx.Client(base_url=url, timeout=30)


def write_md(args, tput, rows, total, repairs, logs) -> None:
    L = ["# Crash runs: kill -9 under write load, and the cost of durable logs", "",
         f"`.venv/bin/python benchmarks/crash_runs.py --kills {args.kills} --before {args.before}` "
         f"({time.strftime('%Y-%m-%d')}, 2-core machine shared with a long-running job; wall {total['wall_s']} s). "
         "Tiny test catalogue (120 products) and model; see the script's docstring for the method.", "",
         "## Acknowledged vs found", "",
         "| | acknowledged | found after restarts | lost |", "|---|---:|---:|---:|",
         f"| product writes (PUT/DELETE answered 200/204) | {total['writes_acked']} | "
         f"{total['writes_acked'] - total['writes_lost']} | {total['writes_lost']} |",
         f"| events (POST /events answered 200) | {total['events_acked']} | {total['events_acked'] - total['events_lost']} | "
         f"{total['events_lost']} |",
         f"| searches (search ids returned) | {total['searches_acked']} | {total['searches_acked'] - total['searches_lost']} | "
         f"{total['searches_lost']} |", "",
         f"{total['kills']} kill -9 restarts, each on the same port at once; median start {total['median_start_s']} s; "
         f"{total['tracebacks']} tracebacks in the service's output; {total['client_errors']} non-2xx answers to the load; "
         f"{total['torn_tail_repairs_logged']} torn-tail repairs logged at start (a kill inside an append).",
         "Product writes are checked per id: the state after a restart must be the last acknowledged one, or the one "
         "whose request was in flight at the kill (no answer: either outcome is correct).", "",
         "| restart | load s | writes acked | events acked | product ids checked | as acknowledged | events acked (total) | "
         "events found | searches acked (total) | searches found |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        L.append(f"| {r['restart']} | {r['load_s']} | {r['writes_acked_this_run']} | {r['events_acked_this_run']} | "
                 f"{r['products_checked']} | {r['products_as_acked']} | {r['events_acked_total']} | {r['events_found']} | "
                 f"{r['searches_acked_total']} | {r['searches_found']} |")
    L += ["", f"HTTP throughput under this load (3 writer + 2 search/event threads, new code): "
          f"{total['http_writes_per_s_under_load']} acknowledged writes/s (each PUT embeds its title), "
          f"{total['http_events_per_s_under_load']} acknowledged events/s.", "",
          "## Throughput before and after the durability change (same run, same model)", "",
          f"Before: `{args.before}` (events and searches appended without fsync; changes fsync-ed, no checksum). "
          "After: every record checksummed and fsync-ed before the call returns (concurrent appends share an fsync). "
          "In-process, one thread unless stated; median of 2.", "",
          "| operation | before /s | after /s | after/before |", "|---|---:|---:|---:|"]
    names = {"upserts_per_s": "index upsert (logged change)", "deletes_per_s": "index delete (logged change)",
             "events_per_s": "record_events, 1 event per call", "events_4_threads_per_s": "record_events, 1 event per call, 4 threads",
             "searches_logged_per_s": "search log append"}
    for k, label in names.items():
        b, a = tput["before"][k], tput["after"][k]
        L.append(f"| {label} | {b:,.0f} | {a:,.0f} | {a / b:.2f} |")
    L += ["", "## Log repairs reported at the last start", "", "```", json.dumps(logs, indent=1), "```"]
    if repairs:
        L += ["", "Repairs logged by the service during the runs (first 10):", "", "```", *repairs[:10], "```"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(L) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
