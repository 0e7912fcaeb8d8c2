"""Dependencies of the route handlers, as ``Annotated`` aliases: the service, the metrics, the search
concurrency gate, the events key the page embeds, and the two API-key checks.

Everything an app holds lives on ``app.state`` (set by :func:`~fusionrank.serving.http.app.create_app`);
handlers reach it only through these aliases. The getters are ``async`` so resolving
them costs no thread-pool hop.
"""
from __future__ import annotations

import secrets
import threading
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from ..service import SearchService
from .metrics import Metrics


async def get_service(request: Request) -> SearchService:
    return request.app.state.service


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_search_gate(request: Request) -> threading.Semaphore:
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


async def require_events_key(request: Request,
                             x_api_key: Annotated[str | None, Header(description="events key or admin key")] = None) -> None:
    """401 without a key, 403 unless it is the events key or the admin key."""
    key, state = _presented(x_api_key), request.app.state
    if not (secrets.compare_digest(key, state.events_key.encode()) or secrets.compare_digest(key, state.admin_key.encode())):
        raise HTTPException(403, "invalid API key for /events")


ServiceDep = Annotated[SearchService, Depends(get_service)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
SearchGateDep = Annotated[threading.Semaphore, Depends(get_search_gate)]
EventsKeyDep = Annotated[str, Depends(get_events_key)]
AdminKeyRequired = Annotated[None, Depends(require_admin_key)]
EventsKeyRequired = Annotated[None, Depends(require_events_key)]
