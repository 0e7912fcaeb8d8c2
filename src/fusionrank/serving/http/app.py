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
page embeds it); it can only post events. Bad input gets a 4xx whose ``detail`` is
one readable sentence naming the parameter.
"""
from __future__ import annotations

import secrets
import threading

from fastapi import FastAPI

from ..service import SearchService
from .errors import EXCEPTION_HANDLERS
from .metrics import Metrics, ObserveRequests
from .routes import api_router


def create_app(service: SearchService, admin_key: str | None = None, events_key: str | None = None,
               max_concurrent_searches: int = 2) -> FastAPI:
    """The FastAPI app over ``service``; this module's docstring is its OpenAPI description.

    A missing key is generated at random (the page embeds the events key; the admin
    key is then unknown to anyone). At most ``max_concurrent_searches`` searches rank
    at once; the rest queue instead of contending for the GIL.
    """
    app = FastAPI(title="fusionrank search", version="1", description=__doc__, exception_handlers=EXCEPTION_HANDLERS)
    app.state.service = service
    app.state.admin_key = admin_key or secrets.token_urlsafe(24)
    app.state.events_key = events_key or secrets.token_urlsafe(16)
    app.state.search_gate = threading.Semaphore(max_concurrent_searches)
    app.state.metrics = Metrics(service)
    app.add_middleware(ObserveRequests, metrics=app.state.metrics)
    app.include_router(api_router)
    return app


def serve(service: SearchService, host: str = "127.0.0.1", port: int = 8000, admin_key: str | None = None,
          events_key: str | None = None, log=print) -> None:
    """Run :func:`create_app` under uvicorn until interrupted, after logging the address."""
    import uvicorn

    app = create_app(service, admin_key, events_key)
    log(f"fusionrank search on http://{host}:{port}/  ({len(service.index):,} products, model {service.model.version})")
    uvicorn.run(app, host=host, port=port, log_level="warning")
