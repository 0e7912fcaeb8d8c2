"""``/admin``: swap the serving model and write the index snapshot. Every route needs the admin key."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from ....errors import FusionrankError
from ...service import ModelMismatch
from ..deps import ServiceDep, require_admin_key


class ModelSwap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, description="a model directory written by `fusionrank train`")


router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin_key)])


@router.post("/model", summary="Swap in another model")
def swap_model(service: ServiceDep, body: ModelSwap) -> dict[str, Any]:
    if not (Path(body.path) / "config.json").is_file():
        raise HTTPException(404, f"path: {body.path!r} is not a model directory (no config.json)")
    try:
        old, new = service.swap_model(body.path)
    except ModelMismatch as e:
        raise HTTPException(409, str(e))
    except FusionrankError as e:
        raise HTTPException(422, f"path: {e}")
    return {"previous": old.version, "current": new.version}


@router.post("/snapshot", summary="Write the index snapshot (and empty the change log)")
def snapshot(service: ServiceDep) -> dict[str, Any]:
    d = service.index.directory
    if d is None:
        raise HTTPException(409, "this index has no folder (it was never saved or loaded); nothing to snapshot to")
    if service.index.shared:
        raise HTTPException(409, "the index is shared by worker processes and cannot write a snapshot; restart the "
                                 "service with one worker to write one")
    t0 = time.perf_counter()
    service.index.save(d)
    return {"directory": str(d), "products": len(service.index), "seconds": round(time.perf_counter() - t0, 2)}
