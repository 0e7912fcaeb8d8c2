"""Kill -9 the real ``fusionrank serve`` process under write load, restart it, compare what was acknowledged with what is there.

Used by ``tests/serving/test_crash.py`` and ``benchmarks/crash_runs.py``. Load, from threads:

- writers: each owns a few product ids and PUTs (a new title each time) or DELETEs one of them;
  a 200/204 makes that the id's acknowledged state; a request without an answer (the process
  died) makes its outcome unknown, so after the restart the id must be in its acknowledged
  state or in that in-flight one;
- searchers: ``GET /search`` then ``POST /events`` (events key) for one of its results, each
  event marked by a unique ``timestamp``; a 200 makes the search id and events acknowledged.

After each kill the server is restarted and every acknowledged state, search and event is
checked: products through ``GET /products/{id}``, searches and events in the service's event store
(``events.sqlite`` in its data folder), opened read-side with :func:`fusionrank.feedback.store.open_service_store`.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ADMIN, EVENTS = "crash-admin", "crash-events"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Ledger:
    """What the clients were told, and what may have happened without an answer."""

    acked: dict[str, str | None] = field(default_factory=dict)  # pid -> acknowledged title (None: deleted)
    inflight: dict[str, str | None] = field(default_factory=dict)  # pid -> state of an unanswered request
    searches: set[str] = field(default_factory=set)
    events: set[tuple[str, float]] = field(default_factory=set)
    writes_acked: int = 0
    events_acked: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Server:
    def __init__(self, model: Path, env: dict, port: int | None = None, python: str = sys.executable, args: tuple = ()):
        """``args``: more ``fusionrank serve`` options (e.g. ``("--index", DIR)``)."""
        self.model, self.env, self.python, self.args = model, env, python, tuple(str(a) for a in args)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.stderr_path = model.parent / "serve.stderr"

    def start(self, timeout: float = 180) -> float:
        t0 = time.time()
        err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([self.python, "-m", "fusionrank.cli", "serve", str(self.model), "--port", str(self.port), *self.args],
                                     stdout=subprocess.PIPE, stderr=err, env=self.env, text=True, start_new_session=True)
        err.close()
        while time.time() - t0 < timeout:
            line = self.proc.stdout.readline()
            if line.startswith("http://"):
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}: {self.stderr_path.read_text()[-3000:]}")
        while time.time() - t0 < timeout:
            try:
                if httpx.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return time.time() - t0
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("the service did not answer /healthz")

    def kill9(self) -> None:
        """SIGKILL to the server and every process it started (``--workers``), as a machine or the OOM killer would."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: its worker processes
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()


def _writer(url: str, pids: list[str], ledger: Ledger, stop: threading.Event, rng: random.Random) -> None:
    H = {"X-API-Key": ADMIN}
    with httpx.Client(base_url=url, timeout=30) as c:
        n = 0
        while not stop.is_set():
            pid = rng.choice(pids)
            n += 1
            if ledger.acked.get(pid) and rng.random() < 0.3:
                want, call = None, lambda: c.delete(f"/products/{pid}", headers=H)
                ok = (204,)
            else:
                want = f"crash item {pid} v{n} {rng.randrange(10**9)}"
                call = lambda: c.put(f"/products/{pid}", json={"title": want, "fabric": "wool"}, headers=H)  # noqa: B023
                ok = (200,)
            with ledger.lock:
                ledger.inflight[pid] = want
            try:
                r = call()
            except httpx.TransportError:
                return  # the process died: the in-flight state stays possible
            with ledger.lock:
                if r.status_code in ok:
                    ledger.acked[pid] = want
                    ledger.writes_acked += 1
                    ledger.inflight.pop(pid, None)
                else:
                    ledger.inflight.pop(pid, None)
                    ledger.errors.append(f"{r.request.method} {pid}: {r.status_code} {r.text[:200]}")


def _searcher(url: str, ledger: Ledger, stop: threading.Event, rng: random.Random, tag: float) -> None:
    words = ["shirt", "blue", "dress", "black shoes", "red", "watch", "crash item", "men", "women"]
    with httpx.Client(base_url=url, timeout=30) as c:
        while not stop.is_set():
            try:
                s = c.get("/search", params={"q": rng.choice(words), "k": 5})
                if s.status_code != 200:
                    continue
                body = s.json()
                with ledger.lock:
                    ledger.searches.add(body["search_id"])
                if not body["results"]:
                    continue
                ts = round(tag + rng.random() * 1000, 6)
                evs = [{"type": t, "search_id": body["search_id"], "model_version": body["model_version"],
                        "product_id": h["product_id"], "position": i + 1, "timestamp": ts + i * 1e-3}
                       for i, h in enumerate(body["results"][:2]) for t in ("impression",)]
                r = c.post("/events", json={"events": evs}, headers={"X-API-Key": EVENTS})
            except (httpx.TransportError, ValueError):
                return
            with ledger.lock:
                if r.status_code == 200:
                    ledger.events.update((e["search_id"], e["timestamp"]) for e in evs)
                    ledger.events_acked += len(evs)
                else:
                    ledger.errors.append(f"events: {r.status_code} {r.text[:200]}")


def load_then_kill(server: Server, ledger: Ledger, seconds: float, rng: random.Random, writers: int = 3, searchers: int = 2,
                   ids_per_writer: int = 4, cycle: int = 0) -> None:
    """Drive load for ``seconds`` (random), then kill -9 the server mid-traffic."""
    stop = threading.Event()
    threads = [threading.Thread(target=_writer, args=(server.url, [f"c{w}-{i}" for i in range(ids_per_writer)], ledger, stop,
                                                      random.Random(rng.random())), daemon=True) for w in range(writers)]
    threads += [threading.Thread(target=_searcher, args=(server.url, ledger, stop, random.Random(rng.random()),
                                                         1_700_000_000.0 + cycle * 10_000), daemon=True)
                for _ in range(searchers)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    deadline = time.time() + 120  # a slow first PUT (encoders load) must not leave a cycle without writes
    while time.time() < deadline and (ledger.writes_acked == 0 or ledger.events_acked == 0):
        time.sleep(0.1)
    server.kill9()  # while requests are in flight
    stop.set()
    for t in threads:
        t.join(timeout=60)


@dataclass
class Check:
    writes_acked: int
    writes_found: int
    writes_lost: list[str]
    events_acked: int
    events_found: int
    searches_acked: int
    searches_found: int


def check(server: Server, ledger: Ledger, data_dir: Path) -> Check:
    """Compare everything acknowledged with the restarted server's products and the logs on disk."""
    from fusionrank.feedback.store import open_service_store

    lost, found = [], 0
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for pid, title in sorted(ledger.acked.items()):
            r = c.get(f"/products/{pid}")
            have = r.json()["title"] if r.status_code == 200 else None
            if have == title or (pid in ledger.inflight and have == ledger.inflight[pid]):
                found += 1
                ledger.acked[pid] = have  # the in-flight write may have landed: that is now the state
                if have is not None and r.json().get("attributes") != {"fabric": "wool"}:
                    lost.append(f"{pid}: attributes {r.json().get('attributes')}")
            else:
                lost.append(f"{pid}: acknowledged {title!r}, found {have!r}")
    ledger.inflight.clear()
    with open_service_store(data_dir) as store:
        evs = {(e["query_id"], e["timestamp"]) for e in store.iter_events()}
        searches = {q["query_id"] for q in store.iter_queries()}
    return Check(len(ledger.acked), found, lost, len(ledger.events), len(ledger.events & evs),
                 len(ledger.searches), len(ledger.searches & searches))


def prepare_model(src_model: Path, dst: Path, env: dict) -> Path:
    """A copy of ``src_model`` with its serving index built by ``fusionrank index`` (its own folder: writes stay there)."""
    import shutil

    shutil.copytree(src_model, dst, ignore=shutil.ignore_patterns("index", "service-data"))
    r = subprocess.run([sys.executable, "-m", "fusionrank.cli", "index", str(dst)], env=env, capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return dst


def serve_env(base: dict | None = None, **extra: str) -> dict:
    env = {**(base or os.environ), "FUSIONRANK_ADMIN_KEY": ADMIN, "FUSIONRANK_EVENTS_KEY": EVENTS, "OMP_NUM_THREADS": "1",
           "FUSIONRANK_EVENTS_RATE": "100000", "FUSIONRANK_EVENTS_BURST": "100000"}
    env.update(extra)
    return env
