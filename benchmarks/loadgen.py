"""A bounded HTTP load generator: a fixed number of GET /search requests from C concurrent clients.

Each client is a thread with its own keep-alive connection (the standard library's
``http.client``: about a third of httpx's CPU per request, which on a two-core machine is
taken from the server under test); requests are taken from one shared list (so the
request count is fixed, not the duration), their URLs built before the clock starts. Run
it as its own process so that the client's CPU is not the server's:

    python benchmarks/loadgen.py --url http://127.0.0.1:8000 --queries q.txt --requests 2000 --concurrency 8 --out r.json

Writes per-request client latency (ms), status codes, the server's stage timings and which worker answered, and
with ``--pids`` the server processes' CPU seconds over the measured requests (the warm-up left out).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import threading
import time
from urllib.parse import urlencode, urlsplit


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def run(url: str, queries: list[str], requests: int, concurrency: int, k: int = 10, warmup: int = 20,
        params: dict | None = None, pids: list[int] | None = None) -> dict:
    """``pids``: the server's processes, whose CPU seconds over the measured requests (after the warm-up) are
    returned per process as ``server_cpu_seconds``."""
    todo = [queries[i % len(queries)] for i in range(requests)]
    lock = threading.Lock()
    pos = [0]
    lat, status, server = [None] * requests, [0] * requests, [None] * requests
    served_by = [None] * requests  # the X-Fusionrank-Worker of each response (serve --workers)
    host = urlsplit(url)
    paths = [f"/search?{urlencode({'q': q, 'k': k, **(params or {})})}" for q in todo]

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(host.hostname, host.port, timeout=60)

    c = connect()  # warm-up: the model, caches of the ANN lists, connections
    for i in range(warmup):
        c.request("GET", f"/search?{urlencode({'q': f'warm up {i} ' + queries[-1 - (i % len(queries))], 'k': k})}")
        c.getresponse().read()
    c.close()

    def client():
        c = connect()
        try:
            while True:
                with lock:
                    i = pos[0]
                    if i >= requests:
                        return
                    pos[0] += 1
                t0 = time.perf_counter()
                try:
                    c.request("GET", paths[i])
                    r = c.getresponse()
                    body = r.read()
                    lat[i] = (time.perf_counter() - t0) * 1e3
                    status[i] = r.status
                    served_by[i] = r.getheader("x-fusionrank-worker")
                    if r.status == 200:
                        server[i] = json.loads(body)["timings_ms"]
                except (OSError, http.client.HTTPException) as e:
                    lat[i] = (time.perf_counter() - t0) * 1e3
                    status[i] = -1
                    server[i] = {"error": str(e)}
                    c.close()
                    c = connect()  # the connection is in an unknown state: a fresh one for the next request
        finally:
            c.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    cpu0 = {pid: cpu_seconds([pid]) for pid in pids or []}
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = {str(pid): cpu_seconds([pid]) - c for pid, c in cpu0.items()}
    return {"requests": requests, "concurrency": concurrency, "wall_seconds": wall, "latency_ms": lat, "status": status,
            "server_ms": server, "served_by": served_by, "server_cpu_seconds": cpu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--queries", required=True, help="file with one query per line")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pids", default="", help="the server's process ids, comma-separated: their CPU over the requests")
    a = ap.parse_args()
    qs = [l.strip() for l in open(a.queries) if l.strip()]
    res = run(a.url, qs, a.requests, a.concurrency, a.k, pids=[int(p) for p in a.pids.split(",") if p.strip()])
    with open(a.out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
