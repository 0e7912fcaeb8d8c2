"""The HTTP layer: a thin FastAPI app over :class:`~fusionrank.serving.service.SearchService`.

Endpoints (OpenAPI at ``/openapi.json``, docs at ``/docs``)::

    GET    /                      the search page
    GET    /search?q=&k=&category=  ranked products with scores and per-modality contributions
    GET    /products/{id}         one product; /products/{id}/image and /audio stream its media
    PUT    /products/{id}         add or replace a product            (admin key)
    DELETE /products/{id}         remove a product                     (admin key)
    POST   /events                impressions / clicks / add-to-cart / purchases, batched  (events or admin key)
    POST   /admin/model           swap in another model directory      (admin key)
    POST   /admin/snapshot        write the index snapshot now         (admin key)
    GET    /healthz, /stats, /metrics (Prometheus)

Keys travel in the ``X-API-Key`` header. The events key is meant for browsers (the
page embeds it); it can only post events, for searches this service issued, at a
limited rate per client (429 beyond it). A URL longer than 8 KiB gets 414. Bad input gets a 4xx whose ``detail`` is
one readable sentence naming the parameter.
"""
from __future__ import annotations

import secrets
import socket
import threading
from typing import Callable

import anyio
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from ...errors import FusionrankError
from ..service import SearchService
from .deps import RateLimiter
from .errors import EXCEPTION_HANDLERS
from .metrics import Metrics, ObserveRequests
from .routes import api_router

MAX_URL_BYTES = 8192
H11_MAX_INCOMPLETE_EVENT = 256 * 1024  # request line + headers uvicorn buffers, so a long URL reaches LimitUrl
# every server here names http="h11": with uvicorn[standard] installed (ray[serve] brings it) uvicorn would pick
# httptools, which ignores this limit. Under Ray Serve the HTTP parsing is Ray's proxy's.


class LimitUrl:
    """414 for a path + query longer than ``MAX_URL_BYTES`` (instead of a reset or a 422 deep in validation)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_URL_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            n = len(scope.get("raw_path") or scope.get("path", "").encode()) + len(scope.get("query_string") or b"")
            if n > self.max_bytes:
                body = b'{"detail":"URL too long: at most %d bytes of path and query"}' % self.max_bytes
                await send({"type": "http.response.start", "status": 414,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class WorkerHeader:
    """``X-Fusionrank-Worker: <n>`` on every response of worker ``n`` (``fusionrank serve --workers``)."""

    def __init__(self, app: ASGIApp, worker: int):
        self.app, self.value = app, str(worker).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tagged(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-fusionrank-worker", self.value)]}
            await send(message)

        await self.app(scope, receive, tagged)


#: searches one process ranks at once, the rest queueing (their Python stages hold the GIL, so more at once only
#: contend for it): alone, a process ranks two, one search's GIL-free stages (ONNX, faiss, torch) overlapping the
#: other's Python; one of several (a worker, a Ray Serve replica) ranks one, and the processes fill the cores.
#: Measured at 44k products on 2 cores, 8 clients (benchmarks/results/workers_44k.md): one process 137 requests/s
#: ranking two at once, 124 one at a time; two workers ranking one at a time each 240 (1.75x), where two workers of
#: the code before, two at a time each, gave 200 (workers_44k_base.md).
SEARCHES_AT_ONCE = {"alone": 2, "one of several": 1}


def searches_at_once(processes: int = 1) -> int:
    """Searches one of ``processes`` serving processes ranks at once: ``FUSIONRANK_SEARCH_CONCURRENCY``
    (``serve --search-concurrency``) if set, else :data:`SEARCHES_AT_ONCE`."""
    from ...settings import get_settings

    given = get_settings().search_concurrency
    return given or SEARCHES_AT_ONCE["alone" if processes == 1 else "one of several"]


def create_app(service: SearchService, admin_key: str | None = None, events_key: str | None = None,
               max_concurrent_searches: int | None = None, events_rate: float | None = None,
               events_burst: int | None = None, worker: int | None = None) -> FastAPI:
    """The FastAPI app over ``service``; this module's docstring is its OpenAPI description.

    A missing key is generated at random (the page embeds the events key; the admin
    key is then unknown to anyone). At most ``max_concurrent_searches`` searches rank
    at once (default: :func:`searches_at_once` of one process); the rest queue instead of
    contending for the GIL.
    """
    app = FastAPI(title="fusionrank search", version="1", description=__doc__, exception_handlers=EXCEPTION_HANDLERS)
    app.state.service = service
    app.state.admin_key = admin_key or secrets.token_urlsafe(24)
    app.state.events_key = events_key or secrets.token_urlsafe(16)
    app.state.searches_at_once = max_concurrent_searches or searches_at_once()
    app.state.search_gate = anyio.CapacityLimiter(app.state.searches_at_once)
    app.state.metrics = Metrics(service)
    if events_rate is None or events_burst is None:
        from ...settings import get_settings

        st = get_settings()
        events_rate = st.events_rate if events_rate is None else events_rate
        events_burst = st.events_burst if events_burst is None else events_burst
    app.state.events_limiter = RateLimiter(events_rate, events_burst)
    app.add_middleware(ObserveRequests, metrics=app.state.metrics)
    app.add_middleware(LimitUrl)
    if worker is not None:
        app.add_middleware(WorkerHeader, worker=worker)
    app.include_router(api_router)
    return app


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``, not yet listening: it holds the port (connections are still refused) while
    the service loads. A clear error if the port is taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart right after a stop works
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise FusionrankError(f"cannot listen on {host}:{port} ({e.strerror}); pass --port or stop what uses it") from None
    return sock


def listen(host: str, port: int) -> socket.socket:
    """A :func:`bind` socket, listening: connections made from now on wait in its backlog until the server accepts
    them, so an address announced after this call is never refused."""
    sock = bind(host, port)
    sock.listen(2048)
    return sock


def serve(service: SearchService, host: str = "127.0.0.1", port: int = 8000, admin_key: str | None = None,
          events_key: str | None = None, log=print, on_ready: Callable[[str], None] | None = None,
          sock: socket.socket | None = None) -> None:
    """Run :func:`create_app` under uvicorn until interrupted, on ``sock`` (a :func:`bind` socket for ``host:port``,
    bound before loading so that a taken port fails first) or one bound here. The socket listens before the address
    is logged and ``on_ready(url)`` called, so a client that connects as soon as it reads the address is served, not
    refused."""
    import uvicorn

    sock = sock or bind(host, port)
    sock.listen(2048)
    try:
        app = create_app(service, admin_key, events_key)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", http="h11",
                                               h11_max_incomplete_event_size=H11_MAX_INCOMPLETE_EVENT))
        url = f"http://{host}:{port}/"
        log(f"fusionrank search on {url}  ({len(service.index):,} products, model {service.model.version})")
        if on_ready is not None:
            on_ready(url)
        server.run(sockets=[sock])
    finally:
        sock.close()


class BackgroundServer:
    """:func:`create_app` under uvicorn in a daemon thread (``with BackgroundServer(...) as srv: srv.url``)."""

    def __init__(self, service: SearchService, host: str = "127.0.0.1", port: int = 0, admin_key: str | None = None,
                 events_key: str | None = None):
        import uvicorn

        self.app = create_app(service, admin_key, events_key)
        self.sock = listen(host, port)  # port 0: the system picks a free one, held from here on (no bind, close, bind)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", http="h11",
                                                    h11_max_incomplete_event_size=H11_MAX_INCOMPLETE_EVENT))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="http",
                                       daemon=True)

    def __enter__(self) -> "BackgroundServer":
        import time

        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > 30:
                raise RuntimeError(f"the HTTP server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
