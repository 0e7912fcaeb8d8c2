"""Metric strings and whole-run evaluation.

Metric string grammar (parsed only by :func:`parse_metric`)::

    name [ "(" opt=value {"," opt=value} ")" ] [ "@" k ]

``name`` is a registered metric (``ndcg, dcg, map, mrr, p, recall``) or an alias
(:data:`ALIASES`: ``ndcg_lin``/``dcg_lin`` = linear gain, ``ndcg_exp``/``dcg_exp``,
``ap``, ``rr``, ``precision``, ``r``), case-insensitive. Examples: ``"ndcg@10"``,
``"ndcg_lin@10"``, ``"map"``, ``"map@100"``, ``"mrr@10"``, ``"p@5"``, ``"recall@100"``,
``"dcg@10"``, ``"map(rel_level=2)"``, ``"ndcg(gain=linear)@10"``.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UnknownNameError
from ..schema import QUERY_ID
from .inputs import prepare
from .ranking import METRICS

__all__ = ["ALIASES", "parse_metric", "EvalResult", "evaluate", "DEFAULT_METRICS"]

#: alias -> (registered name, options implied by the alias)
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "ndcg_lin": ("ndcg", {"gain": "linear"}),
    "ndcg_exp": ("ndcg", {"gain": "exp"}),
    "dcg_lin": ("dcg", {"gain": "linear"}),
    "dcg_exp": ("dcg", {"gain": "exp"}),
    "ap": ("map", {}),
    "rr": ("mrr", {}),
    "precision": ("p", {}),
    "r": ("recall", {}),
}

DEFAULT_METRICS: tuple[str, ...] = ("ndcg@10", "map", "mrr", "recall@100")

_PATTERN = re.compile(r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?:\((?P<opts>[^()]*)\))?\s*(?:@\s*(?P<k>[^\s]+))?\s*$")


def valid_metric_names() -> list[str]:
    """Registered metric names plus aliases, sorted (used in error messages)."""
    return sorted(set(METRICS.names()) | set(ALIASES))


def _option_names(name: str) -> list[str]:
    sig = inspect.signature(METRICS.get(name))
    return [n for n, prm in sig.parameters.items() if prm.kind is inspect.Parameter.KEYWORD_ONLY]


def _parse_value(v: str) -> Any:
    v = v.strip().strip("'\"")
    try:
        return int(v)
    except ValueError:
        return v


def parse_metric(spec: str) -> tuple[str, int | None, dict[str, Any]]:
    """Parse a metric string into ``(registered_name, k, opts)``.

    >>> parse_metric("ndcg_lin@10")
    ('ndcg', 10, {'gain': 'linear'})
    >>> parse_metric("map(rel_level=2)")
    ('map', None, {'rel_level': 2})

    Raises :class:`~fusionrank.errors.UnknownNameError` (listing every valid name and
    alias) for an unknown metric, and ``ValueError`` for a malformed string, a cutoff
    that is not a positive integer, or an option the metric does not accept.
    """
    if not isinstance(spec, str):
        raise TypeError(f"metric must be a string like 'ndcg@10', got {type(spec).__name__}")
    m = _PATTERN.match(spec)
    if not m:
        raise ValueError(f"malformed metric string {spec!r}; expected e.g. 'ndcg@10', 'map', 'map(rel_level=2)@100'")
    raw = m.group("name").lower()
    if raw in ALIASES:
        name, opts = ALIASES[raw][0], dict(ALIASES[raw][1])
    elif raw in METRICS:
        name, opts = raw, {}
    else:
        raise UnknownNameError("metric", raw, valid_metric_names())

    k: int | None = None
    if m.group("k") is not None:
        ks = m.group("k")
        if not ks.isdigit() or int(ks) < 1:
            raise ValueError(f"cutoff in {spec!r} must be a positive integer, got {ks!r}")
        k = int(ks)

    allowed = _option_names(name)
    if m.group("opts") is not None and m.group("opts").strip():
        for part in m.group("opts").split(","):
            if "=" not in part:
                raise ValueError(f"option {part.strip()!r} in {spec!r} must look like name=value")
            key, val = (s.strip() for s in part.split("=", 1))
            if key not in allowed:
                raise ValueError(f"metric {name!r} has no option {key!r}; valid options: {', '.join(allowed)}")
            opts[key] = _parse_value(val)
    return name, k, opts


@dataclass(frozen=True)
class EvalResult:
    """Result of :func:`evaluate`.

    Attributes
    ----------
    mean: ``{metric_string: float}`` mean over queries (NaN-skipping, which only matters
        with ``no_relevant="skip"``).
    per_query: DataFrame indexed by ``query_id`` (every qrels query, sorted), one float
        column per metric string, in the order requested. With ``no_relevant="skip"``
        skipped queries are NaN in that metric's column.
    n_queries: number of evaluated (qrels) queries = ``len(per_query)``.
    """

    mean: dict[str, float]
    per_query: pd.DataFrame
    n_queries: int
    metrics: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        body = "  ".join(f"{m}={v:.4f}" for m, v in self.mean.items())
        return f"EvalResult(n_queries={self.n_queries}: {body})"


def evaluate(
    qrels: pd.DataFrame | Mapping,
    run: pd.DataFrame | Mapping,
    metrics: str | Iterable[str] = DEFAULT_METRICS,
    *,
    no_relevant: str = "zero",
) -> EvalResult:
    """Evaluate a run on qrels with several metrics at once (the run is ranked only once).

    ``qrels``: DataFrame ``query_id, product_id, grade`` or ``{qid: {pid: grade}}``;
    ``run``: DataFrame ``query_id, product_id, score`` or ``{qid: {pid: score}}``.
    Metric strings are parsed by :func:`parse_metric` (all are validated before any work).
    Conventions (trec_eval's): evaluated queries = qrels queries; run-only queries are
    ignored; qrels queries missing from the run score 0 and count in the mean; queries
    without relevant products score 0 and count (``no_relevant="zero"``) or are left out
    of that metric's mean (``"skip"``). Ties: score desc, then product_id desc.
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    specs = list(dict.fromkeys(metrics))  # de-duplicate, keep order
    if not specs:
        raise ValueError("metrics must name at least one metric")
    parsed = [parse_metric(s) for s in specs]
    p = prepare(qrels, run)
    index = pd.Index(p.query_ids, name=QUERY_ID, dtype=object)
    cols = {}
    for spec, (name, k, opts) in zip(specs, parsed):
        fn = METRICS.get(name)
        s = fn(p, None, k, **{"no_relevant": no_relevant, **opts})
        cols[spec] = s.reindex(index).to_numpy(dtype=np.float64)
    per_query = pd.DataFrame(cols, index=index)
    mean = {spec: (float(per_query[spec].mean()) if len(per_query) else float("nan")) for spec in specs}
    return EvalResult(mean=mean, per_query=per_query, n_queries=len(per_query), metrics=tuple(specs))
