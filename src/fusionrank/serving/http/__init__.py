"""The HTTP layer: :func:`create_app` assembles a FastAPI app from the per-resource routers in ``routes/``,
the dependencies in ``deps``, the exception handlers in ``errors`` and the metrics in ``metrics``."""
from .app import create_app, serve

__all__ = ["create_app", "serve"]
