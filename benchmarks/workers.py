"""Throughput and memory of `fusionrank serve --workers N` for N = 1, 2, 4 at 44k products, one run.

    python benchmarks/workers.py [--model M] [--requests 1500] [--workers 1,2,4] [--start-method fork[,spawn]]
                                 [--table-dtype float16] [--results DIR] [--one-process-concurrency 1]

For each N the real CLI server is started (`python -m fusionrank.cli serve MODEL --workers N
--start-method S`; N = 1 is the plain one-process service; each N > 1 once per start method: ``fork``,
workers forked from a supervisor that loaded everything, or ``spawn``, workers that load everything
themselves) over the same saved index, and ``benchmarks/loadgen.py`` drives it
from its own process: 8 clients, each a thread with its own keep-alive connection (the kernel gives
each new connection to one worker), ``--requests`` distinct fashion44k train+dev query texts (the same
list for every N), k=10, 200 candidates re-ranked with explanations, as the page asks. Each process
ranks the server's default number of searches at once (2 alone, 1 as one of several workers; read
back from ``GET /stats``); ``--one-process-concurrency 1`` also runs the one-process service ranking one
at a time, and the throughput ratios are taken to the faster one-process arm.

Memory is read from ``/proc/PID/smaps_rollup`` of the supervisor and every worker after the load:
PSS (proportional set size: a page shared by n processes counts 1/n in each), so the sum over
the processes is what the service costs the machine. *Added per extra worker* is
``(PSS sum with N workers - PSS of the one-process service) / (N - 1)``, compared with the index
size (``SearchIndex.memory_bytes()``, the figure of ``benchmarks/table_memory.py``); with forked workers
that includes the supervisor, which holds the loaded state, so *marginal* is also given:
``(PSS sum with N - PSS sum with the previous N > 1 of the same start method) / (N - previous N)``, what
one more worker costs once there is a supervisor. Also reported: each process's private memory (USS) and
the PSS of its mappings of the index folder's files.

A results file of an earlier run whose workers were all spawned (before workers were forked) is kept
below the new tables, as "spawned workers, earlier run".

Model: the click benchmark's text+photo fusion model (``~/.cache/fusionrank/bench-clicks/models/full``)
copied (config and weights only) into ``~/.cache/fusionrank/scale-workers/model`` with its own index
(built once with ``fusionrank index --table-dtype``). Writes benchmarks/results/workers.md (+ .json).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results"
SRC = str(ROOT / "src")  # the servers run this checkout's code, not whichever fusionrank is installed

from fusionrank.settings import get_settings  # noqa: E402

HOME = get_settings().home


def log(msg: str) -> None:
    print(msg, flush=True)


def pct(a, qs=(50, 95, 99)):
    a = np.asarray([x for x in a if x is not None], float)
    return {f"p{q}": float(np.percentile(a, q)) for q in qs} | {"mean": float(a.mean()), "n": int(len(a))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rollup(pid: int) -> dict[str, int]:
    """kB fields of /proc/PID/smaps_rollup."""
    out = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        m = re.match(r"(\w+):\s+(\d+) kB", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def mapped_under(pid: int, folder: Path) -> dict[str, int]:
    """kB of RSS and PSS of the mappings of files inside ``folder``."""
    rss = pss = 0
    inside = False
    prefix = str(folder.resolve())
    for line in open(f"/proc/{pid}/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split()
            inside = len(parts) >= 6 and parts[5].startswith(prefix)
        elif inside and line.startswith("Rss:"):
            rss += int(line.split()[1])
        elif inside and line.startswith("Pss:"):
            pss += int(line.split()[1])
    return {"rss_kb": rss, "pss_kb": pss}


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Ray's GCS, raylet and replica workers under the serving command)."""
    out, todo = [], children(pid)
    while todo:
        c = todo.pop()
        out.append(c)
        todo += children(c)
    return out


def prepare(src_model: Path, work: Path, table_dtype: str, copies: int = 1) -> tuple[Path, dict]:
    """A copy of the model (config, weights, workspace) with its own index of ``table_dtype`` tables; with ``copies``
    > 1, an index of the catalogue replicated that many times (vectors perturbed, as ``search_latency.py`` does)."""
    if copies > 1:
        base, _ = prepare(src_model, work, table_dtype)
        model = work / f"model-{table_dtype}-{copies}x"
        if not (model / "index" / "index.json").exists():
            shutil.rmtree(model, ignore_errors=True)
            shutil.copytree(base, model, ignore=shutil.ignore_patterns("index", "service-data"))
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from search_latency import build_1m

            t0 = time.perf_counter()
            build_1m(base / "index", model / "index", copies, 0.02, lambda m: log("  " + m))
            log(f"  replicated index built in {time.perf_counter() - t0:.0f} s")
        return model, _index_info(model)
    model = work / f"model-{table_dtype}"
    if not (model / "index" / "index.json").exists():
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(src_model, model, ignore=shutil.ignore_patterns("index", "service-data"))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fusionrank.cli", "index", str(model), "--table-dtype", table_dtype],
                       check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC})
        log(f"  index built in {time.perf_counter() - t0:.0f} s")
    return model, _index_info(model)


def _ceiling(r: dict, one: dict) -> str:
    """Two table cells: the load generator's cores, and the requests/s the rest of the machine's cores allow at this
    arm's CPU per request, over the one-process service's requests/s (runs before the column: -)."""
    if "loadgen_cores_used" not in r:
        return "- | - | "
    cores = (os.cpu_count() or 2) - r["loadgen_cores_used"]
    return f"{r['loadgen_cores_used']:.2f} | {cores / (r['server_cpu_ms_per_request'] / 1e3) / one['throughput_rps']:.2f} | "


def _index_info(model: Path) -> dict:
    from fusionrank.serving.index import SearchIndex

    idx = SearchIndex.load(model / "index", log=lambda m: None)
    info = {"products": len(idx), "memory_bytes": idx.memory_bytes(), "index_bytes": int(sum(idx.memory_bytes().values())),
            "disk_bytes": int(sum(f.stat().st_size for f in (model / "index").rglob("*") if f.is_file()))}
    idx.close()
    del idx
    return info


PROBE = """
import gc, json, os, sys
def anon():
    for line in open(f"/proc/{os.getpid()}/smaps_rollup"):
        if line.startswith("Anonymous:"):
            return int(line.split()[1])
import faiss, numpy, pandas, pyarrow, torch  # noqa: F401  the runtime every worker has anyway
from fusionrank.serving.index import SearchIndex
gc.collect()
a = anon()
idx = SearchIndex.load(sys.argv[1], log=lambda m: None, shared=sys.argv[2] == "1")
gc.collect()
print(json.dumps({"anonymous_kb": anon() - a}))
"""


def index_heap(index_dir: Path, shared: bool) -> int:
    """kB of heap (anonymous memory, never shared between processes) that loading the index adds to a fresh process."""
    out = subprocess.run([sys.executable, "-c", PROBE, str(index_dir), "1" if shared else "0"], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])["anonymous_kb"]


def queries(n: int) -> list[str]:
    from fusionrank.ingest import read_catalog_queries

    d = get_settings().fashion44k_dir
    qs = []
    for f in ("queries_dev.tsv", "queries_train.tsv"):
        qs += read_catalog_queries(d / f)["query"].astype(str).tolist()
    qs = list(dict.fromkeys(q.strip() for q in qs if q.strip()))
    return qs[:n]


def top10(url: str, qs: list[str]) -> list[list[str]]:
    """The top 10 product ids of each query, asked one at a time (what the sharded arms are compared on)."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as c:
        return [[h["product_id"] for h in c.get("/search", params={"q": q, "k": 10}).json()["results"]] for q in qs]


def run(model: Path, n_workers: int, qs: list[str], requests: int, clients: int, tmp: Path,
        start_method: str | None = None, shards: int | None = None, agree: int = 0,
        search_concurrency: int | None = None) -> dict:
    """One server (``start_method`` "ray": ``serve --engine ray --replicas n_workers``; ``shards``: one process over
    that many Ray-actor shards, ``serve --shards K``; ``search_concurrency``: ``serve --search-concurrency``, else the
    server's default) under the load generator; then, with ``agree``, the top 10 of the first ``agree`` queries."""
    port = free_port()
    shutil.rmtree(model / "service-data", ignore_errors=True)  # each run starts with an empty event store
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FUSIONRANK_ADMIN_KEY": "bench", "PYTHONPATH": SRC}
    t0 = time.perf_counter()
    ray = start_method == "ray"
    method = ["--start-method", start_method] if n_workers > 1 and start_method and not ray else []
    how = ["--engine", "ray", "--replicas", str(n_workers)] if ray else ["--workers", str(n_workers), *method]
    if shards:
        how = ["--shards", str(shards)]
    if search_concurrency:
        how += ["--search-concurrency", str(search_concurrency)]
    srv = subprocess.Popen([sys.executable, "-m", "fusionrank.cli", "serve", str(model), "--port", str(port), *how],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        while True:
            line = srv.stdout.readline()
            if line.startswith("http://"):
                break
            if srv.poll() is not None:
                raise RuntimeError(f"serve --workers {n_workers} exited with {srv.returncode}")
        start_s = time.perf_counter() - t0
        pids = [srv.pid] + (descendants(srv.pid) if ray or shards else children(srv.pid) if n_workers > 1 else [])
        wall0 = time.perf_counter()
        qf = tmp / "queries.txt"
        qf.write_text("\n".join(qs))
        out = tmp / "load.json"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the server is not waited for yet: the load generator's alone
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), "--url", f"http://127.0.0.1:{port}",
                        "--queries", str(qf), "--requests", str(requests), "--concurrency", str(clients), "--out", str(out),
                        "--pids", ",".join(map(str, pids))], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        wall = time.perf_counter() - wall0  # the load generator's start-up and warm-up included
        r = json.loads(out.read_text())
        cpu_each = {pid: r["server_cpu_seconds"][str(pid)] for pid in pids}  # over the measured requests only
        cpu = sum(cpu_each.values())
        lists = top10(f"http://127.0.0.1:{port}", qs[:agree]) if agree else None
        import httpx

        at_once = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=60).json().get("searches_at_once")  # one process's
        ok = [s == 200 for s in r["status"]]
        procs = []
        for pid in pids:
            ru = rollup(pid)
            procs.append({"pid": pid, "role": "router (serve)" if shards and pid == srv.pid else
                          ("ray driver" if ray else "supervisor") if (pid == srv.pid and (ray or n_workers > 1))
                          else "ray process" if ray or shards else "worker",
                          "rss_kb": ru.get("Rss", 0), "pss_kb": ru.get("Pss", 0),
                          "uss_kb": ru.get("Private_Clean", 0) + ru.get("Private_Dirty", 0),
                          "shared_kb": ru.get("Shared_Clean", 0) + ru.get("Shared_Dirty", 0),
                          "anonymous_kb": ru.get("Anonymous", 0),
                          "index_files": mapped_under(pid, model / "index"), "cpu_seconds": cpu_each[pid]})
        return {"workers": n_workers, "start_method": start_method if (n_workers > 1 or ray) else None, "shards": shards,
                "searches_at_once": at_once,
                "top10": lists, "requests": requests, "clients": clients, "failed": int(len(ok) - sum(ok)),
                "start_seconds": start_s, "throughput_rps": requests / r["wall_seconds"], "latency_ms": pct(r["latency_ms"]),
                "server_total_ms": pct([s["total_ms"] for s, g in zip(r["server_ms"], ok) if g and s]),
                "processes": procs, "pss_total_kb": int(sum(p["pss_kb"] for p in procs)),
                "server_cpu_seconds": cpu, "server_cores_used": cpu / r["wall_seconds"], "server_cpu_ms_per_request": 1e3 * cpu / requests,
                "loadgen_cores_used": load_cpu / wall,
                "served_by": dict(sorted(Counter(str(w) for w in r.get("served_by", []) if w is not None).items()))}
    finally:
        stop(srv)


def stop(srv: subprocess.Popen) -> None:
    """Stop a server as Ctrl-C does; kill it if it has not ended a minute later."""
    srv.send_signal(signal.SIGINT)
    try:
        srv.wait(timeout=60)
    except subprocess.TimeoutExpired:
        srv.kill()
        srv.wait()


def machine() -> dict:
    def sh(cmd):
        return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True).stdout.strip()
    return {"uptime": sh("uptime"), "top": sh("top -b -n 1 | head -14"), "cpus": os.cpu_count()}


def report(stem: str, res: dict, lines: list[str]) -> None:
    """Write ``res`` to ``results/STEM.json`` and the report ``lines``, with the machine at the start
    (``res["machine"]``, :func:`machine`), to ``results/STEM.md``; print the report."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1))
    lines = [*lines, "", "Machine at the start:", "", "```", res["machine"]["top"], "```"]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))


EARLIER = "## Spawned workers, earlier run"


def earlier_spawned(results: Path, stem: str = "workers") -> tuple[dict | None, str | None]:
    """The earlier run to keep beside a new one: the results there if every worker in them was spawned (they
    predate ``--start-method``), else the earlier run those results kept; ``(json, markdown)``."""
    j, m = results / f"{stem}.json", results / f"{stem}.md"
    if not j.exists() or not m.exists():
        return None, None
    old, text = json.loads(j.read_text()), m.read_text()
    if any("start_method" in r for r in old.get("runs", [])):
        return old.get("earlier_spawned"), text[text.index(EARLIER):] if EARLIER in text else None
    body = text.split("\n", 1)[1] if text.startswith("# ") else text
    title = text.split("\n", 1)[0].lstrip("# ") if text.startswith("# ") else ""
    body = body.replace("\n## ", "\n### ")
    return old, f"{EARLIER}\n\n*{title}*, every worker a new process that loaded everything itself:\n{body}"


def one_process(runs: list[dict]) -> tuple[dict, dict]:
    """The one-process runs that others are compared with: the first (memory's reference, as served by default) and
    the one with the most requests/s (throughput's)."""
    ones = [r for r in runs if r["workers"] == 1 and not r.get("shards")]
    return ones[0], max(ones, key=lambda r: r["throughput_rps"])


def write(res: dict, results: Path = RESULTS, stem: str = "workers") -> None:
    results.mkdir(parents=True, exist_ok=True)
    old_json, old_md = earlier_spawned(results, stem)
    if old_json is not None:
        res["earlier_spawned"] = old_json
    (results / f"{stem}.json").write_text(json.dumps(res, indent=2))
    idx = res["index"]
    size_mb = idx["index_bytes"] / 1e6
    runs = res["runs"]
    one, best = one_process(runs)
    scale = f"{idx['products']:,} products" + (f" (fashion44k replicated {res['copies']}x, perturbed vectors)"
                                                if res.get("copies", 1) > 1 else "")
    L = [f"# `fusionrank serve --workers N`: throughput and memory at {scale} (one run)", "",
         f"Command: `{res['command']}` ({res['started']} UTC). Model `{res['model']}`, index with "
         f"`{res['table_dtype']}` tables: {idx['products']:,} products, {size_mb:,.0f} MB (`memory_bytes()`), "
         f"{idx['disk_bytes'] / 1e6:,.0f} MB on disk. Load: `benchmarks/loadgen.py` in its own process, "
         f"{res['clients']} clients with keep-alive connections, {res['requests']} distinct queries per run (the same list "
         "for every N), k=10, 200 candidates re-ranked with explanations. N = 1 is the plain one-process service. "
         "torch, OpenMP and MKL 1 thread per process. The machine has 2 cores and was shared (see the end). "
         "*Added per extra worker*: (PSS with N - PSS of the one-process service) / (N - 1); *marginal*: (PSS with N - "
         "PSS with the previous N of the same start method) / (difference of N), one more worker once there is a supervisor.", "",
         "*Server CPU*: the server's processes' CPU seconds over the measured requests, the load generator's start and "
         "warm-up left out (read by `loadgen.py --pids`; results written before 2026-12-04 22:22 UTC counted them, "
         "which put cores used 5-10% lower); *cores used*: that over the requests' wall time. "
         "*Load generator cores*: the CPU the load generator itself used (it shares the two cores); *ceiling*: the "
         "requests/s the cores it leaves would give at this arm's server CPU per request, (the machine's cores - load "
         "generator cores) / (CPU s per request), as a multiple of the one-process service's requests/s.", "",
         "*Ratio to 1 worker*: to the faster of the one-process arms (each setting of searches ranked at once). "
         "*Searches at once*: how many searches each process ranks at once, the rest queueing (`GET /stats`).", "",
         "| workers | start | searches at once | requests/s | ratio to 1 worker | p50 ms | p99 ms | failed | server CPU cores used | server CPU ms / request | load generator cores | ceiling (x 1 worker) | PSS of the service | added per extra worker | share of index size | marginal per worker | share of index size | start s |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    prev: dict[str | None, dict] = {}
    for r in runs:
        n, how = r["workers"], r.get("start_method")
        added = (r["pss_total_kb"] - one["pss_total_kb"]) / (n - 1) / 1e3 if n > 1 else None
        p = prev.get(how)
        marginal = (r["pss_total_kb"] - p["pss_total_kb"]) / (n - p["workers"]) / 1e3 if n > 1 and p and n > p["workers"] else None
        if n > 1:
            prev[how] = r
        label = how or (f"{r['shards']} Ray shards" if r.get("shards") else "-")
        L.append(f"| {n} | {label} | {r.get('searches_at_once') or '-'} | {r['throughput_rps']:.1f} | "
                 f"{r['throughput_rps'] / best['throughput_rps']:.2f} | "
                 f"{r['latency_ms']['p50']:.1f} | {r['latency_ms']['p99']:.1f} | {r['failed']} | {r['server_cores_used']:.2f} | "
                 f"{r['server_cpu_ms_per_request']:.1f} | " + _ceiling(r, best) + f"{r['pss_total_kb'] / 1e3:,.0f} MB | "
                 + (f"{added:,.0f} MB | {added / size_mb:.2f} |" if added is not None else "- | - |")
                 + (f" {marginal:,.0f} MB | {marginal / size_mb:.2f} |" if marginal is not None else " - | - |")
                 + f" {r['start_seconds']:.0f} |")
    h = res["index_heap_kb"]
    L += ["", f"Heap (anonymous memory, which processes never share) that loading the index adds to a fresh process: "
          f"**{h['shared'] / 1e3:.0f} MB** as a worker (tables and IVF lists memory-mapped), {h['one process'] / 1e3:.0f} MB as "
          f"the one-process service (IVF lists in the heap): {h['shared'] / 1e3 / size_mb:.2f} of the index size. This is the "
          "index's own cost per extra worker (the product-id map, the BM25 postings and vocabulary, per-row arrays; the "
          "records' text is memory-mapped from `records.arrow`); the rest of what a worker adds is the process itself "
          "(Python, torch, the ONNX query encoder, the model, the event store connection)."]
    L += ["", "Per process after the load (MB): RSS, PSS, private (USS), anonymous (heap: never shared), and the RSS / PSS "
          "of its mappings of the index folder's files (memory-mapped tables; with more than one worker also the IVF lists).", "",
          "| workers | start | process | RSS | PSS | private | anonymous | index files RSS / PSS |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for p in r["processes"]:
            label = r.get("start_method") or (f"{r['shards']} shards" if r.get("shards") else "-")
            L.append(f"| {r['workers']} | {label} | {p['role']} {p['pid']} | {p['rss_kb'] / 1e3:,.0f} | {p['pss_kb'] / 1e3:,.0f} | "
                     f"{p['uss_kb'] / 1e3:,.0f} | {p['anonymous_kb'] / 1e3:,.0f} | "
                     f"{p['index_files']['rss_kb'] / 1e3:,.0f} / {p['index_files']['pss_kb'] / 1e3:,.0f} |")
    sharded = [r for r in runs if r.get("shards")]
    if sharded and one.get("top10"):
        want = one["top10"]
        L += ["", f"## `fusionrank serve --shards K`: the same answers as one index", "",
              f"After each run's load, its first {len(want)} queries again one at a time (k=10). The sharded service "
              "runs the router, feature builder, ranker and explanations in its own process and each shard in a Ray "
              "actor (`ray process` rows above: the shards, Ray's GCS, raylet and workers).", "",
              "| shards | identical top-10 lists | identical top-1 | requests/s | ratio to one index | p50 ms | p99 ms | PSS of all processes |",
              "|---|---|---|---|---|---|---|---|"]
        for r in sharded:
            got = r["top10"] or []
            same = sum(a == b for a, b in zip(got, want))
            first = sum(a[:1] == b[:1] for a, b in zip(got, want))
            L.append(f"| {r['shards']} | {same} / {len(want)} | {first} / {len(want)} | {r['throughput_rps']:.1f} | "
                     f"{r['throughput_rps'] / one['throughput_rps']:.2f} | {r['latency_ms']['p50']:.1f} | "
                     f"{r['latency_ms']['p99']:.1f} | {r['pss_total_kb'] / 1e3:,.0f} MB |")
    L += ["", "## Machine during the run", "", "```", res["machine_before"]["uptime"], res["machine_before"]["top"], "", "after:",
          res["machine_after"]["uptime"], "```", ""]
    if old_md:
        L += [old_md.rstrip(), ""]
    (results / f"{stem}.md").write_text("\n".join(L))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=HOME / "bench-clicks" / "models" / "full")
    ap.add_argument("--work", type=Path, default=HOME / "scale-workers")
    ap.add_argument("--table-dtype", default="float16")
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", default="1,2,4", help="worker counts in run order (repeats allowed: 1,2,4,1,2)")
    ap.add_argument("--start-method", default="fork", help="how workers start, each N > 1 once per method: fork, spawn "
                    "or fork,spawn")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where workers.md and workers.json are written")
    ap.add_argument("--ray-replicas", default="", help="also Ray Serve (serve --engine ray) with these replica counts, "
                    "e.g. 1,2")
    ap.add_argument("--stem", default="workers", help="file name of the results (STEM.md, STEM.json)")
    ap.add_argument("--copies", type=int, default=1, help="> 1: serve the catalogue replicated this many times with "
                    "perturbed vectors (23: about 1M products; built once with search_latency.py's build_1m)")
    ap.add_argument("--shards", default="", help="also `serve --shards K` (one process, K Ray-actor shards) with these "
                    "shard counts, e.g. 2,4; their top 10 of --agree queries are compared with the one-process service's")
    ap.add_argument("--agree", type=int, default=100, help="with --shards: queries whose top 10 are compared")
    ap.add_argument("--one-process-concurrency", default="", help="also the one-process service ranking this many "
                    "searches at once (serve --search-concurrency), e.g. 1; after its default run")
    a = ap.parse_args()
    methods = [m.strip() for m in a.start_method.split(",") if m.strip()]
    res = {"command": "python " + " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "model": str(a.model), "table_dtype": a.table_dtype, "requests": a.requests, "clients": a.clients}
    a.work.mkdir(parents=True, exist_ok=True)
    log("preparing the model copy and its index")
    res["copies"] = a.copies
    model, res["index"] = prepare(a.model, a.work, a.table_dtype, a.copies)
    qs = queries(a.requests)
    res["index_heap_kb"] = {"shared": index_heap(model / "index", True), "one process": index_heap(model / "index", False)}
    log(f"  heap added by loading the index: {res['index_heap_kb']['shared'] / 1e3:.0f} MB shared (worker), "
        f"{res['index_heap_kb']['one process'] / 1e3:.0f} MB one process")
    res["machine_before"] = machine()
    res["runs"] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in a.workers.split(",")]:
            for how in (methods if n > 1 else [None]):
                log(f"{n} worker(s){f' ({how})' if how else ''}: {a.clients} clients, {a.requests} requests")
                r = run(model, n, qs, a.requests, a.clients, Path(tmp), how, agree=a.agree if a.shards and n == 1 else 0)
                res["runs"].append(r)
                log(f"  {r['throughput_rps']:.1f} requests/s, p50 {r['latency_ms']['p50']:.1f} ms, p99 {r['latency_ms']['p99']:.1f} ms, "
                    f"failed {r['failed']}, PSS {r['pss_total_kb'] / 1e3:,.0f} MB"
                    + (f", requests per worker {r['served_by']}, CPU s per process "
                       f"{[round(p['cpu_seconds'], 1) for p in r['processes']]}" if n > 1 else ""))
            for c in ([int(x) for x in a.one_process_concurrency.split(",") if x.strip()] if n == 1 else []):
                log(f"1 worker ranking {c} search(es) at once: {a.clients} clients, {a.requests} requests")
                r = run(model, 1, qs, a.requests, a.clients, Path(tmp), search_concurrency=c)
                res["runs"].append(r)
                log(f"  {r['throughput_rps']:.1f} requests/s, p50 {r['latency_ms']['p50']:.1f} ms, p99 {r['latency_ms']['p99']:.1f} ms")
        for n in [int(x) for x in a.ray_replicas.split(",") if x.strip()]:
            log(f"Ray Serve, {n} replica(s): {a.clients} clients, {a.requests} requests")
            r = run(model, n, qs, a.requests, a.clients, Path(tmp), "ray")
            res["runs"].append(r)
            log(f"  {r['throughput_rps']:.1f} requests/s, p50 {r['latency_ms']['p50']:.1f} ms, p99 {r['latency_ms']['p99']:.1f} ms, "
                f"failed {r['failed']}, PSS {r['pss_total_kb'] / 1e3:,.0f} MB")
        for k in [int(x) for x in a.shards.split(",") if x.strip()]:
            if not (model / f"index-shards{k}" / "shards.json").exists():  # split once, in a process of its own
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "fusionrank.cli", "shard-index", str(model / "index"), "--shards",
                                str(k)], check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC})
                log(f"  split into {k} shards in {time.perf_counter() - t0:.0f} s")
            log(f"{k} Ray shards: {a.clients} clients, {a.requests} requests")
            r = run(model, 1, qs, a.requests, a.clients, Path(tmp), shards=k, agree=a.agree)
            res["runs"].append(r)
            log(f"  {r['throughput_rps']:.1f} requests/s, p50 {r['latency_ms']['p50']:.1f} ms, p99 {r['latency_ms']['p99']:.1f} ms, "
                f"failed {r['failed']}, PSS {r['pss_total_kb'] / 1e3:,.0f} MB, start {r['start_seconds']:.0f} s")
    res["machine_after"] = machine()
    write(res, a.results, a.stem)
    one, best = one_process(res["runs"])
    size_mb = res["index"]["index_bytes"] / 1e6
    for r in (r for r in res["runs"] if r["workers"] > 1):
        added = (r["pss_total_kb"] - one["pss_total_kb"]) / (r["workers"] - 1) / 1e3
        log(f"{r['workers']} workers ({r['start_method']}): {r['throughput_rps'] / best['throughput_rps']:.2f}x the requests/s of 1; "
            f"{added:,.0f} MB added per extra worker = {added / size_mb:.2f} of the index ({size_mb:,.0f} MB)")
    log(f"wrote {a.results / (a.stem + '.md')}")


if __name__ == "__main__":
    main()
