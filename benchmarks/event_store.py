"""Events per second through ``EventStore.record_events`` (batches of 1, 10, 100) on SQLite and PostgreSQL, in one run.

    .venv/bin/python benchmarks/event_store.py [--seconds 3] [--threads 1,4] [--out benchmarks/results/event_store.md]

Each engine starts empty: SQLite in a temporary folder (WAL, ``synchronous=FULL``), PostgreSQL
as a throwaway server started like the tests' fixture (``initdb`` into a temporary folder,
loopback, default ``fsync=on`` and ``synchronous_commit=on``). For each batch size and thread
count, ``record_events`` is called repeatedly for ``--seconds``; every call is one durable
transaction. The old JSON-lines log (``serving/wal.py``, ``fsync`` per append, group commit)
is timed the same way for comparison. ``log_searches`` bulk speed (10^4 searches of 10
products per call) and ``click_log`` over them close the table. What else was running (load
average, the busiest processes) is printed with the results, as the machine is shared.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fusionrank.feedback.schema import Event, SearchLog, ServedSlate  # noqa: E402
from fusionrank.feedback.store import open_store  # noqa: E402
from fusionrank.serving.wal import RecordLog  # noqa: E402

KEY = b"benchmark-hash-key-0123456789abcdef"


def load_temp_postgres():
    spec = importlib.util.spec_from_file_location("feedback_conftest", ROOT / "tests" / "feedback" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.TempPostgres, mod.pg_bin_dir


def run_for(seconds: float, threads: int, call) -> tuple[int, float]:
    """Call ``call(thread_index, i)`` in ``threads`` threads for ``seconds``; returns (calls, elapsed)."""
    stop = time.perf_counter() + seconds
    done = [0] * threads

    def work(t: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            call(t, i)
            i += 1
        done[t] = i

    t0 = time.perf_counter()
    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(done), time.perf_counter() - t0


def events_batch(t: int, i: int, n: int) -> list[Event]:
    now = time.time()
    return [Event("click", f"q{t}-{i}", f"p{j}", j + 1, timestamp=now, client_id=f"client-{t}", session_id=f"s-{t}-{i}",
                  model_version="bench") for j in range(n)]


def slate(rng, n=10) -> ServedSlate:
    ids = [f"p{i}" for i in rng.choice(5000, n, replace=False)]
    return ServedSlate(ids, rng.standard_normal(n).astype(np.float32), rng.standard_normal((n, 12)).astype(np.float32),
                       rng.random((n, 3)) < 0.7, rng.standard_normal(64).astype(np.float32), [f"v{p}" for p in ids],
                       list(range(1, n + 1)))


def machine_note() -> str:
    load = os.getloadavg()
    try:
        top = subprocess.run(["ps", "-eo", "pid,pcpu,etime,comm", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=10).stdout
        busy = [" ".join(ln.split()[1:]) for ln in top.splitlines()[1:] if ln.split() and ln.split()[0] != str(os.getpid())][:5]
    except (OSError, subprocess.SubprocessError):
        busy = []
    fs = subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
    return (f"{platform.node()}: {os.cpu_count()} cores, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
            f"at the start; temporary folder on {fs}; busiest other processes (%CPU over their lifetime, elapsed, command): " + "; ".join(busy))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", default="1,4")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "event_store.md")
    args = ap.parse_args()
    thread_counts = [int(x) for x in args.threads.split(",")]
    note = machine_note()
    print(note)
    TempPostgres, pg_bin_dir = load_temp_postgres()
    tmp = Path(tempfile.mkdtemp(prefix="fusionrank-bench-"))
    pg = None
    engines: dict[str, str] = {"sqlite": f"sqlite:///{tmp / 'events.sqlite'}"}
    if pg_bin_dir() is not None:
        pg = TempPostgres(pg_bin_dir()).start()
        engines["postgresql"] = pg.create_db("bench")
    rows: list[tuple] = []
    try:
        for name, url in engines.items():
            st = open_store(url, KEY)
            for threads in thread_counts:
                for batch in (1, 10, 100):
                    calls, el = run_for(args.seconds, threads, lambda t, i: st.record_events(events_batch(t, i, batch)))
                    rows.append((name, "record_events", threads, batch, calls * batch / el, el / max(calls, 1) * threads * 1e3))
                    print(rows[-1])
            rng = np.random.default_rng(0)
            pool = [slate(rng) for _ in range(2000)]
            logs = [SearchLog(f"s{i}", f"query {i % 300}", 1e9 + i, "bench", pool[i % 2000], client_id=f"c{i % 50}")
                    for i in range(10_000)]
            t0 = time.perf_counter()
            st.log_searches(logs)
            el = time.perf_counter() - t0
            rows.append((name, "log_searches (10^4 per call)", 1, 10_000, 10_000 / el, el * 1e3))
            t0 = time.perf_counter()
            df = st.click_log()
            el = time.perf_counter() - t0
            rows.append((name, f"click_log ({len(df):,} rows)", 1, len(df), len(df) / el, el * 1e3))
            print(rows[-2], rows[-1])
            st.close()
        log = RecordLog(tmp / "events.jsonl", log=None)
        for threads in thread_counts:
            for batch in (1, 10, 100):
                def call(t, i, batch=batch):
                    log.append(*({"search_id": e.query_id, "product_id": e.object_id, "action": e.action_name,
                                  "ts": e.timestamp} for e in events_batch(t, i, batch)))
                calls, el = run_for(args.seconds, threads, call)
                rows.append(("jsonl (old wal.py)", "RecordLog.append", threads, batch, calls * batch / el,
                             el / max(calls, 1) * threads * 1e3))
                print(rows[-1])
        log.close()
    finally:
        if pg is not None:
            pg.stop()
        subprocess.run(["rm", "-rf", str(tmp)])
    end_load = os.getloadavg()
    lines = ["# Event store throughput", "",
             f"`benchmarks/event_store.py --seconds {args.seconds:g} --threads {args.threads}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Every `record_events` call is one durable "
             "transaction (SQLite WAL with `synchronous=FULL`; PostgreSQL 127.0.0.1 with `fsync=on`, "
             "`synchronous_commit=on`); the old JSON-lines log `fsync`s each append.", "",
             "| engine | operation | threads | batch | rows/s | ms per call |", "|---|---|---:|---:|---:|---:|"]
    for eng, op, th, b, rate, ms in rows:
        lines.append(f"| {eng} | {op} | {th} | {b:,} | {rate:,.0f} | {ms:.2f} |")
    lines += ["", f"Machine: {note}. Load average at the end: {end_load[0]:.2f} / {end_load[1]:.2f} / {end_load[2]:.2f}.",
              "The machine is shared with other work, so absolute numbers move between runs; compare rows of one run.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
