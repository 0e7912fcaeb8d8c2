"""``POST /events``: impressions, clicks, add-to-carts and purchases, in batches (events key or admin key)."""
from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...service import EVENT_TYPES
from ..deps import EventsKeyRequired, MetricsDep, ServiceDep

MAX_EVENTS = 1000
MIN_TIMESTAMP = 946_684_800.0  # 2000-01-01: an earlier client time is a bug, not an event
MAX_CLOCK_SKEW = 86_400.0  # a client clock may run up to a day ahead
MAX_VALUE = 1e9


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    search_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="the search_id returned by /search")
    model_version: str = Field(min_length=1, max_length=200, description="the model_version returned by /search")
    product_id: str = Field(min_length=1, max_length=200)
    position: int | None = Field(None, ge=1, le=10_000, description="1-based rank at which the product was shown")
    timestamp: float | None = Field(None, allow_inf_nan=False, ge=MIN_TIMESTAMP,
                                    description="client time, seconds since the epoch (2000-01-01 .. now + 1 day)")
    value: float | None = Field(None, ge=0, le=MAX_VALUE, allow_inf_nan=False, description="order value (purchases)")
    client_id: str | None = Field(None, min_length=1, max_length=200, description="the shopper's browser id (stored only as a keyed hash)")
    session_id: str | None = Field(None, min_length=1, max_length=200, description="the shopping session id (stored only as a keyed hash)")

    @field_validator("timestamp")
    @classmethod
    def _not_in_the_future(cls, v: float | None) -> float | None:
        if v is not None and v > time.time() + MAX_CLOCK_SKEW:
            raise ValueError("is more than a day in the future")
        return v


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)


router = APIRouter()


@router.post("/events", summary="Record a batch of events")
def post_events(role: EventsKeyRequired, service: ServiceDep, metrics: MetricsDep, batch: EventBatch) -> dict[str, Any]:
    """With the public events key, every event must name a search this service issued (else 422) and each client
    may send ``FUSIONRANK_EVENTS_RATE`` requests a second (burst ``FUSIONRANK_EVENTS_BURST``; else 429)."""
    evs = [e.model_dump() for e in batch.events]
    try:
        out = service.record_events(evs, require_known=role != "admin")
    except ValueError as e:
        raise HTTPException(422, str(e))
    metrics.events_accepted(evs)
    return out
