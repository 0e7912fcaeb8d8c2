"""Does a serving process's memory level off under a long stream of distinct queries? One process against forked workers.

    python benchmarks/worker_memory.py [--model M] [--searches 40000] [--workers 2] [--every 2500] [--stem worker_memory]
                                       [--before RESULTS.json --before-label LABEL] [--report-only]

Each arm starts the real CLI server (`python -m fusionrank.cli serve MODEL`, then `... --workers N --start-method
fork`) and drives it from its own process with ``benchmarks/loadgen.py`` (8 clients, keep-alive, k=10 with
explanations, as the page asks) through ``--searches`` queries, **every one distinct**: fashion44k's train and dev
queries first, then a long tail made from them (each query with one more word of another query's, never the same
string twice), as a shop's traffic has. After every ``--every`` searches it reads each process's private memory
(``/proc/PID/smaps_rollup``): what it has written, ``Private_Dirty`` (its heap and the pages it copied from the
supervisor), and USS (``Private_Clean + Private_Dirty``, which also counts library pages no other process maps, so
it falls when another process loads torch) and PSS.

What a process keeps per distinct query is bounded by design: the query-vector cache (4,096 queries, about 1.9 kB
each), the query-understanding cache (4,096, 340 bytes), the colour parser's cache (4,096, 120 bytes) and the ids of
its last 5,000 searches (``RECENT_SEARCHES``, 360 bytes; an event naming an older one is checked against the event
store). So a process should grow until those fill and then stay flat; this benchmark checks that it does, and
reports the growth of private dirty memory per 1,000 searches over the last third of the stream, one process (the
baseline) beside each worker; ``--before`` adds the rows and curves of a run over other code (the same script run
from a worktree of an older commit), ``--report-only`` rewrites the report from the saved results.

Model: the demo's (``fusionrank demo``: ``$FUSIONRANK_HOME/models/demo``) unless ``--model``. Writes
``benchmarks/results/worker_memory.md`` (+ ``.json``, ``.png``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import HOME, RESULTS, ROOT, SRC, children, free_port, log, machine, queries, rollup, stop  # noqa: E402

MEASURABLE_GROWTH = 8  # kB per 1,000 searches: two pages; below it a ratio to the one process says nothing


def long_tail(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct query strings: the real queries, then each with one word of another query appended."""
    real = queries(10**9)
    words = sorted({w for q in real for w in q.lower().split() if w.isalpha() and len(w) > 2})
    rng = random.Random(seed)
    out, seen = list(real[:n]), set(real[:n])
    while len(out) < n:
        q = rng.choice(real)
        s = f"{q} {rng.choice(words)}"
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def memory(pids: list[int]) -> list[dict]:
    out = []
    for pid in pids:
        ru = rollup(pid)
        out.append({"pid": pid, "dirty_kb": ru.get("Private_Dirty", 0), "uss_kb": ru.get("Private_Clean", 0) + ru.get("Private_Dirty", 0),
                    "pss_kb": ru.get("Pss", 0)})
    return out


def arm(model: Path, workers: int, qs: list[str], every: int, clients: int, tmp: Path) -> dict:
    port = free_port()
    shutil.rmtree(model / "service-data", ignore_errors=True)  # an empty event store for each arm
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FUSIONRANK_ADMIN_KEY": "bench", "PYTHONPATH": SRC}
    how = ["--workers", str(workers), "--start-method", "fork"] if workers > 1 else []
    srv = subprocess.Popen([sys.executable, "-m", "fusionrank.cli", "serve", str(model), "--port", str(port), *how],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        while not srv.stdout.readline().startswith("http://"):
            if srv.poll() is not None:
                raise RuntimeError(f"serve exited with {srv.returncode}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=60) as f:
            products = json.load(f)["products"]
        pids = [srv.pid] + (children(srv.pid) if workers > 1 else [])
        samples = [{"searches": 0, "processes": memory(pids)}]
        failed, t0 = 0, time.perf_counter()
        for start in range(0, len(qs), every):
            chunk = qs[start:start + every]
            qf, out = tmp / "queries.txt", tmp / "load.json"
            qf.write_text("\n".join(chunk))
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), "--url", f"http://127.0.0.1:{port}",
                            "--queries", str(qf), "--requests", str(len(chunk)), "--concurrency", str(clients),
                            "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
            failed += sum(s != 200 for s in json.loads(out.read_text())["status"])
            samples.append({"searches": start + len(chunk), "processes": memory(pids)})
            s = samples[-1]
            log(f"  {'one process' if workers == 1 else f'{workers} workers'}: {s['searches']:,} searches, private dirty MB "
                + " / ".join(f"{p['dirty_kb'] / 1024:.1f}" for p in s["processes"]))
        return {"workers": workers, "products": products, "samples": samples, "failed": failed, "seconds": time.perf_counter() - t0,
                "roles": ["one process"] if workers == 1 else ["supervisor"] + [f"worker {i + 1}" for i in range(workers)]}
    finally:
        stop(srv)


def growth(r: dict, i: int) -> float:
    """kB of private dirty memory per 1,000 searches of process ``i`` over the last third of the stream (least squares)."""
    s = r["samples"]
    tail = s[len(s) - max(3, len(s) // 3):]
    x = np.array([t["searches"] for t in tail], float) / 1000
    y = np.array([t["processes"][i]["dirty_kb"] for t in tail], float)
    return float(np.polyfit(x, y, 1)[0])


def _runs(res: dict) -> list[tuple[str, dict]]:
    """(label, results) of this run and, if one was given with ``--before``, the run of the code before."""
    return [("", res)] + ([(f" ({res['before_label']})", res["before"])] if res.get("before") else [])


def _name(r: dict, role: str) -> str:
    return role if r["workers"] == 1 else f"{r['workers']} workers: {role}"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (label, run), style in zip(_runs(res), ("-", "--")):
        for r, colour in zip(run["arms"], ("tab:blue", "tab:orange")):
            x = [s["searches"] for s in r["samples"]]
            for i, role in enumerate(r["roles"]):
                if role == "supervisor":  # its pages the workers copied become its own: not memory it wrote
                    continue
                y0 = r["samples"][0]["processes"][i]["dirty_kb"]
                ax.plot(x, [(s["processes"][i]["dirty_kb"] - y0) / 1024 for s in r["samples"]], style, color=colour,
                        alpha=1.0 if role in ("one process", "worker 1") else 0.6, label=_name(r, role) + label)
    ax.set_xlabel("distinct searches sent to the service")
    ax.set_ylabel("memory written since it was ready (private dirty), MB")
    ax.set_title("a serving process's memory under a stream of distinct queries")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write(res: dict, stem: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1))
    plot(res, RESULTS / f"{stem}.png")
    base = growth(res["arms"][0], 0)
    lines = [f"# A serving process's memory under {res['searches']:,} distinct queries", "",
             f"Model `{res['model']}` ({res['products']:,} products); 8 clients; every query string distinct; "
             f"memory read every {res['every']:,} searches. Command: `{res['command']}`."
             + (f" Beside it: the same command over {res['before_label']}." if res.get("before") else ""),
             "", "Private dirty memory (MB; USS at the end in brackets). A supervisor's grows as its workers copy the "
             "pages they share with it (each copy leaves the original to the supervisor alone): it serves nothing.", "",
             "| process | at start | after 1/3 | after 2/3 | at the end | written after start | growth over the last third "
             "(kB per 1,000 searches) | vs one process (this code; - when it grew by less than "
             f"{MEASURABLE_GROWTH} kB per 1,000, two pages) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, run in _runs(res):
        for r in run["arms"]:
            s = r["samples"]
            for i, role in enumerate(r["roles"]):
                at = [s[0], s[len(s) // 3], s[2 * len(s) // 3], s[-1]]
                g = growth(r, i)
                ratio = f"{g / base:.2f}x" if base >= MEASURABLE_GROWTH else "-"
                mb = [t["processes"][i]["dirty_kb"] / 1024 for t in at]
                lines.append(f"| {_name(r, role)}{label} | " + " | ".join(f"{v:.1f}" for v in mb)
                             + f" ({at[-1]['processes'][i]['uss_kb'] / 1024:.0f}) | {mb[-1] - mb[0]:.1f} | {g:.0f} | {ratio} |")
    lines += ["", "Failed requests: " + ", ".join(f"{_name(r, r['roles'][0]) if r['workers'] == 1 else str(r['workers']) + ' workers'}"
                                                  f"{label} {r['failed']}" for label, run in _runs(res) for r in run["arms"]),
              "", f"![private dirty memory against searches]({stem}.png)", "", "Machine at the start:", "", "```",
              res["machine"]["top"], "```"]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=HOME / "models" / "demo")
    ap.add_argument("--searches", type=int, default=40_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--every", type=int, default=2_500)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--stem", default="worker_memory")
    ap.add_argument("--before", type=Path, help="the .json of this benchmark run over other code, shown beside this run")
    ap.add_argument("--before-label", default="the code before")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from RESULTS/STEM.json, running nothing")
    a = ap.parse_args()
    if a.report_only:
        res = json.loads((RESULTS / f"{a.stem}.json").read_text())
    else:
        if not (a.model / "index").exists():
            raise SystemExit(f"{a.model} has no index: run `fusionrank demo` (or `fusionrank index MODEL`) first")
        qs = long_tail(a.searches)
        res = {"model": str(a.model), "searches": a.searches, "every": a.every,
               "command": " ".join(["python benchmarks/worker_memory.py", *sys.argv[1:]]),
               "machine": machine(), "arms": []}
        with tempfile.TemporaryDirectory() as tmp:
            for n in (1, a.workers):
                log(f"{'one process' if n == 1 else f'{n} workers'}: {a.searches:,} distinct searches")
                res["arms"].append(arm(a.model, n, qs, a.every, a.clients, Path(tmp)))
        res["products"] = res["arms"][0]["products"]
    if a.before:
        before = json.loads(a.before.read_text())
        res["before"], res["before_label"] = {k: before[k] for k in ("arms", "command", "machine")}, a.before_label
    write(res, a.stem)


if __name__ == "__main__":
    main()
