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

import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Path as PathParam, Query
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..errors import FusionrankError
from .http.errors import EXCEPTION_HANDLERS
from .http.metrics import Metrics, ObserveRequests
from .products import ProductInputError
from .service import EVENT_TYPES, ModelMismatch, SearchService, UnknownCategory

STATIC = Path(__file__).parent / "static"
MAX_QUERY_CHARS = 256
MAX_K = 100
MAX_EVENTS = 1000
ID_PATTERN = r"^[^\s/\\][^/\\]{0,199}$"


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    search_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="the search_id returned by /search")
    model_version: str = Field(min_length=1, max_length=200, description="the model_version returned by /search")
    product_id: str = Field(min_length=1, max_length=200)
    position: int | None = Field(None, ge=1, le=10_000, description="1-based rank at which the product was shown")
    timestamp: float | None = Field(None, description="client time, seconds since the epoch")
    value: float | None = Field(None, ge=0, description="order value (purchases)")


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)


class ProductIn(BaseModel):
    """A product in the ingest schema; unknown fields are kept as attributes."""

    model_config = ConfigDict(extra="allow")
    product_id: str | None = Field(None, description="optional; must equal the id in the path")
    title: str = Field(min_length=1, max_length=1000)
    description: str | None = None
    brand: str | None = None
    color: str | None = None
    category: str | None = None
    image: str | None = Field(None, description="path of the product photo on the server")
    audio: str | None = Field(None, description="path of a spoken description on the server")
    attributes: dict[str, str] | None = None


class ModelSwap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, description="a model directory written by `fusionrank train`")


def create_app(service: SearchService, admin_key: str | None = None, events_key: str | None = None,
               max_concurrent_searches: int = 2) -> FastAPI:
    admin_key = admin_key or secrets.token_urlsafe(24)
    events_key = events_key or secrets.token_urlsafe(16)
    app = FastAPI(title="fusionrank search", version="1", description=__doc__, exception_handlers=EXCEPTION_HANDLERS)
    app.state.service, app.state.admin_key, app.state.events_key = service, admin_key, events_key
    gate = threading.Semaphore(max_concurrent_searches)

    meters = app.state.metrics = Metrics(service)
    app.add_middleware(ObserveRequests, metrics=meters)

    def key_of(x_api_key: str | None) -> str:
        if not x_api_key:
            raise HTTPException(401, "missing API key: send it in the X-API-Key header")
        return x_api_key

    def require_admin(x_api_key: str | None = Header(None, description="admin key")) -> None:
        if not secrets.compare_digest(key_of(x_api_key).encode(), admin_key.encode()):
            raise HTTPException(403, "invalid API key for this endpoint (admin key required)")

    def require_events(x_api_key: str | None = Header(None, description="events key or admin key")) -> None:
        k = key_of(x_api_key).encode()
        if not (secrets.compare_digest(k, events_key.encode()) or secrets.compare_digest(k, admin_key.encode())):
            raise HTTPException(403, "invalid API key for /events")

    # pages and reads ----------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        html = (STATIC / "index.html").read_text().replace("{{EVENTS_KEY}}", events_key)
        return HTMLResponse(html)

    @app.get("/search", summary="Search the catalogue")
    def search(q: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS, description="search text"),
               k: int = Query(10, ge=1, le=MAX_K, description="results to return"),
               category: str | None = Query(None, max_length=200, description="master category filter (case-insensitive)"),
               explain: bool = Query(True, description="per-modality contributions (a few ms)")) -> Response:
        """Ranked products: ``results[]`` with ``score``, per-modality ``contributions`` and fusion ``weights``,
        ``matched_terms``, media URLs; plus ``search_id`` and ``model_version`` (quote both in events) and
        ``timings_ms`` per stage."""
        if not q.strip():
            raise HTTPException(422, "q: must contain a search term (got only whitespace)")
        try:
            # serialised here: FastAPI's generic encoder costs ~2 ms on this nested payload
            with gate:  # at most `max_concurrent_searches` at once: FIFO-ish queueing instead of GIL thrashing
                result = service.search(q, k=k, category=category or None, explain=explain)
            return Response(json.dumps(result), media_type="application/json")
        except UnknownCategory as e:
            raise HTTPException(422, f"category: {e.args[0]}")

    def _product_or_404(product_id: str) -> dict:
        p = service.index.product(product_id)
        if p is None:
            raise HTTPException(404, f"no product with id {product_id!r}")
        return p

    pid_param = PathParam(..., min_length=1, max_length=200, pattern=ID_PATTERN, description="product id")

    @app.get("/products/{product_id}", summary="One product")
    def get_product(product_id: str = pid_param) -> dict[str, Any]:
        return _product_or_404(product_id)

    def _media(product_id: str, field: str) -> FileResponse:
        p = _product_or_404(product_id)
        path = p.get(field)
        if not path or not Path(path).is_file():
            raise HTTPException(404, f"product {product_id!r} has no {field} file")
        return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/products/{product_id}/image", summary="The product's photo", response_class=FileResponse)
    def product_image(product_id: str = pid_param):
        return _media(product_id, "image")

    @app.get("/products/{product_id}/audio", summary="The product's spoken description", response_class=FileResponse)
    def product_audio(product_id: str = pid_param):
        return _media(product_id, "audio")

    # writes --------------------------------------------------------------------
    @app.put("/products/{product_id}", summary="Add or replace a product", dependencies=[Depends(require_admin)])
    def put_product(product_id: str = pid_param, product: ProductIn = Body(...)) -> dict[str, Any]:
        if product.product_id is not None and product.product_id != product_id:
            raise HTTPException(422, f"product_id: the body says {product.product_id!r} but the path says {product_id!r}")
        raw = product.model_dump(exclude_none=True)
        raw["product_id"] = product_id
        try:
            return service.put_product(raw)
        except ProductInputError as e:
            raise HTTPException(422, str(e))

    @app.delete("/products/{product_id}", status_code=204, summary="Remove a product", dependencies=[Depends(require_admin)])
    def delete_product(product_id: str = pid_param) -> Response:
        if not service.index.delete(product_id):
            raise HTTPException(404, f"no product with id {product_id!r}")
        return Response(status_code=204)

    @app.post("/events", summary="Record a batch of events", dependencies=[Depends(require_events)])
    def post_events(batch: EventBatch) -> dict[str, Any]:
        evs = [e.model_dump() for e in batch.events]
        try:
            out = service.record_events(evs)
        except ValueError as e:
            raise HTTPException(422, str(e))
        meters.events_accepted(evs)
        return out

    @app.post("/admin/model", summary="Swap in another model", dependencies=[Depends(require_admin)])
    def swap_model(body: ModelSwap) -> dict[str, Any]:
        if not (Path(body.path) / "config.json").is_file():
            raise HTTPException(404, f"path: {body.path!r} is not a model directory (no config.json)")
        try:
            old, new = service.swap_model(body.path)
        except ModelMismatch as e:
            raise HTTPException(409, str(e))
        except FusionrankError as e:
            raise HTTPException(422, f"path: {e}")
        meters.model_swapped(old.version, new.version)
        return {"previous": old.version, "current": new.version}

    @app.post("/admin/snapshot", summary="Write the index snapshot (and empty the change log)",
              dependencies=[Depends(require_admin)])
    def snapshot() -> dict[str, Any]:
        d = service.index.directory
        if d is None:
            raise HTTPException(409, "this index has no folder (it was never saved or loaded); nothing to snapshot to")
        t0 = time.perf_counter()
        service.index.save(d)
        return {"directory": str(d), "products": len(service.index), "seconds": round(time.perf_counter() - t0, 2)}

    # health and metrics --------------------------------------------------------
    @app.get("/healthz", summary="Liveness and what is loaded")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "products": len(service.index), "model_version": service.model.version}

    @app.get("/stats", summary="Index, model and cache details")
    def stats() -> dict[str, Any]:
        return service.stats()

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        return meters.exposition()

    return app


def serve(service: SearchService, host: str = "127.0.0.1", port: int = 8000, admin_key: str | None = None,
          events_key: str | None = None, log=print) -> None:
    import uvicorn

    app = create_app(service, admin_key, events_key)
    log(f"fusionrank search on http://{host}:{port}/  ({len(service.index):,} products, model {service.model.version})")
    uvicorn.run(app, host=host, port=port, log_level="warning")
