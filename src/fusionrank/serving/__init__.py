"""Serving: an updatable search index, the search service core, and its HTTP app."""
from .index import SearchIndex, ServingConfig
from .lexical import LexicalField
from .query import QueryEncoder
from .service import ModelHandle, SearchService, load_handle

__all__ = ["SearchIndex", "ServingConfig", "LexicalField", "QueryEncoder", "ModelHandle", "SearchService", "load_handle"]
