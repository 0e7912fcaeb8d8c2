"""The Prometheus metrics of one app: its registry, the instruments handlers update, and the request middleware.

Each app gets its own :class:`~prometheus_client.CollectorRegistry`, so two apps in
one process (tests, or a blue/green swap) never share or double-register counters.
"""
from __future__ import annotations

import time
from collections.abc import Iterable

from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..service import STAGES, SearchService

REQUEST_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5)
STAGE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)


class Metrics:
    """The ``fusionrank_*`` series of one app over one service.

    Request counts and latency come from :class:`ObserveRequests`, per-stage search
    latency from the service's ``stage_observer`` hook, index size and query-cache
    counters are read from the service at scrape time, and event and model-swap
    counts are reported by their handlers.
    """

    def __init__(self, service: SearchService):
        self.registry = reg = CollectorRegistry()
        self.requests = Counter("fusionrank_requests_total", "HTTP requests", ["endpoint", "method", "status"], registry=reg)
        self.latency = Histogram("fusionrank_request_seconds", "HTTP request latency", ["endpoint", "method"],
                                 buckets=REQUEST_BUCKETS, registry=reg)
        self.stage = Histogram("fusionrank_search_stage_seconds", "search latency per stage", ["stage"],
                               buckets=STAGE_BUCKETS, registry=reg)
        Gauge("fusionrank_index_products", "products in the index", registry=reg).set_function(
            lambda: len(service.index))
        Gauge("fusionrank_query_cache_hits", "query embeddings served from the cache", registry=reg).set_function(
            lambda: service.queries.hits)
        Gauge("fusionrank_query_cache_misses", "query embeddings computed", registry=reg).set_function(
            lambda: service.queries.misses)
        self.swaps = Counter("fusionrank_model_swaps_total", "model swaps", registry=reg)
        self.model_info = Gauge("fusionrank_model_info", "the model serving requests (value 1)", ["version"], registry=reg)
        self.model_info.labels(service.model.version).set(1)
        self.events = Counter("fusionrank_events_total", "events accepted", ["type"], registry=reg)
        for s in STAGES:
            self.stage.labels(s)
        service.stage_observer = self.observe_stage
        service.swap_observer = self.model_swapped  # every swap: POST /admin/model and the registry follower

    def observe_stage(self, name: str, seconds: float) -> None:
        self.stage.labels(name).observe(seconds)

    def events_accepted(self, events: Iterable[dict]) -> None:
        for e in events:
            self.events.labels(e["type"]).inc()

    def model_swapped(self, old_version: str, new_version: str) -> None:
        """Count the swap and move the ``fusionrank_model_info`` series to the new version (exactly one stays)."""
        self.swaps.inc()
        if old_version != new_version:
            self.model_info.remove(old_version)
        self.model_info.labels(new_version).set(1)

    def exposition(self) -> Response:
        """The registry in the Prometheus text format."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class ObserveRequests:
    """Pure ASGI middleware (BaseHTTPMiddleware costs ~1 ms a request): counts and latency per route.

    Requests are labelled with the matched route's path template (``/products/{product_id}``),
    or ``unmatched``, so the label set stays bounded whatever paths clients send.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint, scope["method"]).observe(time.perf_counter() - t0)
