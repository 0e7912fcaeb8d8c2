"""What every ranker offers the ranking path (:class:`Ranker`), and the feature group it reads."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass
class FeatureGroup:
    """One modality as the ranker sees it: scalar feature columns, its mask column, its embedding table."""

    name: str
    columns: list[int]
    mask_column: int
    table: str | None = None  # key into the embedding tables dict, or None
    lexical: list[int] | None = None  # the columns (a subset of ``columns``) that count query words matched in text


@runtime_checkable
class Ranker(Protocol):
    """A fit/predict estimator over slates (registered in :data:`fusionrank.rankers.RANKERS` by ``kind``).

    ``predict(slates, tables, return_weights=True)`` returns ``(scores [B, N], weights [B, N, K] or None)``;
    without ``return_weights`` only the scores (``-inf`` on padding). A ranker must treat a modality whose
    mask is False as absent: explanations occlude modalities through the mask.
    """

    kind: ClassVar[str]
    groups_: list[FeatureGroup] | None
    n_features_: int | None

    def fit(self, train, groups: Sequence[FeatureGroup], tables: dict[str, np.ndarray] | None = None, valid=None,
            valid_ideal_dcg: np.ndarray | None = None, log=print) -> "Ranker": ...

    def predict(self, slates, tables: dict[str, np.ndarray] | None = None, return_weights: bool = False) -> Any: ...

    def modality_weights(self) -> dict[str, float] | None: ...

    def table_dims(self) -> dict[str, int]: ...

    def save(self, directory: str | Path) -> None: ...

    @classmethod
    def load(cls, directory: str | Path) -> "Ranker": ...
