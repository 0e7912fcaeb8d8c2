"""Ray Serve's cost per request beside plain uvicorn: the same app, the same model, one request at a time.

    python benchmarks/ray_serve.py [--requests 300] [--replicas 1,2]

The model is the tests' tiny one (120 products, text + photo, gated MLP; trained here from
``tests/fixtures_fashion.py`` in ``--work``), so a search is short and the serving stack's own cost
shows. Each setup is started as a user starts it, ``fusionrank serve MODEL`` (uvicorn, one process)
and ``fusionrank serve MODEL --engine ray --replicas N`` (a local Ray runtime: Ray's HTTP proxy in
front of N replicas), and then answers ``--requests`` requests of each kind, one at a time on one
keep-alive connection: ``GET /healthz`` (no search: the stack alone) and ``GET /search`` (k=10,
explanations on, feature logging on, as served). Writes benchmarks/results/ray_serve.md (+ .json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "serving"))
RESULTS = ROOT / "benchmarks" / "results"
QUERIES = ["black tshirt", "nike men tshirt", "red shoes", "puma women watch", "blue jeans", "women shoes",
           "adidas men jeans", "green watch"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {msg}", flush=True)


def machine_load() -> str:
    la = os.getloadavg()
    ps = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()[1:5]
    return f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} on {os.cpu_count()} cores; busiest: " + \
        ", ".join(" ".join(p.split()[::-1]) + "%" for p in ps)


def tiny_model(work: Path) -> Path:
    """The tests' tiny dataset and a text + photo model trained on it (once; reused from ``work``)."""
    out = work / "model"
    if (out / "config.json").exists():
        return out
    from fixtures_fashion import make_tiny_fashion, tiny_config_dict
    from fusionrank.experiment import ExperimentConfig, train

    data = make_tiny_fashion(work / "data" / "tinyfashion")
    cfg = ExperimentConfig.model_validate(tiny_config_dict(data.root, modalities=["text", "image"]))
    train(cfg, out, log=lambda m: None, progress=False)
    return out


def timed(url: str, path: str, params_of, n: int) -> list[float]:
    import httpx

    ms = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(-10, n):  # 10 warm-up requests
            t0 = time.perf_counter()
            r = c.get(path, params=params_of(i))
            dt = (time.perf_counter() - t0) * 1e3
            if r.status_code != 200:
                raise RuntimeError(f"{path}: {r.status_code} {r.text[:200]}")
            if i >= 0:
                ms.append(dt)
    return ms


def summary(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--replicas", default="1,2")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "fusionrank" / "bench-rayserve")
    a = ap.parse_args()
    os.environ["FUSIONRANK_HOME"] = str(a.work / "home")
    from crash_harness import Server

    t_start = time.time()
    res = {"command": "python " + " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "load_before": machine_load(), "requests": a.requests}
    log(res["load_before"])
    model = tiny_model(a.work)
    log(f"model {model}")
    env = {**os.environ, "FUSIONRANK_ADMIN_KEY": "bench-admin", "FUSIONRANK_EVENTS_KEY": "bench-events",
           "PYTHONPATH": str(ROOT / "src")}
    setups = [("uvicorn (one process)", ())] + [(f"Ray Serve, {r} replica(s)", ("--engine", "ray", "--replicas", r))
                                                for r in a.replicas.split(",")]
    runs = []
    for name, args in setups:
        shutil.rmtree(model / "service-data", ignore_errors=True)
        server = Server(model, env, args=args)
        start_s = server.start(timeout=600)
        try:
            r = {"setup": name, "args": list(args), "start_seconds": start_s}
            r["healthz"] = summary(timed(server.url, "/healthz", lambda i: None, a.requests))
            r["search"] = summary(timed(server.url, "/search", lambda i: {"q": QUERIES[i % len(QUERIES)], "k": 10},
                                        a.requests))
            log(f"{name}: started in {start_s:.0f} s; /healthz p50 {r['healthz']['p50_ms']:.2f} ms, "
                f"/search p50 {r['search']['p50_ms']:.2f} ms")
            runs.append(r)
        finally:
            server.stop()
    res["runs"] = runs
    res["load_after"] = machine_load()
    res["seconds"] = time.time() - t_start
    write(res)


def write(res: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ray_serve.json").write_text(json.dumps(res, indent=2))
    base = res["runs"][0]
    lines = ["# Ray Serve against plain uvicorn: cost per request (one at a time)", "",
             f"Command: `{res['command']}` ({res['started']}, {res['seconds'] / 60:.0f} min). {res['requests']} requests of "
             "each kind after 10 warm-up ones, one at a time on one keep-alive connection, client on the same machine. "
             "The tests' tiny model (120 products), so a search is short and the stack's own cost shows. "
             "OpenMP/MKL 1 thread, `nice -n 10`, 2 cores shared with other jobs.", "",
             "| setup | start s | /healthz p50 ms | /healthz p99 ms | /search p50 ms | /search p99 ms | added to /search p50 |",
             "|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        add = r["search"]["p50_ms"] - base["search"]["p50_ms"]
        lines.append(f"| {r['setup']} | {r['start_seconds']:.0f} | {r['healthz']['p50_ms']:.2f} | {r['healthz']['p99_ms']:.2f} | "
                     f"{r['search']['p50_ms']:.2f} | {r['search']['p99_ms']:.2f} | "
                     + ("" if r is base else f"{add:+.2f} ms") + " |")
    lines += ["", "Machine load:", "", f"- before: {res['load_before']}", f"- after: {res['load_after']}", ""]
    (RESULTS / "ray_serve.md").write_text("\n".join(lines))
    log(f"wrote {RESULTS / 'ray_serve.md'}")


if __name__ == "__main__":
    main()
