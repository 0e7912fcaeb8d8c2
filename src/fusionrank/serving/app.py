"""The HTTP app's entry points, :func:`create_app` and :func:`serve`; they live in :mod:`fusionrank.serving.http`."""
from .http import create_app, serve

__all__ = ["create_app", "serve"]
