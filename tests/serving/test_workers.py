"""`fusionrank serve --workers 2`: real processes on one port, real HTTP.

Which worker answers is the kernel's choice; every response names it (``X-Fusionrank-Worker``),
and the tests keep asking on new connections until every worker has answered.
"""
from __future__ import annotations

import os
import platform
import shutil
import threading
import time

import httpx
import pytest

from fusionrank.serving.workers import ThreadsAtFork, check_single_threaded

from crash_harness import Server

ADMIN, EVENTS = "workers-admin", "workers-events"
WORKERS = 2


def start_workers(model_src, tmp_path, home, *args) -> Server:
    """``fusionrank serve MODEL --workers 2 ARGS`` over a private copy of ``model_src`` and its index, started."""
    model = tmp_path / "model"
    shutil.copytree(model_src, model, ignore=shutil.ignore_patterns("service-data"))
    env = {**os.environ, "FUSIONRANK_ADMIN_KEY": ADMIN, "FUSIONRANK_EVENTS_KEY": EVENTS,
           "FUSIONRANK_HOME": str(home), "OMP_NUM_THREADS": "1"}
    server = Server(model, env, args=("--workers", WORKERS, *args))
    server.start(timeout=300)
    return server


@pytest.fixture
def served(tiny_model, tmp_path, fusionrank_home):
    """``fusionrank serve MODEL --workers 2`` (forked from a loaded supervisor, the default) over the tiny model."""
    server = start_workers(tiny_model[0], tmp_path, fusionrank_home)
    try:
        yield server.url + "/", server.model  # as `fusionrank serve` prints it
    finally:
        server.stop()


def each_worker(url: str, ask, times: int = 2, limit: int = 400) -> dict[str, list]:
    """Call ``ask(client)`` on new connections until every worker answered ``times`` times; answers by worker."""
    seen: dict[str, list] = {}
    for _ in range(limit):
        with httpx.Client(base_url=url, timeout=60) as c:  # a new connection: any worker may take it
            r = ask(c)
        seen.setdefault(r.headers["x-fusionrank-worker"], []).append(r)
        if len(seen) == WORKERS and all(len(v) >= times for v in seen.values()):
            return seen
    raise AssertionError(f"only workers {sorted(seen)} answered {limit} requests")


def test_an_acknowledged_write_is_seen_by_every_worker(served):
    url, _ = served
    admin = {"X-API-Key": ADMIN}
    base = httpx.get(url + "search", params={"q": "red shirt", "k": 1}).json()["results"][0]
    body = {"title": "Zorblax Quasar Sneakers", "category": base["category"], "brand": "Zorblax"}
    r = httpx.put(url + "products/zx-1", json=body, headers=admin, timeout=120)
    assert r.status_code == 200, r.text
    writer = r.headers["x-fusionrank-worker"]
    # the next search of every worker finds it, and every worker has it under its id
    searches = each_worker(url, lambda c: c.get("/search", params={"q": "zorblax quasar", "k": 5}))
    for w, rs in searches.items():
        for s in rs:
            assert s.status_code == 200 and s.json()["results"][0]["product_id"] == "zx-1", (w, s.text[:300])
    products = each_worker(url, lambda c: c.get("/products/zx-1"), times=1)
    assert all(rs[0].json()["title"] == "Zorblax Quasar Sneakers" for rs in products.values())
    # a replacement through another worker, then a delete: each seen everywhere before the next search
    other = next(w for w in searches if w != writer)
    for _ in range(200):
        r = httpx.put(url + "products/zx-1", json={**body, "title": "Zorblax Nebula Sneakers"}, headers=admin, timeout=120)
        if r.headers["x-fusionrank-worker"] == other:
            break
    assert r.status_code == 200 and r.headers["x-fusionrank-worker"] == other
    for rs in each_worker(url, lambda c: c.get("/search", params={"q": "zorblax", "k": 5})).values():
        hits = [h for s in rs for h in s.json()["results"] if h["product_id"] == "zx-1"]
        assert hits and all(h["title"] == "Zorblax Nebula Sneakers" for h in hits)
    assert httpx.delete(url + "products/zx-1", headers=admin).status_code == 204
    for rs in each_worker(url, lambda c: c.get("/search", params={"q": "zorblax quasar nebula", "k": 10})).values():
        assert all(h["product_id"] != "zx-1" for s in rs for h in s.json()["results"])
    for rs in each_worker(url, lambda c: c.get("/products/zx-1"), times=1).values():
        assert rs[0].status_code == 404
    # the stats of every worker count the same products
    stats = each_worker(url, lambda c: c.get("/stats"), times=1)
    assert len({rs[0].json()["products"] for rs in stats.values()}) == 1
    assert all(rs[0].json()["searches_at_once"] == 1 for rs in stats.values())  # the processes fill the cores


def test_an_event_may_name_a_search_another_worker_served(served):
    url, _ = served
    for _ in range(200):
        with httpx.Client(base_url=url, timeout=60) as c:
            s = c.get("/search", params={"q": "blue dress", "k": 4})
        with httpx.Client(base_url=url, timeout=60) as c:
            hit = s.json()["results"][1]
            e = c.post("/events", headers={"X-API-Key": EVENTS}, json={"events": [
                {"type": "click", "search_id": s.json()["search_id"], "model_version": s.json()["model_version"],
                 "product_id": hit["product_id"], "position": 2}]})
        assert e.status_code == 200, e.text
        if e.headers["x-fusionrank-worker"] != s.headers["x-fusionrank-worker"]:
            break
    else:
        raise AssertionError("every event landed on the worker that served its search")
    # one event store: the other worker's /stats counts the same searches and events
    counts = each_worker(url, lambda c: c.get("/stats"), times=1)
    assert len({str(rs[0].json()["logs"]["events"]) for rs in counts.values()}) == 1


def test_model_swap_reaches_every_worker_with_no_failed_requests(served, tiny_lgbm_model, tiny_model):
    url, model = served
    failures, done = [], []
    stop = threading.Event()
    queries = ["red shirt", "blue dress", "black watch", "nike shoes", "green jacket women", "men"]

    def client(i):
        n = 0
        while not stop.is_set():
            with httpx.Client(base_url=url, timeout=60) as c:  # a few requests per connection, then another worker
                for _ in range(3):
                    r = c.get("/search", params={"q": queries[(i + n) % len(queries)], "k": 5})
                    n += 1
                    if r.status_code != 200 or len(r.json()["results"]) != 5:
                        failures.append((r.status_code, r.text[:200]))
                    else:
                        done.append((r.headers["x-fusionrank-worker"], r.json()["model_version"]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()

    def served_more(n: int) -> None:  # progress, not time
        target, deadline = len(done) + len(failures) + n, time.monotonic() + 180
        while len(done) + len(failures) < target and time.monotonic() < deadline:
            time.sleep(0.02)

    versions = [httpx.get(url + "healthz").json()["model_version"]]  # the model directory served at start
    try:
        with httpx.Client(base_url=url, timeout=120, headers={"X-API-Key": ADMIN}) as admin:
            for path in [tiny_lgbm_model[0], tiny_model[0]] * 2:
                served_more(20)
                r = admin.post("/admin/model", json={"path": str(path)})
                assert r.status_code == 200, r.text
                versions.append(r.json()["current"])
                # acknowledged: the next search of every worker ranks with it
                for rs in each_worker(url, lambda c: c.get("/search", params={"q": "red", "k": 3}), times=1).values():
                    assert rs[0].json()["model_version"] == versions[-1]
            served_more(20)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert {w for w, _ in done} == {str(i) for i in range(WORKERS)}
    assert {v for _, v in done} == set(versions)  # every model served requests
    # a snapshot needs one process: a clear refusal, not a half-written folder
    r = httpx.post(url + "admin/snapshot", headers={"X-API-Key": ADMIN})
    assert r.status_code == 409 and "worker processes" in r.json()["detail"]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_worker_killed_with_sigkill_is_started_again_and_serves_what_the_others_serve(start_method, tiny_model, tmp_path,
                                                                                      fusionrank_home):
    told = ("--search-concurrency", "2") if start_method == "spawn" else ()  # the option reaches spawned workers too
    server = start_workers(tiny_model[0], tmp_path, fusionrank_home, "--start-method", start_method, *told)
    url, admin = server.url + "/", {"X-API-Key": ADMIN}
    supervisor = server.proc.pid
    try:
        full = {w: rs[0].json() for w, rs in each_worker(url, lambda c: c.get("/stats"), times=1).items()}
        assert all(st["searches_at_once"] == (2 if told else 1) for st in full.values())
        stats = {w: st["worker"] for w, st in full.items()}
        for w, st in stats.items():
            assert st["started_by"] == start_method
            if start_method == "fork":  # loaded once, by the supervisor, before the fork: no worker loaded the model again
                assert st["model_loaded_by"] == supervisor != st["pid"]
            else:
                assert st["model_loaded_by"] == st["pid"] != supervisor
        # a write before the kill: the new worker starts from the supervisor's index and must catch up on the log
        base = httpx.get(url + "search", params={"q": "red shirt", "k": 1}).json()["results"][0]
        r = httpx.put(url + "products/zx-9", json={"title": "Zorblax Quasar Sneakers", "category": base["category"],
                                                   "brand": "Zorblax"}, headers=admin, timeout=120)
        assert r.status_code == 200, r.text
        victim = "1"
        os.kill(stats[victim]["pid"], 9)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # the supervisor notices and starts worker 1 again, under a new pid
            try:
                now = each_worker(url, lambda c: c.get("/stats"), times=1)
            except httpx.TransportError:  # a connection the killed worker had accepted
                continue
            if now[victim][0].json()["worker"]["pid"] != stats[victim]["pid"]:
                break
            time.sleep(0.2)
        again = now[victim][0].json()["worker"]
        assert again["pid"] != stats[victim]["pid"] and again["started_by"] == start_method
        assert again["model_loaded_by"] == (supervisor if start_method == "fork" else again["pid"])
        assert now[victim][0].json()["products"] == now["0"][0].json()["products"]
        # the same ranking from both workers, with the product written before the kill first
        answers = each_worker(url, lambda c: c.get("/search", params={"q": "zorblax quasar", "k": 5}), times=1)
        ranked = {w: [(h["product_id"], round(h["score"], 5)) for h in rs[0].json()["results"]] for w, rs in answers.items()}
        assert ranked[victim] == ranked["0"] and ranked["0"][0][0] == "zx-9"
    finally:
        server.stop()
    assert server.proc.returncode == 0


def test_forking_is_refused_while_another_thread_runs():
    import threading

    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="holds-a-lock", daemon=True)
    t.start()
    try:
        with pytest.raises(ThreadsAtFork) as e:
            check_single_threaded()
        assert "holds-a-lock" in e.value.python_threads
        assert t.native_id in [tid for tid, _ in e.value.native_threads]
        assert "--start-method spawn" in str(e.value)
    finally:
        stop.set()
        t.join()


ARENA_PROBE = """
import ctypes, os, sys, threading
from fusionrank.serving.workers import one_malloc_arena

def arenas():  # glibc's malloc_stats() writes one "Arena N:" block per arena to stderr (fd 2)
    r, w = os.pipe()
    saved = os.dup(2)
    os.dup2(w, 2)
    ctypes.CDLL(None).malloc_stats()
    os.dup2(saved, 2)
    os.close(w)
    with os.fdopen(r) as f:
        return sum(line.startswith("Arena ") for line in f.read().splitlines())

before = arenas()
if sys.argv[1] == "one":
    one_malloc_arena()
together = threading.Barrier(6)

def work():  # six threads alive at once, each allocating and freeing
    together.wait()
    for _ in range(100):
        del [bytearray(50_000) for _ in range(20)][:]
    together.wait()

threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(before, arenas())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_with_one_malloc_arena_threads_allocate_from_the_existing_arenas():
    import subprocess
    import sys

    got = {}
    for mode in ("one", "default"):
        out = subprocess.run([sys.executable, "-c", ARENA_PROBE, mode], capture_output=True, text=True, check=True)
        got[mode] = tuple(int(v) for v in out.stdout.split())
    assert got["one"][1] == got["one"][0]  # the six threads made no arena of their own
    assert got["default"][1] > got["default"][0]  # by default they do


HOLES_PROBE = """
import ctypes, os, sys
from fusionrank.serving.workers import fill_heap_holes, release_free_heap

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(1000) for _ in range(20_000)]  # a heap of small blocks, every other one then freed
for p in blocks[::2]:
    libc.free(p)
release_free_heap()
taken = fill_heap_holes() if sys.argv[1] == "fill" else (0, 0)
r, w = os.pipe()
pid = os.fork()
if pid == 0:  # a worker: allocates and writes 10,000 blocks of its own, then reports the heap pages it wrote
    for _ in range(10_000):
        ctypes.memset(libc.malloc(1000), 1, 1000)
    dirty, heap = 0, False
    for line in open("/proc/self/smaps"):
        if line[0] in "0123456789abcdef":
            heap = line.rstrip().endswith("[heap]")
        elif heap and line.startswith("Private_Dirty:"):
            dirty += int(line.split()[1])
    os.write(w, str(dirty).encode())
    os._exit(0)
os.close(w)
os.waitpid(pid, 0)
print(taken[0], taken[1], os.read(r, 100).decode())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_a_worker_forked_after_the_heap_holes_are_filled_writes_pages_of_its_own_not_its_parents():
    import subprocess
    import sys

    got = {}
    for mode in ("fill", "keep"):
        out = subprocess.run([sys.executable, "-c", HOLES_PROBE, mode], capture_output=True, text=True, check=True)
        got[mode] = [int(v) for v in out.stdout.split()]
    blocks, size, dirty_kb = got["fill"]
    assert blocks >= 9_000 and size >= 9_000 * 992  # the 10,000 freed blocks (a few stay in the thread's cache)
    assert got["keep"][:2] == [0, 0]
    # 10,000 blocks of 1,000 bytes are about 10 MB: packed at the top of the heap with the holes filled; spread over
    # the holes otherwise, each page the child writes in is shared with blocks of its parent's, and copied whole
    assert dirty_kb < 12_000 < got["keep"][2] and got["keep"][2] > 1.5 * dirty_kb, got
