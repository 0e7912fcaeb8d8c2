"""The API's routers, one per resource; :data:`api_router` includes them in the order the OpenAPI document lists them."""
from fastapi import APIRouter

from . import admin, events, ops, products, search

api_router = APIRouter()
for _module in (search, products, events, admin, ops):
    api_router.include_router(_module.router)

__all__ = ["api_router"]
