"""Query-grouped train/validation/test splits without leakage.

Queries are grouped by their normalised text, so two ids carrying the same
query string always land in the same split; every judgment follows its query.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .. import schema as S
from ..errors import FusionrankError


def _norm(q: str) -> str:
    return re.sub(r"\s+", " ", str(q).lower()).strip()


def split_queries(queries: pd.DataFrame, fractions: dict[str, float] | None = None, seed: int = 0) -> pd.Series:
    """Assign each query to a split. Returns a Series (index aligned to ``queries``).

    ``fractions`` e.g. ``{"train": 0.8, "valid": 0.1, "test": 0.1}`` (must sum to 1).
    The assignment is a seeded permutation of the distinct normalised query texts.
    """
    fractions = fractions or {"train": 0.8, "valid": 0.1, "test": 0.1}
    if any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise FusionrankError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    groups = queries[S.QUERY].map(_norm)
    uniq = np.array(sorted(groups.unique()))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    bounds = np.cumsum([0.0] + list(fractions.values())) * len(uniq)
    names = list(fractions)
    assign = {}
    for rank, gi in enumerate(order):
        k = int(np.searchsorted(bounds, rank, side="right") - 1)
        assign[uniq[gi]] = names[min(k, len(names) - 1)]
    return groups.map(assign).rename("split")
