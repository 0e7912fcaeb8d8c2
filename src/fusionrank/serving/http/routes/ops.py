"""Operations endpoints: ``/healthz`` (liveness), ``/stats`` (index, model and cache details), ``/metrics`` (Prometheus)."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from ..deps import MetricsDep, ServiceDep, is_admin

router = APIRouter()


@router.get("/healthz", summary="Liveness and what is loaded")
def healthz(service: ServiceDep) -> dict[str, Any]:
    service.sync()
    out = {"status": "ok", "products": len(service.index), "model_version": service.model.version}
    if service.worker is not None:
        out["worker"] = service.worker
    return out


@router.get("/stats", summary="Index, model, cache and log-repair details")
def stats(service: ServiceDep, request: Request,
          x_api_key: Annotated[str | None, Header(description="optional admin key: adds server paths")] = None) -> dict[str, Any]:
    """``logs`` counts what opening each append-only log repaired; ``searches_at_once``: how many searches this process
    ranks at once (the rest queue); ``model_path`` only with the admin key."""
    return {**service.stats(admin=is_admin(request, x_api_key)), "searches_at_once": request.app.state.searches_at_once}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(metrics: MetricsDep) -> Response:
    return metrics.exposition()
