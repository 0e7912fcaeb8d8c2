"""Names and record shapes of the feedback loop, defined once.

The event store keeps four kinds of records; their shapes follow UBI 1.3 (User
Behavior Insights, OpenSearch) where UBI has a field for the thing:

``queries``  one row per search served (UBI ``ubi_queries``): ``query_id`` (the search id
             the service returns), ``user_query``, ``client_id`` and ``session_id`` (keyed
             hashes, never raw), ``timestamp``, the model that ranked, the index version,
             the grid's column count, and ``slate_key``, a reference to the served list.
``slates``   one row per distinct served list, content-keyed (a popular query's identical
             result list is stored once): product ids in shown order, the ranker's scores,
             the scalar features ``[n, F]`` and modality masks ``[n, K]`` the ranker saw,
             the query vector, each product's vector key, and the ranks the list had
             before any randomisation swap (``logged_ranks``).
             An *interleaved* search (:mod:`fusionrank.feedback.interleave`) also keeps
             ``interleaved_with`` (the candidate model's version; ``model_version`` is the
             promoted one's) and ``teams``, one of :data:`TEAMS` or :data:`SHARED_TEAM` per shown product.
``events``   one row per shopper action (UBI ``ubi_events``): ``action_name`` (one of
             :data:`ACTIONS`), ``query_id``, ``session_id``, ``client_id``, ``timestamp``,
             ``object_id`` (the product), ``position`` (1-based rank), ``grid_row`` and
             ``grid_col`` (1-based), ``value`` (order value of a purchase).
``vectors``  embedding rows by vector key, for products whose vectors are not in the
             catalogue's base tables (written through the service after the build), so a
             logged slate's inputs can be rebuilt after the product changes again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

#: UBI ``action_name`` values fusionrank records, in order of intent.
ACTIONS: tuple[str, ...] = ("impression", "click", "add_to_cart", "purchase")

#: Default label weight of each action when clicks become training labels.
DEFAULT_ACTION_WEIGHTS: dict[str, float] = {"click": 1.0, "add_to_cart": 2.0, "purchase": 4.0}

#: Columns in the grid of the web page (results flow left to right, then down).
DEFAULT_GRID_COLUMNS = 4

#: Teams of an interleaved list: ``a`` = the promoted model's ranking (``model_version``), ``b`` = the candidate's.
TEAMS: tuple[str, str] = ("a", "b")
#: Team of a product both rankings would have drafted in the same round: shown once, credited to neither.
SHARED_TEAM = "ab"


def grid_cell(rank: int | np.ndarray, columns: int) -> tuple:
    """1-based ``(row, col)`` of 1-based ``rank`` in a grid of ``columns`` columns."""
    r = np.asarray(rank) - 1
    return r // columns + 1, r % columns + 1


@dataclass
class ServedSlate:
    """What the ranker saw and showed for one search, in shown order (``n`` products)."""

    product_ids: list[str]
    scores: np.ndarray          # float32 [n]
    features: np.ndarray        # float32 [n, F], SCALAR_FEATURES order
    mask: np.ndarray            # bool [n, K], MODALITIES order
    query_vector: np.ndarray    # float32 [D]
    vector_keys: list[str]      # per product: key of its embedding rows (see ``vectors``)
    logged_ranks: list[int]     # 1-based rank each product had before randomisation (== shown rank if none)


@dataclass
class SearchLog:
    """One search served: the UBI query record plus what reproduces the ranker's inputs."""

    query_id: str
    user_query: str
    timestamp: float
    model_version: str
    slate: ServedSlate
    client_id: str | None = None      # raw; the store keeps only its keyed hash
    session_id: str | None = None     # raw; the store keeps only its keyed hash
    k: int = 10
    category: str | None = None
    index_version: int = 0
    grid_columns: int = DEFAULT_GRID_COLUMNS
    randomised: bool = False
    total_ms: float | None = None
    interleaved_with: str | None = None  # the candidate model version this list interleaves with model_version's
    teams: list[str] | None = None       # per shown product: TEAMS[0] (model_version's), TEAMS[1] (the candidate's) or SHARED_TEAM
    vectors: dict = field(default_factory=dict)  # vector key -> embedding rows first served here (archived with the search)


@dataclass
class Event:
    """One shopper action on a served product."""

    action_name: str
    query_id: str
    object_id: str
    position: int | None = None
    timestamp: float | None = None
    client_id: str | None = None      # raw; hashed by the store
    session_id: str | None = None     # raw; hashed by the store
    model_version: str | None = None
    value: float | None = None
    grid_row: int | None = None
    grid_col: int | None = None
    received: float = field(default=0.0)


def slate_key(slate: ServedSlate, model_version: str) -> str:
    """Content key of a served list: equal lists (same products, scores, features, query vector) share one row."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    h.update(model_version.encode())
    h.update("\x1f".join(slate.product_ids).encode())
    h.update("\x1f".join(slate.vector_keys).encode())
    h.update(np.asarray(slate.logged_ranks, np.int32).tobytes())
    for a in (slate.scores, slate.features, slate.query_vector):
        h.update(np.ascontiguousarray(a, np.float32).tobytes())
    h.update(np.ascontiguousarray(slate.mask, np.bool_).tobytes())
    return h.hexdigest()


def vector_key(rows: Sequence[np.ndarray]) -> str:
    """Key of one product's embedding rows (one per table, in TABLES order; absent = zeros)."""
    import hashlib

    h = hashlib.blake2b(digest_size=12)
    for r in rows:
        h.update(np.ascontiguousarray(r, np.float32).tobytes())
    return h.hexdigest()
