"""The event store under the service: POST /events throughput, search p99 with feature logging on and off, kill -9.

    .venv/bin/python benchmarks/event_logging.py [--model M] [--index I] [--before ea16c35] [--kills 10]

Defaults use the learning-from-clicks benchmark's model and 44k serving index
(``$FUSIONRANK_HOME/bench-clicks``; run ``benchmarks/clicks_prepare.py`` and ``learning_from_clicks.py`` first).
Measured in one run:

1. **Search p99 with feature logging on vs off**, in process (:class:`SearchService`, the full
   catalogue, one client, the model's serving index): every query of ``--queries`` (1,500) distinct fashion44k
   train/dev queries is searched once per arm, in a rotating order (the later searches of a query hit the
   query-vector cache whichever arm they are): logging on, off, and on with the search's commit waiting for the disk
   (``EventStore.durable_searches``). Logging on stores the served slate (features, masks, query
   vector, product vector keys) in the same SQLite transaction as the search; the product vectors
   are archived once when the service starts (timed: ``start_s`` on a new store). A 95% bootstrap
   interval of the p99 difference is reported beside it.
2. **Events/s through ``POST /events``** (the real ``fusionrank serve``, uvicorn, events key),
   4 client threads in this process posting batches of 1, 10 and 100 click events for
   searches the server issued, for ``--seconds`` each: SQLite (the default store), PostgreSQL (a
   throwaway server on loopback), and the code before the event store (``--before``: JSONL
   ``events.jsonl`` with fsync), each from a fresh server process.
3. **kill -9 under event load**: 4 threads search and post events to the real server; after 1-3 s
   it is SIGKILLed, restarted, and every acknowledged search and event is looked up in the store.

Writes ``benchmarks/results/event_logging.md`` (+ ``.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "serving"))
RESULTS = ROOT / "benchmarks" / "results"
HASH_KEY = "event-logging-benchmark-key"


def machine_load() -> str:
    la = os.getloadavg()
    ps = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()[1:5]
    return f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} on {os.cpu_count()} cores; busiest: " + \
        ", ".join(" ".join(p.split()[::-1]) + "%" for p in ps)


def queries(n: int) -> list[str]:
    import pandas as pd

    from fusionrank.settings import get_settings

    d = get_settings().fashion44k_dir
    qs = pd.concat([pd.read_csv(d / "queries_dev.tsv", sep="\t"), pd.read_csv(d / "queries_train.tsv", sep="\t")])["query"]
    return list(dict.fromkeys(qs.astype(str)))[:n]


def pct(xs, p):
    return float(np.percentile(np.asarray(xs), p))


# 1 -------------------------------------------------------------------------------------------
ARMS = ("on", "off", "on, fsync per search")


def bootstrap_diff(a, b, q: float = 99, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of ``percentile(a, q) - percentile(b, q)`` (each side resampled on its own)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a), np.asarray(b)
    d = [np.percentile(a[rng.integers(0, len(a), len(a))], q) - np.percentile(b[rng.integers(0, len(b), len(b))], q)
         for _ in range(n)]
    return float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))


def p99_on_off(model: Path, index: Path, n: int) -> dict:
    """Every query searched once per arm, the arms in a rotating order (the second and third searches of a query hit the
    query-vector cache whichever arm they are): feature logging on, off, and on with the search's commit waiting for
    the disk (``synchronous=FULL``, as every search was committed before searches stopped waiting for it)."""
    from fusionrank.ranking import QueryEncoder
    from fusionrank.serving.index import SearchIndex
    from fusionrank.serving.service import SearchService, load_handle
    from fusionrank.modeldir import ModelDir

    work = Path(tempfile.mkdtemp(prefix="fr-p99-"))
    idx = SearchIndex.load(index, log=lambda m: None)
    h = load_handle(model)
    t0 = time.perf_counter()
    svc = SearchService(idx, h, QueryEncoder(text_encoder=ModelDir.open(model).config().text_encoder_spec),
                        data_dir=work / "data", log=None)
    start_s = time.perf_counter() - t0
    store = svc.events
    qs = queries(n + 200)
    for q in qs[n:]:
        svc.search(q, k=10)  # warm-up (not timed)
    times = {a: [] for a in ARMS}
    log_ms = {a: [] for a in ARMS}
    for i, q in enumerate(qs[:n]):
        for arm in ARMS[i % 3:] + ARMS[:i % 3]:
            svc.feature_logging = arm != "off"
            store.durable_searches = arm == "on, fsync per search"
            t0 = time.perf_counter()
            r = svc.search(q, k=10)
            times[arm].append((time.perf_counter() - t0) * 1e3)
            log_ms[arm].append(r["timings_ms"]["log_ms"])
    store.durable_searches = False
    counts = svc.events.counts()
    svc.close()
    size = sum(p.stat().st_size for p in (work / "data").glob("events.sqlite*"))
    out = {"arms": {}}
    for arm in ARMS:
        out["arms"][arm] = {"p50_ms": pct(times[arm], 50), "p99_ms": pct(times[arm], 99), "mean_ms": statistics.mean(times[arm]),
                            "log_p50_ms": pct(log_ms[arm], 50), "log_p99_ms": pct(log_ms[arm], 99), "searches": len(times[arm])}
    out["p99_on_minus_off_ci95"] = bootstrap_diff(times["on"], times["off"])
    out["log_p99_on_minus_off_ci95"] = bootstrap_diff(log_ms["on"], log_ms["off"])
    out["store_bytes"], out["store_counts"], out["start_s"] = size, counts, start_s
    out["index"] = str(index)
    return out


# 2 -------------------------------------------------------------------------------------------
def start_server(model: Path, index: Path, env: dict, src: Path | None = None):
    """The real ``fusionrank serve`` of ``model`` over ``index`` (``src``: another checkout's code), with its own store."""
    from crash_harness import Server

    e = {**env, **({"PYTHONPATH": str(src)} if src else {})}
    e.setdefault("FUSIONRANK_EVENTS_URL", str(model / "service-data" / "events.sqlite"))  # each server its own store
    e.setdefault("FUSIONRANK_EVENTS_HASH_KEY", HASH_KEY)
    server = Server(model, e, args=("--index", index))
    server.start(timeout=300)
    return server


def events_per_s(url: str, batch: int, seconds: float, threads: int = 4) -> float:
    import httpx

    from crash_harness import EVENTS

    with httpx.Client(base_url=url, timeout=60) as c:
        searches = [c.get("/search", params={"q": q, "k": 10, "explain": "false"}).json() for q in queries(20)]
    done = [0] * threads
    stop = time.time() + seconds

    def run(t):
        rng = random.Random(t)
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.time() < stop:
                evs = []
                for _ in range(batch):
                    s = rng.choice(searches)
                    j = rng.randrange(len(s["results"]))
                    evs.append({"type": "click", "search_id": s["search_id"], "model_version": s["model_version"],
                                "product_id": s["results"][j]["product_id"], "position": j + 1, "timestamp": time.time()})
                r = c.post("/events", json={"events": evs}, headers={"X-API-Key": EVENTS})
                if r.status_code != 200:
                    raise RuntimeError(r.text)
                done[t] += batch

    t0 = time.time()
    ths = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return sum(done) / (time.time() - t0)


def export_src(rev: str, dst: Path) -> Path:
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dst)], input=tar, check=True)
    return dst / "src"


def throughput(model: Path, index: Path, before: str, seconds: float) -> dict:
    import shutil

    from crash_harness import serve_env
    from postgres_fixtures import TempPostgres, pg_bin_dir

    out = {}
    work = Path(tempfile.mkdtemp(prefix="fr-ev-"))
    sides = [("sqlite", {}, None), ("before (JSONL)", {}, export_src(before, work))]
    pg = None
    if pg_bin_dir() is not None:
        pg = TempPostgres(pg_bin_dir()).start()
        sides.insert(1, ("postgresql", {"FUSIONRANK_EVENTS_URL": pg.create_db("bench")}, None))
    for name, extra, src in sides:
        m = work / f"model-{len(out)}"
        shutil.copytree(model, m, ignore=shutil.ignore_patterns("index", "service-data"))
        if src is not None:  # the code before the event store does not know the config's later blocks ([events], ...)
            known = json.loads(subprocess.run(
                [sys.executable, "-c", "import json; from fusionrank.experiment import ExperimentConfig as C; "
                 "print(json.dumps(list(C.model_fields)))"], check=True, capture_output=True, text=True,
                env={**os.environ, "PYTHONPATH": str(src)}).stdout)
            cfg = json.loads((m / "config.json").read_text())
            (m / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k in known}))
        side_index = index
        if src is not None:  # that code reads its own index format: its own `fusionrank index` builds one (same codec)
            side_index = m / "index"
            codec = json.loads((Path(index) / "index.json").read_text()).get("config", {}).get("ann", {}).get("codec")
            subprocess.run([sys.executable, "-m", "fusionrank.cli", "index", str(m), *(["--codec", codec] if codec else [])],
                           check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(src)})
        server = start_server(m, side_index, serve_env(**extra), src)
        try:
            out[name] = {b: events_per_s(server.url, b, seconds) for b in (1, 10, 100)}
        finally:
            server.stop()
        print(name, out[name], flush=True)
    if pg is not None:
        pg.stop()
    return out


# 3 -------------------------------------------------------------------------------------------
def kills(model: Path, index: Path, n: int, seed: int = 11) -> dict:
    import shutil

    from crash_harness import Ledger, _searcher, serve_env
    from fusionrank.feedback.store import open_store

    work = Path(tempfile.mkdtemp(prefix="fr-kill-"))
    m = work / "model"
    shutil.copytree(model, m, ignore=shutil.ignore_patterns("index", "service-data"))
    env = serve_env()
    ledger, rng, rows = Ledger(), random.Random(seed), []
    server = start_server(m, index, env)
    for cycle in range(n):
        stop = threading.Event()
        ths = [threading.Thread(target=_searcher, args=(server.url, ledger, stop, random.Random(rng.random()), 1.7e9 + cycle * 1e4),
                                daemon=True) for _ in range(4)]
        for t in ths:
            t.start()
        time.sleep(rng.uniform(1.0, 3.0))
        while ledger.events_acked == 0:
            time.sleep(0.1)
        server.kill9()
        stop.set()
        for t in ths:
            t.join(timeout=60)
        server.start(timeout=300)  # the same port and store
        with open_store(m / "service-data" / "events.sqlite", HASH_KEY.encode()) as st:
            evs = {(e["query_id"], e["timestamp"]) for e in st.iter_events()}
            qs = {q["query_id"] for q in st.iter_queries()}
        rows.append({"events_acked": len(ledger.events), "events_found": len(ledger.events & evs),
                     "searches_acked": len(ledger.searches), "searches_found": len(ledger.searches & qs)})
        print("kill", cycle + 1, rows[-1], flush=True)
    server.stop()
    last = rows[-1]
    return {"kills": n, "per_kill": rows, "events_acked": last["events_acked"], "events_missing": last["events_acked"] - last["events_found"],
            "searches_acked": last["searches_acked"], "searches_missing": last["searches_acked"] - last["searches_found"],
            "errors": ledger.errors[:5]}


def main() -> None:
    from fusionrank.settings import get_settings

    bench = get_settings().home / "bench-clicks"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=bench / "models" / "full")
    ap.add_argument("--index", type=Path, default=None, help="serving index (default: the model's own, built with the "
                    "config's codec if missing, as `fusionrank index` does)")
    ap.add_argument("--before", default="ea16c35")
    ap.add_argument("--queries", type=int, default=1500)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--parts", default="p99,throughput,kill9", help="parts to run; the others are kept from the last results")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    if a.index is None:
        from fusionrank.modeldir import ModelDir

        md = ModelDir.open(a.model)
        if not (md.index_dir / "index.json").exists():
            md.build_index(log=lambda m: None)
        a.index = md.index_dir
    prev = RESULTS / "event_logging.json"
    res = json.loads(prev.read_text()) if prev.exists() and parts != {"p99", "throughput", "kill9"} else {}
    res["load_before"] = machine_load()
    partial = RESULTS / "event_logging.partial.json"  # each part as it ends, so a later part's failure keeps it
    if "p99" in parts:
        res["p99"] = p99_on_off(a.model, a.index, a.queries)
        print("p99", res["p99"], flush=True)
        partial.write_text(json.dumps(res, indent=1, default=str))
    if "throughput" in parts:
        res["throughput"] = throughput(a.model, a.index, a.before, a.seconds)
        partial.write_text(json.dumps(res, indent=1, default=str))
    if "kill9" in parts:
        res["kill9"] = kills(a.model, a.index, a.kills)
    partial.unlink(missing_ok=True)
    res["load_after"] = machine_load()
    (RESULTS / "event_logging.json").write_text(json.dumps(res, indent=1, default=str))
    p = res["p99"]
    arms = p["arms"]
    on, off = arms["on"], arms["off"]
    t = {k: {int(b): v for b, v in d.items()} for k, d in res["throughput"].items()}  # JSON keys are strings
    base = t.get("before (JSONL)", {})
    lo, hi = p["p99_on_minus_off_ci95"]
    llo, lhi = p["log_p99_on_minus_off_ci95"]
    L = ["# Event store under the service", "", "`.venv/bin/python benchmarks/event_logging.py` (one run; the 44k catalogue and "
         "the learning-from-clicks benchmark's full-information model).", "",
         f"## Search latency with feature logging on and off (in process, one client, {on['searches']} queries each, interleaved)", "",
         f"Index: `{p.get('index', '?')}`. Each query is searched once per row, the rows in a rotating order. *on, fsync per "
         "search*: feature logging on, and the search's commit waits for the disk, as every search did before searches "
         "were committed without waiting for it (events still are).", "",
         "| | p50 ms | p99 ms | mean ms | logging p50 ms | logging p99 ms |", "|---|---:|---:|---:|---:|---:|"]
    for name, v in arms.items():
        L.append(f"| feature logging {name} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['mean_ms']:.2f} | {v['log_p50_ms']:.2f} | "
                 f"{v['log_p99_ms']:.2f} |")
    L += [f"| on - off | {on['p50_ms'] - off['p50_ms']:+.2f} | **{on['p99_ms'] - off['p99_ms']:+.2f}** | {on['mean_ms'] - off['mean_ms']:+.2f} | "
          f"{on['log_p50_ms'] - off['log_p50_ms']:+.2f} | {on['log_p99_ms'] - off['log_p99_ms']:+.2f} |", "",
          f"95% bootstrap interval of the p99 difference (on - off): whole search [{lo:+.2f}, {hi:+.2f}] ms; the store write alone "
          f"[{llo:+.2f}, {lhi:+.2f}] ms. The logging columns time the store write alone (the part feature logging changes).", "",
          f"Store after the run: {p['store_counts']}, {p['store_bytes'] / 1e6:.1f} MB; opening the service on a "
          f"new store (archiving every product's vectors once) took {p.get('start_s', float('nan')):.1f} s.", "",
         "## Events/s through POST /events (real `fusionrank serve` process; 4 client threads in the benchmark process on the same 2 cores; events key)", "",
         "| store | batch 1 | batch 10 | batch 100 |", "|---|---:|---:|---:|"]
    for name, v in t.items():
        L.append(f"| {name} | {v[1]:,.0f} | {v[10]:,.0f} | {v[100]:,.0f} |")
    if base:
        for name in ("sqlite", "postgresql"):
            if name in t:
                L.append(f"| {name} / before | {t[name][1] / base[1]:.2f}x | {t[name][10] / base[10]:.2f}x | {t[name][100] / base[100]:.2f}x |")
    k = res["kill9"]
    L += ["", "For scale: Metarank's documentation quotes 1-3k events/s for its import.", "",
          "## kill -9 under event load", "",
          f"{k['kills']} SIGKILLs of the real server with 4 threads searching and posting events; after each restart every "
          f"acknowledged search and event was looked up in the store: **{k['events_missing']} of {k['events_acked']:,} acknowledged "
          f"events missing, {k['searches_missing']} of {k['searches_acked']:,} searches missing**.", "",
          f"Machine before: {res['load_before']}. After: {res['load_after']}."]
    (RESULTS / "event_logging.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
