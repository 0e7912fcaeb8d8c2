"""The search page (``GET /``) and ``GET /search``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse, Response

from ...service import UnknownCategory
from ..deps import EventsKeyDep, SearchGateDep, ServiceDep

PAGE = Path(__file__).resolve().parents[2] / "static" / "index.html"
MAX_QUERY_CHARS = 256
MAX_K = 100

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page(events_key: EventsKeyDep) -> HTMLResponse:
    return HTMLResponse(PAGE.read_text().replace("{{EVENTS_KEY}}", events_key))


@router.get("/search", summary="Search the catalogue")
async def search(service: ServiceDep, gate: SearchGateDep,
                 q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="search text")],
                 k: Annotated[int, Query(ge=1, le=MAX_K, description="results to return")] = 10,
                 category: Annotated[str | None, Query(max_length=200, description="master category filter (case-insensitive)")] = None,
                 explain: Annotated[bool, Query(description="per-modality contributions (a few ms)")] = True,
                 client_id: Annotated[str | None, Query(min_length=1, max_length=200, description="browser id (stored as a keyed hash)")] = None,
                 session_id: Annotated[str | None, Query(min_length=1, max_length=200, description="session id (stored as a keyed hash)")] = None,
                 ) -> Response:
    """Ranked products: ``results[]`` with ``score``, per-modality ``contributions`` and fusion ``weights``,
    ``matched_terms``, media URLs; plus ``search_id`` and ``model_version`` (quote both in events) and
    ``timings_ms`` per stage. Each result carries its ``rank`` and grid cell (``grid_row``, ``grid_col``)."""
    if not q.strip():
        raise HTTPException(422, "q: must contain a search term (got only whitespace)")

    def rank() -> str:  # serialised here: FastAPI's generic encoder costs ~2 ms on this nested payload
        return json.dumps(service.search(q, k=k, category=category or None, explain=explain, client_id=client_id,
                                         session_id=session_id))

    try:
        # at most `searches_at_once` rank at once, each on a thread; the rest wait their turn (first come, first
        # served) in the event loop, holding no thread, so a process keeps as many threads as it ranks searches
        return Response(await anyio.to_thread.run_sync(rank, limiter=gate), media_type="application/json")
    except UnknownCategory as e:
        raise HTTPException(422, f"category: {e.args[0]}")
