"""Serving: the updatable search index, the search service core, and its HTTP app."""
from .index import SearchIndex
from .service import ModelHandle, SearchService, load_handle

__all__ = ["SearchIndex", "ModelHandle", "SearchService", "load_handle"]
