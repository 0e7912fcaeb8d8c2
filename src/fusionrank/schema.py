"""Column names and table schemas, defined once for the whole package.

Products (one row per catalogue item)::

    product_id   str           unique, non-empty
    title        str           non-empty after cleaning
    description  str | None
    bullet_points list[str]    may be empty
    reviews      list[str]     may be empty
    brand        str | None
    color        str | None
    category     str | None    top-level category, used for search filters
    attributes   map<str,str>  everything else (e.g. fashion44k's ``title_sparse``)
    image        str | None    absolute path or URL of the product photo
    audio        str | None    absolute path of a spoken description / audio ad

Queries: ``query_id, query``. Judgments (qrels): ``query_id, product_id, grade``
with integer grades >= 0; products not listed for a query have grade 0.
"""
from __future__ import annotations

import pyarrow as pa

# --- product columns -------------------------------------------------------
PRODUCT_ID = "product_id"
TITLE = "title"
DESCRIPTION = "description"
BULLET_POINTS = "bullet_points"
REVIEWS = "reviews"
BRAND = "brand"
COLOR = "color"
CATEGORY = "category"
ATTRIBUTES = "attributes"
IMAGE = "image"
AUDIO = "audio"

PRODUCT_COLUMNS: tuple[str, ...] = (
    PRODUCT_ID, TITLE, DESCRIPTION, BULLET_POINTS, REVIEWS, BRAND, COLOR, CATEGORY, ATTRIBUTES, IMAGE, AUDIO,
)
REQUIRED_PRODUCT_COLUMNS: tuple[str, ...] = (PRODUCT_ID, TITLE)
TEXT_COLUMNS: tuple[str, ...] = (TITLE, DESCRIPTION, BRAND, COLOR, CATEGORY)
LIST_COLUMNS: tuple[str, ...] = (BULLET_POINTS, REVIEWS)

PRODUCT_SCHEMA = pa.schema(
    [
        pa.field(PRODUCT_ID, pa.string(), nullable=False),
        pa.field(TITLE, pa.string(), nullable=False),
        pa.field(DESCRIPTION, pa.string()),
        pa.field(BULLET_POINTS, pa.list_(pa.string())),
        pa.field(REVIEWS, pa.list_(pa.string())),
        pa.field(BRAND, pa.string()),
        pa.field(COLOR, pa.string()),
        pa.field(CATEGORY, pa.string()),
        pa.field(ATTRIBUTES, pa.map_(pa.string(), pa.string())),
        pa.field(IMAGE, pa.string()),
        pa.field(AUDIO, pa.string()),
    ]
)

# --- queries and judgments -------------------------------------------------
QUERY_ID = "query_id"
QUERY = "query"
GRADE = "grade"

QUERY_COLUMNS: tuple[str, ...] = (QUERY_ID, QUERY)
QREL_COLUMNS: tuple[str, ...] = (QUERY_ID, PRODUCT_ID, GRADE)

QUERY_SCHEMA = pa.schema([pa.field(QUERY_ID, pa.string(), nullable=False), pa.field(QUERY, pa.string(), nullable=False)])
QREL_SCHEMA = pa.schema(
    [
        pa.field(QUERY_ID, pa.string(), nullable=False),
        pa.field(PRODUCT_ID, pa.string(), nullable=False),
        pa.field(GRADE, pa.int32(), nullable=False),
    ]
)

# --- runs (ranked results) -------------------------------------------------
SCORE = "score"
RANK = "rank"
RUN_COLUMNS: tuple[str, ...] = (QUERY_ID, PRODUCT_ID, SCORE)

# --- modalities ------------------------------------------------------------
TEXT, IMAGE_MODALITY, AUDIO_MODALITY = "text", "image", "audio"
MODALITIES: tuple[str, ...] = (TEXT, IMAGE_MODALITY, AUDIO_MODALITY)

# --- catalogue directory layout (written by ``fusionrank ingest``) ----------
CATALOG_PRODUCTS_FILE = "products.parquet"
CATALOG_QUERIES_FILE = "queries.tsv"
CATALOG_QRELS_FILE = "qrels.tsv"
CATALOG_REJECTS_FILE = "rejects.jsonl"
CATALOG_REPORT_FILE = "report.json"

# Limits that make a field "absurdly long" (characters); longer values are rejected.
MAX_FIELD_CHARS = {TITLE: 1_000, DESCRIPTION: 50_000, BRAND: 200, COLOR: 200, CATEGORY: 200, PRODUCT_ID: 200}
MAX_LIST_ITEMS = 1_000
MAX_LIST_ITEM_CHARS = 20_000
