"""``/products/{product_id}``: read a product and stream its media; add, replace or remove one (admin key)."""
from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path as PathParam
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ...media import MediaError, audio_bytes, image_bytes
from ...products import ProductInputError
from ...service import SearchService
from ..deps import AdminKeyRequired, ServiceDep

ID_PATTERN = r"^[^\s/\\][^/\\]{0,199}$"

ProductId = Annotated[str, PathParam(min_length=1, max_length=200, pattern=ID_PATTERN, description="product id")]


class ProductIn(BaseModel):
    """A product in the ingest schema; unknown fields are kept as ``attributes`` (and returned by GET)."""

    model_config = ConfigDict(extra="allow")
    product_id: str | None = Field(None, description="optional; must equal the id in the path")
    title: str = Field(min_length=1, max_length=1000)
    description: str | None = None
    brand: str | None = None
    color: str | None = None
    category: str | None = None
    image: str | None = Field(None, max_length=4096, description="path of the product photo on the server, in the "
                              "catalogue's media folders or FUSIONRANK_UPLOAD_ROOTS (absolute, or relative to one of them)")
    audio: str | None = Field(None, max_length=4096, description="path of a spoken description on the server (same rule)")
    attributes: dict[str, str] | None = None


router = APIRouter(prefix="/products")


def _non_finite(v: Any, where: str) -> str | None:
    """The dotted name of the first NaN/Infinity in a decoded JSON body (Python's parser accepts them; JSON does not)."""
    if isinstance(v, float) and not math.isfinite(v):
        return where
    if isinstance(v, dict):
        return next((w for k, x in v.items() if (w := _non_finite(x, f"{where}.{k}" if where else str(k)))), None)
    if isinstance(v, list):
        return next((w for i, x in enumerate(v) if (w := _non_finite(x, f"{where}.{i}"))), None)
    return None


def _product_or_404(service: SearchService, product_id: str) -> dict:
    p = service.product(product_id)
    if p is None:
        raise HTTPException(404, f"no product with id {product_id!r}")
    return p


def _media(service: SearchService, product_id: str, field: str) -> Response:
    """The product's stored ``image`` or ``audio``, decoded and re-encoded; 404 when it has none that is allowed and decodes.

    The path is checked against the allowed media roots again at every request, and the
    404 says the same whether the file is missing, unreadable, outside the roots or not media.
    """
    path = _product_or_404(service, product_id).get(field)
    missing = HTTPException(404, f"product {product_id!r} has no {field} file")
    if not path:
        raise missing
    try:
        data, ctype = (image_bytes if field == "image" else audio_bytes)(service.media_roots().resolve(path))
    except MediaError:
        raise missing from None
    return Response(data, media_type=ctype, headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})


@router.get("/{product_id}", summary="One product")
def get_product(service: ServiceDep, product_id: ProductId) -> dict[str, Any]:
    """The product as shoppers see it: its media as URLs of this service, never server paths."""
    p = dict(_product_or_404(service, product_id))
    for field in ("image", "audio"):
        p[f"{field}_url"] = f"/products/{product_id}/{field}" if p.pop(field, None) else None
    return p


@router.get("/{product_id}/image", summary="The product's photo", response_class=Response)
def product_image(service: ServiceDep, product_id: ProductId):
    return _media(service, product_id, "image")


@router.get("/{product_id}/audio", summary="The product's spoken description", response_class=Response)
def product_audio(service: ServiceDep, product_id: ProductId):
    return _media(service, product_id, "audio")


@router.put("/{product_id}", summary="Add or replace a product")
def put_product(_: AdminKeyRequired, service: ServiceDep, product_id: ProductId, product: ProductIn) -> dict[str, Any]:
    if product.product_id is not None and product.product_id != product_id:
        raise HTTPException(422, f"product_id: the body says {product.product_id!r} but the path says {product_id!r}")
    raw = product.model_dump(exclude_none=True)
    bad = _non_finite(raw, "")
    if bad:
        raise HTTPException(422, f"{bad}: NaN and Infinity are not numbers JSON allows")
    raw["product_id"] = product_id
    try:
        return service.put_product(raw)
    except ProductInputError as e:
        raise HTTPException(422, str(e))


@router.delete("/{product_id}", status_code=204, summary="Remove a product")
def delete_product(_: AdminKeyRequired, service: ServiceDep, product_id: ProductId) -> Response:
    if not service.index.delete(product_id):
        raise HTTPException(404, f"no product with id {product_id!r}")
    return Response(status_code=204)
