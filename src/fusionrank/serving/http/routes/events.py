"""``POST /events``: impressions, clicks, add-to-carts and purchases, in batches (events key or admin key)."""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from ...service import EVENT_TYPES
from ..deps import EventsKeyRequired, MetricsDep, ServiceDep

MAX_EVENTS = 1000


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


router = APIRouter()


@router.post("/events", summary="Record a batch of events")
def post_events(_: EventsKeyRequired, service: ServiceDep, metrics: MetricsDep, batch: EventBatch) -> dict[str, Any]:
    evs = [e.model_dump() for e in batch.events]
    try:
        out = service.record_events(evs)
    except ValueError as e:
        raise HTTPException(422, str(e))
    metrics.events_accepted(evs)
    return out
