"""Stages of the ranking path and how they compose (in the spirit of PyTerrier's transformers).

A stage has one job and one method, ``transform(batch) -> batch``. ``a >> b`` is the
stage that runs ``a`` then ``b``. The data that flows between them::

    Queries ──QueryEncoder──▶ Queries(q) ──retriever──▶ Candidates ──Featuriser──▶ Slates
            ──Scorer(ranker)──▶ Scored ──Explainer(k)──▶ hits

:class:`Queries` is the input of every pipeline: ids, texts, an optional category
filter (one per batch) and, once encoded, the query embeddings ``q [B, D]``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np


@dataclass
class Queries:
    query_ids: list[str]
    texts: list[str]
    q: np.ndarray | None = None
    category: str | None = None

    @classmethod
    def of(cls, texts: Sequence[str], query_ids: Sequence[Any] | None = None, category: str | None = None) -> "Queries":
        texts = [str(t) for t in texts]
        ids = [str(i) for i in query_ids] if query_ids is not None else [str(i) for i in range(len(texts))]
        return cls(ids, texts, None, category)

    def __len__(self) -> int:
        return len(self.texts)

    def with_embeddings(self, q: np.ndarray) -> "Queries":
        return replace(self, q=np.asarray(q, np.float32))

    def batches(self, size: int):
        for i in range(0, len(self), size):
            yield Queries(self.query_ids[i:i + size], self.texts[i:i + size], None if self.q is None else self.q[i:i + size],
                          self.category)


class Stage:
    """One step of the ranking path; ``a >> b`` composes two."""

    def transform(self, batch):  # pragma: no cover - every stage defines it
        raise NotImplementedError

    def __call__(self, batch):
        return self.transform(batch)

    def __rshift__(self, other: "Stage") -> "Then":
        return Then([self, other])


class Then(Stage):
    """Stages run one after another (what ``>>`` builds)."""

    def __init__(self, stages: list[Stage]):
        self.stages: list[Stage] = []
        for s in stages:
            self.stages.extend(s.stages if isinstance(s, Then) else [s])

    def transform(self, batch):
        for s in self.stages:
            batch = s.transform(batch)
        return batch

    def __repr__(self) -> str:
        return " >> ".join(type(s).__name__ for s in self.stages)
