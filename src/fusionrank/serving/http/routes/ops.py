"""Operations endpoints: ``/healthz`` (liveness), ``/stats`` (index, model and cache details), ``/metrics`` (Prometheus)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from ..deps import MetricsDep, ServiceDep

router = APIRouter()


@router.get("/healthz", summary="Liveness and what is loaded")
def healthz(service: ServiceDep) -> dict[str, Any]:
    return {"status": "ok", "products": len(service.index), "model_version": service.model.version}


@router.get("/stats", summary="Index, model and cache details")
def stats(service: ServiceDep) -> dict[str, Any]:
    return service.stats()


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(metrics: MetricsDep) -> Response:
    return metrics.exposition()
