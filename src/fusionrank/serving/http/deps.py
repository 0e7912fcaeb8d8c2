"""Dependencies of the route handlers, as ``Annotated`` aliases: the service, the metrics, the search
concurrency gate, the events key the page embeds, and the two API-key checks.

Everything an app holds lives on ``app.state`` (set by :func:`~fusionrank.serving.http.app.create_app`);
handlers reach it only through these aliases. The getters are ``async`` so resolving
them costs no thread-pool hop.
"""
from __future__ import annotations

import secrets
import threading
import time
from typing import Annotated

import anyio
from fastapi import Depends, Header, HTTPException, Request

from ..service import SearchService
from .metrics import Metrics


async def get_service(request: Request) -> SearchService:
    return request.app.state.service


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_search_gate(request: Request) -> anyio.CapacityLimiter:
    return request.app.state.search_gate


async def get_events_key(request: Request) -> str:
    return request.app.state.events_key


def _presented(x_api_key: str | None) -> bytes:
    if not x_api_key:
        raise HTTPException(401, "missing API key: send it in the X-API-Key header")
    return x_api_key.encode()


async def require_admin_key(request: Request,
                            x_api_key: Annotated[str | None, Header(description="admin key")] = None) -> None:
    """401 without a key, 403 unless it is the admin key."""
    if not secrets.compare_digest(_presented(x_api_key), request.app.state.admin_key.encode()):
        raise HTTPException(403, "invalid API key for this endpoint (admin key required)")


class RateLimiter:
    """A token bucket per client address: ``rate`` requests a second, ``burst`` at once; bounded memory."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000):
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        with self.lock:
            tokens, t = self.buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - t) * self.rate)
            ok = tokens >= 1.0
            self.buckets[client] = (tokens - 1.0 if ok else tokens, now)
            if len(self.buckets) > self.max_clients:  # forget the full (idle) buckets first, then the oldest
                full = [k for k, (tk, ts) in self.buckets.items() if tk + (now - ts) * self.rate >= self.burst]
                for k in full or list(self.buckets)[: len(self.buckets) // 2]:
                    self.buckets.pop(k, None)
            return ok


def is_admin(request: Request, x_api_key: str | None) -> bool:
    return bool(x_api_key) and secrets.compare_digest(x_api_key.encode(), request.app.state.admin_key.encode())


async def require_events_key(request: Request,
                             x_api_key: Annotated[str | None, Header(description="events key or admin key")] = None) -> str:
    """401 without a key, 403 unless it is the events key or the admin key; 429 when an events-key client sends too fast.

    Returns ``"admin"`` or ``"events"``.
    """
    key, state = _presented(x_api_key), request.app.state
    if secrets.compare_digest(key, state.admin_key.encode()):
        return "admin"
    if not secrets.compare_digest(key, state.events_key.encode()):
        raise HTTPException(403, "invalid API key for /events")
    client = request.client.host if request.client else "-"
    if not state.events_limiter.allow(client):
        raise HTTPException(429, "too many event requests from this client; retry in a second", headers={"Retry-After": "1"})
    return "events"


ServiceDep = Annotated[SearchService, Depends(get_service)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
SearchGateDep = Annotated[anyio.CapacityLimiter, Depends(get_search_gate)]
EventsKeyDep = Annotated[str, Depends(get_events_key)]
AdminKeyRequired = Annotated[None, Depends(require_admin_key)]
EventsKeyRequired = Annotated[str, Depends(require_events_key)]
