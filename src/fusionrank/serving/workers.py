"""``fusionrank serve --workers N``: N processes serve one index snapshot on one port.

The Python stages of a search hold the GIL, so one process uses about one core. Here the
starting process (the supervisor) prepares, then starts N worker processes, each a whole
:class:`~fusionrank.serving.service.SearchService` under uvicorn:

- **one listening socket**: the supervisor binds the port and every worker accepts on that
  same socket (inherited), so the kernel hands each new connection to an idle worker;
- **one snapshot in memory**: each worker loads the index with ``shared=True``: the embedding
  tables are numpy memory maps of the snapshot's ``.npy`` files and the IVF lists are mapped
  with faiss's ``IO_FLAG_MMAP``, so the workers share those pages instead of holding a copy each;
- **one order of writes**: ``PUT``/``DELETE`` in any worker append to the snapshot's change log
  under an exclusive ``flock`` after applying what the others appended, and every worker applies
  the log's new records before its next request
  (:meth:`~fusionrank.serving.index.SearchIndex.catch_up`): an acknowledged write is seen by
  every worker's next search;
- **one model**: ``POST /admin/model`` loads and checks the model in the worker that received
  it, swaps it in there and publishes it in ``service-data/workers/model.json`` (:class:`SharedModel`,
  written atomically); every worker checks that file (one ``stat``) before each request and
  swaps (load fully, then one assignment: requests in flight finish on the old model). With
  ``--registry``, every worker follows the registry (:class:`~fusionrank.serving.follow.RegistryFollower`);
  only worker 0 runs the automatic promotion gate;
- **one event store**: every worker writes searches and events to the same store (SQLite in
  WAL mode takes writers from several processes, each waiting up to its busy timeout; or
  PostgreSQL); an event may name a search another worker served (it is looked up there).

Worker 0 starts first (it repairs nothing, but it creates the event store, its key and archives
the product vectors); the others start once it is ready. The supervisor restarts a worker that
dies and stops all of them on SIGINT/SIGTERM. A shared index writes no snapshots
(``POST /admin/snapshot`` answers 409): run one process for that.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import FusionrankError

__all__ = ["SharedModel", "serve_workers", "worker_main"]

MODEL_FILE = "model.json"


class SharedModel:
    """The model the workers serve, in one small JSON file that each worker checks before a request."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._seen: tuple | None = None
        self._latest: dict[str, Any] | None = None

    def publish(self, model_path: str, version: str) -> None:
        """Write ``{path, version}`` atomically (temporary file, fsync, rename)."""
        from .wal import fsync_dir

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump({"path": str(model_path), "version": version, "time": time.time(), "pid": os.getpid()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)

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


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise FusionrankError(f"cannot listen on {host}:{port} ({e.strerror}); pass --port or stop what uses it") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve_workers(model: Path, workers: int, host: str = "127.0.0.1", port: int = 8000, index: Path | None = None,
                  admin_key: str | None = None, events_key: str | None = None, threads: int = 1,
                  randomise_share: float | None = None, feature_logging: bool = True, registry: Path | None = None,
                  poll: float = 1.0, on_ready: Callable[[str], None] | None = None, log: Callable[[str], None] = print) -> int:
    """Start ``workers`` worker processes on one socket and supervise them until SIGINT/SIGTERM; returns the exit code."""
    import secrets

    from ..errors import StaleArtefactError
    from ..modeldir import ModelDir

    if workers < 1:
        raise FusionrankError(f"--workers must be at least 1 (got {workers})")
    md = ModelDir.open(model)
    index_dir = Path(index) if index else md.index_dir
    if not (index_dir / "index.json").exists():
        _prepare_index(index_dir, log)  # a crash between a snapshot's renames leaves no index.json until recovered
        if not (index_dir / "index.json").exists():
            raise StaleArtefactError(f"{index_dir}: no search index; build it with `fusionrank index {md.path}`")
    _prepare_index(index_dir, log)
    data_dir = index_dir.parent / "service-data"
    SharedModel(data_dir / "workers" / MODEL_FILE).clear()  # a model swapped in an earlier run is not this run's
    sock = _listen(host, port)
    admin_key = admin_key or secrets.token_urlsafe(24)
    events_key = events_key or secrets.token_urlsafe(16)
    env = {**os.environ, "FUSIONRANK_ADMIN_KEY": admin_key, "FUSIONRANK_EVENTS_KEY": events_key,
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
           "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", str(threads))}
    args = {"model": str(md.path), "index": str(index_dir), "threads": threads, "randomise_share": randomise_share,
            "feature_logging": feature_logging, "registry": str(registry) if registry else None, "poll": poll,
            "host": host, "port": port, "workers": workers}
    procs: dict[int, subprocess.Popen] = {}
    stopping = False

    def start(i: int) -> int:
        """Start worker ``i``; returns the read end of its readiness pipe."""
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
        t0 = time.perf_counter()
        wait_ready(0, start(0))  # first alone: it creates the event store and its key, archives the product vectors
        for i, r in [(i, start(i)) for i in range(1, workers)]:
            wait_ready(i, r)
        log(f"{workers} workers ready in {time.perf_counter() - t0:.1f} s "
            f"(pids {', '.join(str(p.pid) for p in procs.values())})")
        if on_ready is not None:
            on_ready(f"http://{host}:{port}/")
        while not stopping:
            time.sleep(0.2)
            for i, p in list(procs.items()):
                if p.poll() is not None and not stopping:
                    log(f"worker {i} (pid {p.pid}) exited with code {p.returncode}; starting it again")
                    os.close(start(i))
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
        for s, h in old.items():
            signal.signal(s, h)


def open_shared_service(cfg: dict, number: int, log):
    """The service of process ``number`` of several serving one index (a worker, or a Ray Serve replica): the index
    opened shared, the model followed through the published model file, and, with a registry, its promotions (process
    0 decides automatic ones)."""
    from .build import open_service

    svc = open_service(cfg["model"], cfg["index"], randomise_share=cfg["randomise_share"],
                       feature_logging=cfg["feature_logging"], registry=cfg["registry"], shared=True, log=log)
    svc.worker = number
    svc.shared_model = SharedModel(Path(cfg["index"]).parent / "service-data" / "workers" / MODEL_FILE)
    if cfg["registry"]:
        from ..models import ModelRegistry
        from .follow import RegistryFollower

        RegistryFollower(svc, ModelRegistry.open(cfg["registry"]), cfg["poll"], log=log, auto=number == 0).start()
    return svc


def worker_main(argv: list[str] | None = None) -> None:
    """One worker process (started by :func:`serve_workers`; not meant to be run by hand)."""
    ap = argparse.ArgumentParser(prog="python -m fusionrank.serving.workers")
    ap.add_argument("--worker", type=int, required=True)
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--ready-fd", type=int, required=True)
    ap.add_argument("--args", required=True)
    a = ap.parse_args(argv)
    cfg = json.loads(a.args)
    import torch
    import uvicorn

    from ..settings import get_settings
    from .build import open_service
    from .http.app import H11_MAX_INCOMPLETE_EVENT, create_app

    torch.set_num_threads(int(cfg["threads"]))
    name = f"worker {a.worker}"

    def log(msg: str) -> None:
        print(f"[{name}] {msg}", flush=True)

    svc = open_shared_service(cfg, a.worker, log)
    st = get_settings()
    app = create_app(svc, st.admin_key.get_secret_value() if st.admin_key else None,
                     st.events_key.get_secret_value() if st.events_key else None, worker=a.worker)
    sock = socket.socket(fileno=a.fd)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", http="h11", h11_max_incomplete_event_size=H11_MAX_INCOMPLETE_EVENT))
    with os.fdopen(a.ready_fd, "w") as f:
        f.write(f"ready {a.worker} {os.getpid()}\n")
    log(f"serving {len(svc.index):,} products with model {svc.model.version} (pid {os.getpid()})")
    server.run(sockets=[sock])
    svc.close()


if __name__ == "__main__":
    worker_main()
