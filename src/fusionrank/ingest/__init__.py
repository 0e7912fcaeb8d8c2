"""Catalogue ingestion: readers, adapters, cleaning, validation and splitting."""
from .catalog import Catalog, read_catalog_qrels, read_catalog_queries, with_title_field
from .run import ingest
from .splits import split_queries

__all__ = ["Catalog", "ingest", "read_catalog_qrels", "read_catalog_queries", "split_queries", "with_title_field"]
