"""Evaluation metrics for ranked product lists, identical to trec_eval / ir_measures.

Quick use::

    from fusionrank.metrics import evaluate
    res = evaluate(qrels_df, run_df, ["ndcg@10", "map", "mrr", "recall@100"])
    res.mean["ndcg@10"], res.per_query, res.n_queries

Conventions (see :mod:`fusionrank.metrics.ranking` for the formulas):

* ties: score descending, then product_id descending (string order) -- trec_eval's rule;
* evaluated queries are the qrels queries; run-only queries are ignored; a qrels query
  missing from the run scores 0 and counts in the mean;
* a query without relevant products scores 0 and counts (trec_eval / ir_measures), or is
  skipped with ``no_relevant="skip"``;
* NDCG gain ``2**g - 1`` by default (``ndcg_lin`` / ``gain="linear"`` for ``g``), discount
  ``1/log2(rank+1)``, ideal DCG from all judged products of the query.
"""
from __future__ import annotations

from .evaluate import ALIASES, DEFAULT_METRICS, EvalResult, evaluate, parse_metric, valid_metric_names
from .inputs import Prepared, as_qrels, as_run, prepare, to_frame
from .padded import dcg_at_k_padded, ideal_dcg, ndcg_at_k_padded
from .ranking import (
    METRICS,
    average_precision,
    dcg,
    gain_values,
    ideal_dcg_by_query,
    ndcg,
    precision,
    recall,
    reciprocal_rank,
)
from .significance import (
    QuerySetMismatchError,
    SignificanceResult,
    bootstrap_ci,
    compare,
    paired_t_test,
    permutation_test,
)

__all__ = [
    "ALIASES",
    "DEFAULT_METRICS",
    "EvalResult",
    "METRICS",
    "Prepared",
    "QuerySetMismatchError",
    "SignificanceResult",
    "as_qrels",
    "as_run",
    "average_precision",
    "bootstrap_ci",
    "compare",
    "dcg",
    "dcg_at_k_padded",
    "evaluate",
    "gain_values",
    "ideal_dcg",
    "ideal_dcg_by_query",
    "ndcg",
    "ndcg_at_k_padded",
    "paired_t_test",
    "parse_metric",
    "permutation_test",
    "precision",
    "prepare",
    "recall",
    "reciprocal_rank",
    "to_frame",
    "valid_metric_names",
]
