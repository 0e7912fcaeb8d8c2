"""``fusionrank serve --engine ray --replicas N``: the same service as a Ray Serve application.

Each replica is a whole :class:`~fusionrank.serving.service.SearchService` behind the one FastAPI app
(:func:`~fusionrank.serving.http.app.create_app`, built in the replica); Ray Serve's proxy takes the
HTTP requests and routes each to a replica. The replicas keep the guarantees of
``fusionrank serve --workers`` (:mod:`fusionrank.serving.workers`), by the same means:

- **one order of writes**: every replica loads the index folder with ``shared=True`` and follows its
  change log: a ``PUT``/``DELETE`` appends under an exclusive ``flock`` after applying what the others
  appended, and every replica applies the log's new records before its next request. An acknowledged
  write is seen by every replica's next search. The replicas must therefore see one file system: one
  machine, or a folder every node mounts (the log's ``flock`` must work across them);
- **one model**: a swap (``POST /admin/model``, or the registry follower) is published in
  ``service-data/workers/model.json`` and every replica swaps before its next request; a request reads
  the model once, so a search never mixes two models;
- **one event store** (SQLite in WAL mode on that file system, or PostgreSQL).

As with workers, replica 0 starts alone first (it creates the event store and its key and archives
the product vectors), then the deployment is scaled to ``N``. Every response names the replica that
served it (``X-Fusionrank-Worker``, its rank). ``--ray-address`` joins an existing cluster (its nodes
need fusionrank installed); without it a local Ray runtime is started, and stopped at the end.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import FusionrankError

__all__ = ["SearchReplica", "serve_ray", "APP_NAME"]

APP_NAME = "fusionrank"


class SearchReplica:
    """One Ray Serve replica: a shared-index :class:`SearchService` and the FastAPI app over it.

    Ray Serve calls :meth:`__serve_build_asgi_app__` after the constructor (``serve.ingress()`` without an app).
    """

    def __init__(self, cfg: dict[str, Any]):
        import torch

        from ray import serve

        from .http.app import create_app, searches_at_once
        from .workers import open_shared_service, set_malloc_arenas

        searches = searches_at_once(int(cfg["replicas"]))
        set_malloc_arenas(searches)
        torch.set_num_threads(int(cfg["threads"]))
        ctx = serve.get_replica_context()
        rank = getattr(ctx, "rank", None)
        self.rank = getattr(rank, "rank", rank) if rank is not None else ctx.replica_id.unique_id
        name = f"replica {self.rank}"

        def log(msg: str) -> None:
            print(f"[{name}] {msg}", flush=True)

        svc = open_shared_service(cfg, self.rank, log)
        self.service = svc
        self.http_app = create_app(svc, cfg["admin_key"], cfg["events_key"], worker=self.rank,  # (Ray Serve owns `app`)
                                   max_concurrent_searches=searches)
        log(f"serving {len(svc.index):,} products with model {svc.model.version} (pid {os.getpid()})")

    def __serve_build_asgi_app__(self):
        return self.http_app


def deployment(replicas: int, num_cpus: float = 1.0):
    """The Ray Serve deployment of :class:`SearchReplica` (``replicas`` copies, ``num_cpus`` each)."""
    from ray import serve

    return serve.deployment(serve.ingress()(SearchReplica), name="search", num_replicas=replicas,
                            ray_actor_options={"num_cpus": num_cpus}, health_check_period_s=10,
                            health_check_timeout_s=60, graceful_shutdown_timeout_s=20)


def start(model: Path, replicas: int, address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          index: Path | None = None, admin_key: str | None = None, events_key: str | None = None, threads: int = 1,
          randomise_share: float | None = None, feature_logging: bool = True, registry: Path | None = None,
          poll: float = 1.0, num_cpus: float = 1.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start the application (replica 0 alone, then all ``replicas``); returns ``{url, started_ray}``.

    Stop it with :func:`stop`.
    """
    import secrets

    from ray import serve

    from ..engine import ray_runtime
    from .workers import service_config, shared_index

    if replicas < 1:
        raise FusionrankError(f"--replicas must be at least 1 (got {replicas})")
    md, index_dir = shared_index(model, index, log)
    cfg = {**service_config(md.path, index_dir, threads, randomise_share, feature_logging, registry, poll),
           "admin_key": admin_key or secrets.token_urlsafe(24), "events_key": events_key or secrets.token_urlsafe(16),
           "replicas": replicas}  # the same for replica 0 alone and for all: Ray Serve then only adds replicas
    env = {k: v for k, v in os.environ.items() if k.startswith("FUSIONRANK_") and k not in ("FUSIONRANK_ADMIN_KEY",
                                                                                           "FUSIONRANK_EVENTS_KEY")}
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    _, started_ray = ray_runtime(address, max(os.cpu_count() or 1, int(replicas * num_cpus + 0.999)), env_vars=env,
                                 log_to_driver=True)
    t0 = time.perf_counter()
    serve.start(http_options={"host": host, "port": port})
    dep = deployment(1, num_cpus)
    serve.run(dep.bind(cfg), name=APP_NAME, route_prefix="/")  # replica 0 first: it creates the event store
    if replicas > 1:
        serve.run(dep.options(num_replicas=replicas).bind(cfg), name=APP_NAME, route_prefix="/")
    log(f"Ray Serve: {replicas} replica(s) ready in {time.perf_counter() - t0:.1f} s")
    return {"url": f"http://{host}:{port}/", "started_ray": started_ray, "admin_key": cfg["admin_key"]}


def stop(started_ray: bool) -> None:
    """Delete the application, stop Serve, and the Ray runtime if :func:`start` started it."""
    import ray
    from ray import serve

    try:
        serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        if started_ray:
            ray.shutdown()


def serve_ray(model: Path, replicas: int, address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
              index: Path | None = None, admin_key: str | None = None, events_key: str | None = None, threads: int = 1,
              randomise_share: float | None = None, feature_logging: bool = True, registry: Path | None = None,
              poll: float = 1.0, on_ready: Callable[[str], None] | None = None, log: Callable[[str], None] = print) -> int:
    """Run the application until SIGINT/SIGTERM; returns the exit code."""
    stopping = False

    def stop_signal(*_):
        nonlocal stopping
        stopping = True

    run = start(model, replicas, address, host, port, index, admin_key, events_key, threads, randomise_share,
                feature_logging, registry, poll, log=log)
    old = {s: signal.signal(s, stop_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if on_ready is not None:
            on_ready(run["url"])
        while not stopping:
            time.sleep(0.2)
        return 0
    finally:
        stop(run["started_ray"])
        for s, h in old.items():
            signal.signal(s, h)
