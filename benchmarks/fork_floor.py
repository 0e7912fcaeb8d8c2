"""What a forked worker writes of its own: fusionrank's against a minimal FastAPI app on the same stack.

    python benchmarks/fork_floor.py [--model M] [--requests 6000] [--workers 2] [--stem fork_floor]

The issue's memory goal for `serve --workers N` is at most 10% of the index per extra worker (11.6 MB at 44k). A
forked worker shares its supervisor's pages until it writes to them, and CPython 3.11 writes a reference count
into every object a request touches. This benchmark measures how much of a worker's own memory is that floor of
the stack, whatever the application does, by running beside ``fusionrank serve MODEL --workers N --start-method
fork`` a **minimal app** started the same way: torch, numpy, pydantic, FastAPI and uvicorn imported, one
``GET /search`` that runs a small torch MLP over 200 candidates and returns 10 results through a pydantic model,
`gc.freeze()`, then N workers forked from the loaded supervisor, each running uvicorn on the inherited socket.
It runs twice: as FastAPI serves a sync endpoint by default (each waiting request on a thread of the pool, and
glibc's arena per thread), then **lean**, with what fusionrank's workers do about both (one malloc arena; one
search ranking at a time on a thread, the others waiting in the event loop). The lean one is the floor the last
column compares with. All are driven by ``benchmarks/loadgen.py`` from its own process (8 clients, the same distinct fashion44k query
texts) and read from ``/proc/PID/smaps_rollup``: each worker's private dirty memory (what it has written) when
ready and after the load. fusionrank runs twice: over a new event store, then restarted over the store holding
the searches the first run logged, as a service restarts in production. Writes ``benchmarks/results/fork_floor.md`` (+ ``.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import HOME, ROOT, SRC, children, free_port, machine, queries, report, rollup, stop  # noqa: E402

MINIMAL = r'''
import ctypes, gc, os, signal, socket, sys, time
lean = sys.argv[3] == "lean"
if lean:  # as fusionrank's workers: one malloc arena (glibc's M_ARENA_MAX) from the start
    ctypes.CDLL(None).mallopt(-8, 1)
import anyio
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

torch.set_num_threads(1)
port, workers = int(sys.argv[1]), int(sys.argv[2])


class Hit(BaseModel):
    product_id: str
    score: float
    title: str


class Page(BaseModel):
    query: str
    results: list[Hit]
    timings_ms: dict[str, float]


net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 1)).eval()
table = np.random.default_rng(0).standard_normal((6000, 64)).astype(np.float32)
titles = [f"product {i}" for i in range(len(table))]
app = FastAPI()


def search(q: str, k: int = 10) -> Page:
    t0 = time.perf_counter()
    rows = np.random.default_rng(abs(hash(q)) % 2**32).choice(len(table), 200, replace=False)
    with torch.inference_mode():
        s = net(torch.from_numpy(table[rows])).squeeze(1).numpy()
    top = np.argsort(-s)[:k]
    return Page(query=q, results=[Hit(product_id=str(rows[i]), score=float(s[i]), title=titles[rows[i]]) for i in top],
                timings_ms={"total_ms": (time.perf_counter() - t0) * 1e3})


if lean:  # as fusionrank's GET /search: one search ranks at a time, on a thread; the others wait in the event loop
    gate = anyio.CapacityLimiter(1)

    @app.get("/search", response_model=Page)
    async def lean_search(q: str, k: int = 10) -> Page:
        return await anyio.to_thread.run_sync(lambda: search(q, k), limiter=gate)
else:  # FastAPI's default: a sync endpoint, each request on a thread of the pool
    app.get("/search", response_model=Page)(search)

sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", port))
sock.listen(2048)
config = uvicorn.Config(app, log_level="warning", http="h11")
config.load()
search("warm up")
gc.collect()
gc.freeze()
pids = []
for _ in range(workers):
    pid = os.fork()
    if pid == 0:
        uvicorn.Server(config).run(sockets=[sock])
        os._exit(0)
    pids.append(pid)
print(f"http://127.0.0.1:{port}/", flush=True)
try:
    for pid in pids:
        os.waitpid(pid, 0)
finally:  # stopped (SIGINT, as the benchmark stops every server): its workers too, or they outlive the run
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
'''


def dirty(pid: int) -> dict[str, int]:
    ru = rollup(pid)
    return {"dirty_kb": ru.get("Private_Dirty", 0), "uss_kb": ru.get("Private_Clean", 0) + ru.get("Private_Dirty", 0),
            "pss_kb": ru.get("Pss", 0)}


def arm(name: str, cmd: list[str], qs: list[str], requests: int, port: int, tmp: Path, env: dict) -> dict:
    srv = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        while not srv.stdout.readline().startswith("http://"):
            if srv.poll() is not None:
                raise RuntimeError(f"{name} exited with {srv.returncode}")
        time.sleep(2.0)
        kids = children(srv.pid)
        ready = [dirty(p) for p in kids]
        qf, out = tmp / "queries.txt", tmp / "load.json"
        qf.write_text("\n".join(qs))
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), "--url", f"http://127.0.0.1:{port}",
                        "--queries", str(qf), "--requests", str(requests), "--concurrency", "8", "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
        r = json.loads(out.read_text())
        after = [dirty(p) for p in kids]
        return {"name": name, "workers": len(kids), "ready": ready, "after": after, "supervisor": dirty(srv.pid),
                "failed": sum(s != 200 for s in r["status"]), "throughput_rps": requests / r["wall_seconds"]}
    finally:
        stop(srv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=HOME / "models" / "demo")
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stem", default="fork_floor")
    a = ap.parse_args()
    if not (a.model / "index").exists():
        raise SystemExit(f"{a.model} has no index: run `fusionrank demo` (or `fusionrank index MODEL`) first")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FUSIONRANK_ADMIN_KEY": "bench", "PYTHONPATH": SRC}
    qs = queries(a.requests)  # at most the 3,500 distinct train and dev queries, then again
    res = {"model": str(a.model), "requests": a.requests, "command": " ".join(["python benchmarks/fork_floor.py", *sys.argv[1:]]),
           "machine": machine(), "arms": []}
    with tempfile.TemporaryDirectory() as tmp:
        p = free_port()
        res["arms"].append(arm("minimal FastAPI + torch app", [sys.executable, "-c", MINIMAL, str(p), str(a.workers), "plain"],
                               qs, a.requests, p, Path(tmp), env))
        p = free_port()
        res["arms"].append(arm("minimal app, one malloc arena, waiting requests off threads",
                               [sys.executable, "-c", MINIMAL, str(p), str(a.workers), "lean"], qs, a.requests, p, Path(tmp), env))
        shutil.rmtree(a.model / "service-data", ignore_errors=True)  # an empty event store, as in workers.py
        for name in ("fusionrank serve, a new event store", "fusionrank serve again, over the searches it logged"):
            p = free_port()
            res["arms"].append(arm(name, [sys.executable, "-m", "fusionrank.cli", "serve", str(a.model), "--port", str(p),
                                          "--workers", str(a.workers), "--start-method", "fork"],
                                   qs, a.requests, p, Path(tmp), env))
    floor = res["arms"][1]  # the lean minimal app

    def mean(xs):
        return sum(xs) / len(xs) / 1024

    lines = [f"# What a forked worker writes of its own: fusionrank against a minimal app on the same stack", "",
             f"`{res['command']}`; {a.workers} forked workers each; {a.requests:,} requests from 8 clients (fashion44k's "
             f"{len(qs):,} distinct train and dev queries, in turn); model `{res['model']}`.", "",
             "| server | requests/s | failed | worker private dirty when ready (MB, mean) | after the load | "
             "written per worker by the load | after the load, against the lean minimal app |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["arms"]:
        ready, after = mean([w["dirty_kb"] for w in r["ready"]]), mean([w["dirty_kb"] for w in r["after"]])
        base = mean([w["dirty_kb"] for w in floor["after"]])
        lines.append(f"| {r['name']} | {r['throughput_rps']:.1f} | {r['failed']} | {ready:.1f} | {after:.1f} | "
                     f"{after - ready:.1f} | {after / base:.2f}x |")
    report(a.stem, res, lines)


if __name__ == "__main__":
    main()
