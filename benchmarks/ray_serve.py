"""Ray Serve's cost per request beside plain uvicorn: the same app, the same model, one request at a time.

    python benchmarks/ray_serve.py [--requests 300] [--replicas 1,2]

The model is the tests' tiny one (120 products, text + photo, gated MLP; trained here from
``tests/fixtures_fashion.py`` in ``--work``), so a search is short and the serving stack's own cost
shows. Each setup is started as a user starts it, ``fusionrank serve MODEL`` (uvicorn, one process)
and ``fusionrank serve MODEL --engine ray --replicas N`` (a local Ray runtime: Ray's HTTP proxy in
front of N replicas), and then answers ``--requests`` requests of each kind, one at a time on one
keep-alive connection (httpx) and on new connections (urllib): ``GET /healthz`` (no search: the stack
alone) and ``GET /search`` (k=10, explanations on, feature logging on, as served). Against Ray's proxy,
httpx waited ~40 ms more per request than urllib in a first run, on kept-alive and on new connections
alike (not work: /healthz and /search gained the same; against uvicorn alone it did not), so both are reported. Writes benchmarks/results/ray_serve.md (+ .json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
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
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"
CLIENTS = ("urllib", "httpx")
QUERIES = ["black tshirt", "nike men tshirt", "red shoes", "puma women watch", "blue jeans", "women shoes",
           "adidas men jeans", "green watch"]


from event_logging import machine_load  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {msg}", flush=True)


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


def timed(url: str, path: str, params_of, n: int, client: str) -> list[float]:
    """Wall ms of ``n`` requests after 10 warm-up ones: ``httpx`` on one keep-alive connection, or ``urllib``
    (the standard library; a new connection per request)."""
    import urllib.parse
    import urllib.request

    import httpx

    ms = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(-10, n):
            p = params_of(i)
            t0 = time.perf_counter()
            if client == "httpx":
                r = c.get(path, params=p)
                status, text = r.status_code, r.text
            else:
                with urllib.request.urlopen(url + path + ("?" + urllib.parse.urlencode(p) if p else ""), timeout=60) as r:
                    status, text = r.status, r.read().decode()
            dt = (time.perf_counter() - t0) * 1e3
            if status != 200:
                raise RuntimeError(f"{path}: {status} {text[:200]}")
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
            for client in CLIENTS:
                r[f"healthz, {client}"] = summary(timed(server.url, "/healthz", lambda i: None, a.requests, client))
                r[f"search, {client}"] = summary(timed(server.url, "/search",
                                                       lambda i: {"q": QUERIES[i % len(QUERIES)], "k": 10}, a.requests,
                                                       client))
                log(f"{name}, {client}: /healthz p50 {r[f'healthz, {client}']['p50_ms']:.2f} ms, "
                    f"/search p50 {r[f'search, {client}']['p50_ms']:.2f} ms")
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
             "each kind after 10 warm-up ones, one at a time, client on the same machine: the standard library's urllib "
             "(a new connection per request) and httpx (one keep-alive connection). The tests' tiny model (120 products), "
             "so a search is short and the stack's own cost shows. OpenMP/MKL 1 thread, `nice -n 10`, 2 cores shared "
             "with other jobs.", "",
             "| setup | client | start s | /healthz p50 ms | /healthz p99 ms | /search p50 ms | /search p99 ms | added to /search p50 |",
             "|---|---|---|---|---|---|---|---|"]
    for client in CLIENTS:
        for r in res["runs"]:
            h, s = r[f"healthz, {client}"], r[f"search, {client}"]
            add = s["p50_ms"] - base[f"search, {client}"]["p50_ms"]
            lines.append(f"| {r['setup']} | {client} | {r['start_seconds']:.0f} | {h['p50_ms']:.2f} | {h['p99_ms']:.2f} | "
                         f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | " + ("" if r is base else f"{add:+.2f} ms") + " |")
    lines += ["", "Machine load:", "", f"- before: {res['load_before']}", f"- after: {res['load_after']}", ""]
    (RESULTS / "ray_serve.md").write_text("\n".join(lines))
    log(f"wrote {RESULTS / 'ray_serve.md'}")


if __name__ == "__main__":
    main()
