"""``fusionrank serve --workers N``: N processes serve one index snapshot on one port.

The Python stages of a search hold the GIL, so one process uses about one core. Here the
starting process (the supervisor) prepares, then starts N worker processes, each a whole
:class:`~fusionrank.serving.service.SearchService` under uvicorn.

**Preload, then fork** (``--start-method fork``, the default on Linux, as ``gunicorn --preload``):
the supervisor loads everything a worker only reads, once (:func:`load_shared_service`: torch,
uvicorn and the HTTP app's modules, the index opened shared, the model, its query understanding,
the ONNX query encoder, a warm-up search), creates the event store and archives the product
vectors in it, closes the store, calls :func:`gc.freeze` (the collector then never touches the
loaded objects, so their pages are not copied in a child just because it ran a collection) and
``os.fork()``-s the workers. A worker inherits those pages copy-on-write and opens only what is
per process and stateful (:func:`start_worker_service`): its event store connection and the
store's checkpointer thread, a new random source (a fork would repeat its siblings' randomised
searches), the published-model file, the registry follower's thread, uvicorn on the inherited
socket. A worker that dies is forked again from the same loaded supervisor. ``os.fork`` copies
only the calling thread, so a lock another thread held would stay held forever in the child: the
supervisor checks before every fork that it runs no other thread (Python's, or native ones from
``/proc/self/task``) and refuses to fork otherwise (:class:`ThreadsAtFork`). The only exceptions
are the idle threads native libraries start for themselves at import (pyarrow's jemalloc and
pools, onnxruntime's timer, OpenBLAS's thread servers), recorded before anything is loaded
(:func:`library_threads`); a thread the loading started (a torch or ONNX Runtime intra-op pool,
the event store's checkpointer) is refused. ``--rebuild`` builds the index in a process of its own. That is why the query encoder runs ONNX Runtime
with one thread and the supervisor loads with one torch thread; a worker sets its torch threads
(``--threads``) after the fork.

``--start-method spawn`` starts each worker as a fresh interpreter
(``python -m fusionrank.serving.workers``) that runs the same :func:`load_shared_service` itself:
every worker then holds its own copy of the heap (about 0.5 GB at 44k products), which is what
the fork avoids. Ray Serve replicas (:mod:`fusionrank.serving.rayserve`) load that way too.

Either way the workers share:

- **one listening socket**: the supervisor binds the port and every worker accepts on that
  same socket (inherited), so the kernel hands each new connection to an idle worker;
- **one snapshot in memory**: the index is loaded with ``shared=True``: the embedding
  tables are numpy memory maps of the snapshot's ``.npy`` files and the IVF lists are mapped
  with faiss's ``IO_FLAG_MMAP``, so the workers share those pages instead of holding a copy each;
- **one order of writes**: ``PUT``/``DELETE`` in any worker append to the snapshot's change log
  under an exclusive ``flock`` after applying what the others appended, and every worker applies
  the log's new records before its next request
  (:meth:`~fusionrank.serving.index.SearchIndex.catch_up`): an acknowledged write is seen by
  every worker's next search (a forked worker starts from the supervisor's index and catches up
  on the whole log since the load);
- **one model**: ``POST /admin/model`` loads and checks the model in the worker that received
  it, swaps it in there and publishes it in ``service-data/workers/model.json`` (:class:`SharedModel`,
  written atomically); every worker checks that file (one ``stat``) before each request and
  swaps (load fully, then one assignment: requests in flight finish on the old model). With
  ``--registry``, every worker follows the registry (:class:`~fusionrank.serving.follow.RegistryFollower`);
  only worker 0 runs the automatic promotion gate;
- **one event store**: every worker writes searches and events to the same store (SQLite in
  WAL mode takes writers from several processes, each waiting up to its busy timeout; or
  PostgreSQL); an event may name a search another worker served (it is looked up there).

Each worker ranks one search at a time (:func:`~fusionrank.serving.http.app.searches_at_once`; the others queue in
it): the processes, not threads in one, fill the cores. Such workers allocate from one glibc malloc arena
(:func:`one_malloc_arena`, set in the supervisor before it loads, so that the workers inherit it) instead of one per
request thread, and the supervisor returns its heap's free pages before forking (:func:`release_free_heap`) and
keeps the holes left between its blocks in use (:func:`fill_heap_holes`), so that a worker allocates in pages of
its own instead of copying the supervisor's.

Worker 0 starts first, the others once it is ready (spawned, worker 0 creates the event store,
its key and archives the product vectors; forked, the supervisor did that). The supervisor
restarts a worker that dies and stops all of them on SIGINT/SIGTERM. ``GET /stats`` names, per
worker, how it started and which process loaded the model it serves. A shared index writes no
snapshots (``POST /admin/snapshot`` answers 409): run one process for that.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from ..errors import FusionrankError
from .wal import write_atomic

__all__ = ["SharedModel", "ThreadsAtFork", "START_METHODS", "default_start_method", "check_single_threaded", "library_threads",
           "shared_index", "service_config", "load_shared_service", "settle_before_fork", "start_worker_service",
           "open_shared_service", "serve_workers", "worker_main"]

MODEL_FILE = "model.json"
START_METHODS = ("fork", "spawn")


M_ARENA_MAX = -8  # glibc's mallopt parameter


def _glibc():
    """The C library if it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def one_malloc_arena() -> None:
    """Have every thread of this process allocate from glibc's main arena (a no-op without glibc).

    By default each thread that allocates gets an arena of its own (up to 8 per core), and each arena keeps what its
    thread freed (glibc raises the trim threshold to the largest block freed, and a search frees arrays of MBs): a
    forked worker whose 6 request threads took turns held 6 arenas of about 4 MB each. A worker ranks one search at
    a time (:func:`~.http.app.searches_at_once`), so its threads seldom wait for the one arena's lock. Set before the
    process loads: an arena a thread has made stays, and a forked child reuses the arenas of its parent's threads."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, 1)


def set_malloc_arenas(searches: int) -> None:
    """:func:`one_malloc_arena` if ``searches``, the searches this serving process ranks at once
    (:func:`~.http.app.searches_at_once`), is 1; else glibc's default, an arena per thread."""
    if searches == 1:
        one_malloc_arena()


def release_free_heap() -> None:
    """Return the heap's free pages to the system (``malloc_trim(0)``), in a supervisor before it forks: a page it
    keeps free is shared until a worker allocates in it, and then copied, each worker holding a copy and the
    supervisor the original."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33+): the main arena's totals in bytes."""
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


#: request sizes that take the heap's free blocks: 16 MiB halving to 2 KiB, then every 16 bytes from 1 KiB (each
#: of glibc's small size classes, and its per-thread cache's, is asked for by name)
_HOLE_SIZES = tuple(1 << b for b in range(24, 10, -1)) + tuple(range(1024, 0, -16))
_HOLES_KEPT: list[int] = []  # the blocks fill_heap_holes took: never freed


def fill_heap_holes() -> tuple[int, int] | None:
    """Take, and keep for good, every free block between blocks in use in this process's main malloc heap, in a
    supervisor that is about to fork (after :func:`release_free_heap`); returns ``(blocks, bytes)``, or None without
    glibc 2.33 (``mallinfo2``).

    A forked worker allocates first from the free blocks that its supervisor's heap holds between blocks in use:
    each block it takes copies the pages it writes, and its small allocations, spread over hundreds of such holes,
    dirty a page each. With the holes taken here, a worker's allocations come from the top of the heap, packed into
    pages of its own. The holes' pages stay returned to the system (:func:`release_free_heap` ran before), but for
    the page each block's bookkeeping is written in, which the supervisor writes once for all its workers. Measured
    (the demo's model, one worker forked from a loaded service, 400 searches): the heap written by the worker
    15.0 -> 8.5 MB, the supervisor having taken 15 MB of holes in 1,116 blocks (at 44k: 24 MB in 1,106, in 1 ms)."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2") or not hasattr(libc, "sbrk"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
    libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
    top = libc.sbrk(0) - libc.mallinfo2().keepcost  # where the heap's top free block starts: not a hole
    blocks = size_taken = 0
    for size in _HOLE_SIZES:
        while True:
            p = libc.malloc(size)
            if p is None:
                break
            if p >= top:  # from the top block (or memory-mapped): no hole of this size is left
                libc.free(p)
                break
            _HOLES_KEPT.append(p)
            blocks += 1
            size_taken += size
    return blocks, size_taken


def settle_before_fork() -> tuple[int, int] | None:
    """What a loaded supervisor does last before it forks its workers: collect, return the heap's free pages
    (:func:`release_free_heap`), take the holes left between blocks in use (:func:`fill_heap_holes`, whose result it
    returns), return what that left free at the top, then :func:`gc.freeze`: what is loaded now stays out of every
    later collection, in the supervisor and in the workers."""
    gc.collect()
    release_free_heap()
    holes = fill_heap_holes()
    release_free_heap()
    gc.freeze()
    return holes


def default_start_method() -> str:
    """``fork`` on Linux (where the supervisor can check its threads in ``/proc``), else ``spawn``."""
    return "fork" if sys.platform.startswith("linux") and hasattr(os, "fork") else "spawn"


class ThreadsAtFork(FusionrankError):
    """The supervisor runs threads besides its main one and the libraries' own idle ones, so forking workers from it is unsafe.

    Attributes: ``python_threads`` (names from :func:`threading.enumerate`) and ``native_threads``
    (``(thread id, name)`` from ``/proc/self/task``, the main thread left out).
    """

    def __init__(self, python_threads: list[str], native_threads: list[tuple[int, str]]):
        self.python_threads, self.native_threads = list(python_threads), list(native_threads)
        names = ", ".join(f"{n} ({t})" for t, n in self.native_threads) or "none"
        super().__init__(f"cannot fork the workers: besides its main thread and the libraries' own idle ones, the "
                         f"supervisor runs {len(self.native_threads)} thread(s) ({names}; Python threads: "
                         f"{', '.join(self.python_threads) or 'none'}); a lock one of them holds would stay held in every "
                         "worker. Start them with --start-method spawn")


def native_threads() -> dict[int, str]:
    """``{thread id: name}`` of this process's threads besides the main one, from ``/proc/self/task`` (empty without it)."""
    out = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for t in tasks:
        if int(t) == os.getpid():
            continue
        try:
            out[int(t)] = Path(f"/proc/self/task/{t}/comm").read_text().strip()
        except OSError:  # ended meanwhile
            continue
    return out


def library_threads() -> dict[int, str]:
    """Import the native libraries a worker uses and start the threads they keep for themselves; returns every thread
    of this process then, besides the main one: the ones :func:`check_single_threaded` accepts later.

    Importing pyarrow starts jemalloc's background thread, onnxruntime a timer thread of its own, numpy's and
    scipy's OpenBLAS a thread server each unless ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` is 1, and Arrow's CPU
    and I/O pools a thread each at their first read (capacity set to 1 here). They are idle and never hold a lock
    of fusionrank's; jemalloc, OpenBLAS and Arrow ready their state for the child at a fork (``pthread_atfork``).
    Call it before loading anything: a thread the loading starts (a torch or ONNX Runtime intra-op pool, the event
    store's checkpointer, a registry follower) must not exist when the supervisor forks.
    """
    import tempfile

    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import scipy.linalg  # noqa: F401

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    with tempfile.TemporaryDirectory() as d:
        pq.write_table(pa.table({"x": [1, 2]}), f"{d}/t.parquet")
        pd.read_parquet(f"{d}/t.parquet")  # both pools start their thread now, not while loading
    return native_threads()


def check_single_threaded(allowed: dict[int, str] | None = None) -> None:
    """Raise :class:`ThreadsAtFork` unless the calling process runs only its main thread, besides ``allowed``
    (:func:`library_threads`); any Python thread but the main one is refused."""
    python = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    native = [(t, n) for t, n in native_threads().items() if t not in (allowed or {})]
    if python or native:
        raise ThreadsAtFork(python, native)


class SharedModel:
    """The model the workers serve, in one small JSON file that each worker checks before a request."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._seen: tuple | None = None
        self._latest: dict[str, Any] | None = None

    def publish(self, model_path: str, version: str) -> None:
        """Write ``{path, version}`` atomically (:func:`~fusionrank.serving.wal.write_atomic`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"path": str(model_path), "version": version, "time": time.time(), "pid": os.getpid()}
        write_atomic(self.path, json.dumps(doc).encode("utf-8"))

    def latest(self) -> dict[str, Any] | None:
        """The published ``{path, version}`` (None if none): re-read only when the file changed (one ``stat`` otherwise)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        if stamp != self._seen:
            try:
                m = json.loads(self.path.read_text())
            except (OSError, ValueError):
                return self._latest  # replaced while reading: the next call sees the new file
            self._seen, self._latest = stamp, m
        return self._latest

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _prepare_index(index_dir: Path, log: Callable[[str], None]) -> None:
    """What a plain ``SearchIndex.load`` repairs, done once before any worker maps the folder."""
    from .index import _finish_interrupted_save
    from .wal import scan

    _finish_interrupted_save(index_dir, log)
    if not (index_dir / "index.json").exists():
        return
    scan(index_dir / "changes.jsonl", repair=True, log=log)


def shared_index(model: str | Path, index: str | Path | None, log: Callable[[str], None]):
    """``(ModelDir, index folder)`` that several processes will serve (workers, Ray Serve replicas): what a plain
    ``SearchIndex.load`` repairs is done here once, before any of them maps the folder, and a model an earlier run
    swapped in is forgotten."""
    from ..errors import StaleArtefactError
    from ..modeldir import ModelDir

    md = ModelDir.open(model)
    index_dir = Path(index) if index else md.index_dir
    _prepare_index(index_dir, log)  # a crash between a snapshot's renames leaves no index.json until recovered
    if not (index_dir / "index.json").exists():
        raise StaleArtefactError(f"{index_dir}: no search index; build it with `fusionrank index {md.path}`")
    SharedModel(index_dir.parent / "service-data" / "workers" / MODEL_FILE).clear()
    return md, index_dir


def service_config(model: str | Path, index: str | Path, threads: int = 1, randomise_share: float | None = None,
                   feature_logging: bool = True, registry: str | Path | None = None, poll: float = 1.0) -> dict:
    """What :func:`load_shared_service` and :func:`start_worker_service` read, as a JSON-able dict (a spawned worker
    gets it on its command line, a Ray Serve replica as its deployment's argument): absolute paths, the torch threads
    of each process, the share of searches randomised, feature logging, the registry followed and its poll interval."""
    return {"model": str(Path(model).resolve()), "index": str(Path(index).resolve()), "threads": int(threads),
            "randomise_share": randomise_share, "feature_logging": feature_logging,
            "registry": str(Path(registry).resolve()) if registry else None, "poll": poll}


def load_shared_service(cfg: dict, log: Callable[[str], None]):
    """The service as every worker serves it, with everything it only reads loaded: the index opened shared, the
    model (the registry's promoted version with ``cfg["registry"]``), its query understanding, the ONNX query encoder
    (one thread), the product encoder, and a warm-up search; the event store opened (created, with the product vectors
    archived). The one loading function of both start methods: the supervisor runs it before forking, a spawned worker
    (or a Ray Serve replica) runs it itself."""
    import torch  # noqa: F401  loaded here so that a forked worker inherits it
    import uvicorn  # noqa: F401

    from .build import open_service
    from .http.app import create_app  # noqa: F401  the HTTP app's modules (FastAPI, its pydantic models)

    svc = open_service(cfg["model"], cfg["index"], randomise_share=cfg["randomise_share"],
                       feature_logging=cfg["feature_logging"], registry=cfg["registry"], shared=True, query_threads=1,
                       log=log)
    return svc


def start_worker_service(svc, cfg: dict, number: int, started_by: str, log: Callable[[str], None]):
    """Make the loaded ``svc`` the service of worker ``number``: what is per process and stateful is opened here (the
    event store, if closed, without its upkeep, which the loading process did; a new random source; the
    published-model file; with a registry, the follower's thread, process 0 deciding automatic promotions)."""
    svc.worker = number
    svc.started_by = started_by
    svc.reseed()
    if svc.events is None and svc.data_dir is not None:
        svc.open_events(upkeep=False, log=log)
    svc.shared_model = SharedModel(Path(cfg["index"]).parent / "service-data" / "workers" / MODEL_FILE)
    if cfg["registry"]:
        from ..models import ModelRegistry
        from .follow import RegistryFollower

        RegistryFollower(svc, ModelRegistry.open(cfg["registry"]), cfg["poll"], log=log, auto=number == 0).start()
    return svc


def open_shared_service(cfg: dict, number: int, log):
    """The service of process ``number`` of several serving one index, loaded in this process (a spawned worker, or
    a Ray Serve replica): the index opened shared, the model followed through the published model file, and, with a
    registry, its promotions (process 0 decides automatic ones)."""
    return start_worker_service(load_shared_service(cfg, log), cfg, number, "spawn", log)


def _server(svc, admin_key: str | None, events_key: str | None, searches: int):
    """The HTTP app over ``svc`` under a loaded uvicorn server (not started), without the worker's header (each
    worker adds its own in :func:`_serve`), ranking ``searches`` at once (:func:`~.http.app.searches_at_once`). Built
    in a forking supervisor before :func:`gc.freeze`, so the workers share the app's routes, pydantic validators and
    uvicorn's protocol modules instead of each building them."""
    import uvicorn

    from .http.app import H11_MAX_INCOMPLETE_EVENT, create_app

    app = create_app(svc, admin_key, events_key, max_concurrent_searches=searches)
    config = uvicorn.Config(app, log_level="warning", http="h11", h11_max_incomplete_event_size=H11_MAX_INCOMPLETE_EVENT)
    config.load()  # imports the protocol classes and wraps the app (no socket, no loop)
    config.get_loop_factory()  # imports the event loop's module (uvloop when installed); the loop is made in the worker
    # what a worker would otherwise import at its first request (about 0.4 MB of code each): the thread pool's and
    # the lifespan's anyio backend, and the telemetry hook FastAPI's lifespan looks up
    importlib.import_module("anyio._backends._asyncio")
    with contextlib.suppress(ImportError):  # present in the pinned FastAPI, not in every version
        importlib.import_module("fastapi.telemetry._runtime")
    return uvicorn.Server(config)


def _serve(svc, number: int, sock: socket.socket, ready_fd: int, admin_key: str | None, events_key: str | None,
           log: Callable[[str], None], server) -> None:
    """Serve ``svc`` on ``sock`` until SIGINT/SIGTERM (uvicorn's handlers), after telling the supervisor on ``ready_fd``;
    ``server``: the :func:`_server` (built before the fork, or in a spawned worker); this worker's header is added here."""
    import faulthandler

    from .http.app import WorkerHeader

    faulthandler.enable(all_threads=True)  # a worker that crashes in native code says where (the supervisor restarts it)
    server.config.app.add_middleware(WorkerHeader, worker=number)  # before its first request builds the stack
    log(f"serving {len(svc.index):,} products with model {svc.model.version} (pid {os.getpid()})")  # before the
    try:  # supervisor, once every worker is ready, prints the address on the same stdout
        with os.fdopen(ready_fd, "w") as f:
            f.write(f"ready {number} {os.getpid()}\n")
    except BrokenPipeError:  # the supervisor stopped waiting: serve anyway
        pass
    try:
        server.run(sockets=[sock])
    finally:
        svc.close()


def _worker_log(number: int) -> Callable[[str], None]:
    def log(msg: str) -> None:
        # one write per line: unbuffered (PYTHONUNBUFFERED), print() writes the text and its newline apart, and a line
        # of another process sharing the stdout (the supervisor's address) could land between them
        sys.stdout.write(f"[worker {number}] {msg}\n")
        sys.stdout.flush()
    return log


class _Forked:
    """A forked worker, behind the part of :class:`subprocess.Popen`'s interface the supervisor uses."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)  # -N: ended by signal N, as Popen says it
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _fork_worker(svc, cfg: dict, number: int, sock: socket.socket, admin_key: str, events_key: str,
                 allowed: dict[int, str], server) -> tuple[_Forked, int]:
    """Fork worker ``number`` from this loaded process, which runs no thread but ``allowed`` (:func:`library_threads`);
    returns it and the read end of its readiness pipe."""
    check_single_threaded(allowed)
    sys.stdout.flush()  # or the child would write what is buffered here a second time
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        return _Forked(pid), r
    code = 1  # the child: never returns into the supervisor's code
    try:
        os.close(r)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # not the supervisor's handlers (uvicorn sets its own)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        import torch

        torch.set_num_threads(int(cfg["threads"]))  # its pool, if more than one thread, is created in this process
        log = _worker_log(number)
        start_worker_service(svc, cfg, number, "fork", log)
        _serve(svc, number, sock, w, admin_key, events_key, log, server)
        code = 0
    except KeyboardInterrupt:
        code = 0
    except BaseException:  # noqa: BLE001 - reported, then the process ends
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # neither the supervisor's finally blocks nor its atexit handlers run here


def serve_workers(model: Path, workers: int, host: str = "127.0.0.1", port: int = 8000, index: Path | None = None,
                  admin_key: str | None = None, events_key: str | None = None, threads: int = 1,
                  randomise_share: float | None = None, feature_logging: bool = True, registry: Path | None = None,
                  poll: float = 1.0, on_ready: Callable[[str], None] | None = None, log: Callable[[str], None] = print,
                  start_method: str | None = None) -> int:
    """Start ``workers`` worker processes on one socket and supervise them until SIGINT/SIGTERM; returns the exit code.

    ``start_method``: ``fork`` (load once here, then fork the workers) or ``spawn`` (each worker a new interpreter that
    loads everything itself); default :func:`default_start_method`.
    """
    import secrets

    if workers < 1:
        raise FusionrankError(f"--workers must be at least 1 (got {workers})")
    start_method = start_method or default_start_method()
    if start_method not in START_METHODS:
        raise FusionrankError(f"unknown start method {start_method!r}; valid: {', '.join(START_METHODS)}")
    if start_method == "fork" and not hasattr(os, "fork"):
        raise FusionrankError("--start-method fork needs os.fork (Linux); use --start-method spawn")
    from .http.app import listen, searches_at_once

    searches = searches_at_once(workers)  # each worker's
    if start_method == "fork":  # first: the workers inherit it, and the arenas of the threads the supervisor runs
        set_malloc_arenas(searches)  # before the fork
    allowed = library_threads() if start_method == "fork" else {}  # first: before anything here reads a file with Arrow
    md, index_dir = shared_index(model, index, log)
    admin_key = admin_key or secrets.token_urlsafe(24)
    events_key = events_key or secrets.token_urlsafe(16)
    args = {**service_config(md.path, index_dir, threads, randomise_share, feature_logging, registry, poll),
            "host": host, "port": port, "workers": workers}
    sock = listen(host, port)
    sock.set_inheritable(True)  # the workers accept on it
    procs: dict[int, Any] = {}  # worker number -> subprocess.Popen (spawn) or _Forked
    stopping = False
    svc = server = None
    t0 = time.perf_counter()
    try:
        if start_method == "fork":
            import torch

            torch.set_num_threads(1)  # no intra-op pool in the supervisor; each worker sets its own after the fork
            svc = load_shared_service(args, lambda m: log(f"supervisor: {m}"))
            svc.close_events()  # a connection and a checkpointer thread are per process: each worker opens its own
            server = _server(svc, admin_key, events_key, searches)  # the app and uvicorn's modules, shared by the workers
            holes = settle_before_fork()
            check_single_threaded(allowed)
            log(f"loaded in {time.perf_counter() - t0:.1f} s (pid {os.getpid()}; besides the main thread only the "
                f"libraries' own {len(allowed)}: {', '.join(sorted(allowed.values()))}"
                + (f"; {holes[1] / 2**20:.0f} MB of free heap between blocks in use taken in {holes[0]:,} blocks"
                   if holes else "") + f"); forking {workers} workers")
        else:
            env = {**os.environ, "FUSIONRANK_ADMIN_KEY": admin_key, "FUSIONRANK_EVENTS_KEY": events_key,
                   "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
                   "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", str(threads))}
    except BaseException:
        sock.close()
        if svc is not None:
            svc.close()
        raise

    def start(i: int) -> int:
        """Start worker ``i``; returns the read end of its readiness pipe."""
        if start_method == "fork":
            procs[i], r = _fork_worker(svc, args, i, sock, admin_key, events_key, allowed, server)
            return r
        r, w = os.pipe()
        procs[i] = subprocess.Popen([sys.executable, "-m", "fusionrank.serving.workers", "--worker", str(i),
                                     "--fd", str(sock.fileno()), "--ready-fd", str(w), "--args", json.dumps(args)],
                                    pass_fds=(sock.fileno(), w), env=env)
        os.close(w)
        return r

    def wait_ready(i: int, r: int) -> None:
        with os.fdopen(r) as f:
            line = f.readline()  # empty when the worker died before it was ready
        if not line.startswith("ready"):
            raise FusionrankError(f"worker {i} exited with code {procs[i].wait()} before it was ready (its messages are above)")

    def stop(*_):
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        wait_ready(0, start(0))  # first alone: spawned, it creates the event store and its key, archives the product vectors
        for i, r in [(i, start(i)) for i in range(1, workers)]:
            wait_ready(i, r)
        log(f"{workers} workers ready in {time.perf_counter() - t0:.1f} s ({start_method}; "
            f"pids {', '.join(str(p.pid) for p in procs.values())})")
        if on_ready is not None:
            on_ready(f"http://{host}:{port}/")
        while not stopping:
            time.sleep(0.2)
            for i, p in list(procs.items()):
                if p.poll() is not None and not stopping:
                    log(f"worker {i} (pid {p.pid}) exited with code {p.returncode}; starting it again")
                    try:
                        wait_ready(i, start(i))
                        log(f"worker {i} serves again (pid {procs[i].pid})")
                    except ThreadsAtFork:
                        raise
                    except FusionrankError as e:
                        log(f"{e}; trying again in 1 s")
                        time.sleep(1)
        return 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + 30
        for p in procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        sock.close()
        if svc is not None:
            svc.close()
        for s, h in old.items():
            signal.signal(s, h)


def worker_main(argv: list[str] | None = None) -> None:
    """One spawned worker process (started by :func:`serve_workers`; not meant to be run by hand)."""
    ap = argparse.ArgumentParser(prog="python -m fusionrank.serving.workers")
    ap.add_argument("--worker", type=int, required=True)
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--ready-fd", type=int, required=True)
    ap.add_argument("--args", required=True)
    a = ap.parse_args(argv)
    cfg = json.loads(a.args)
    from ..settings import get_settings
    from .http.app import searches_at_once

    searches = searches_at_once(int(cfg["workers"]))
    set_malloc_arenas(searches)
    import torch

    torch.set_num_threads(int(cfg["threads"]))
    log = _worker_log(a.worker)
    svc = open_shared_service(cfg, a.worker, log)
    st = get_settings()
    admin_key = st.admin_key.get_secret_value() if st.admin_key else None
    events_key = st.events_key.get_secret_value() if st.events_key else None
    _serve(svc, a.worker, socket.socket(fileno=a.fd), a.ready_fd, admin_key, events_key, log,
           _server(svc, admin_key, events_key, searches))


if __name__ == "__main__":
    worker_main()
