"""Metric strings are parsed in one place: fusionrank.metrics.parse_metric."""
from __future__ import annotations

import pytest

from fusionrank.errors import UnknownNameError
from fusionrank.metrics import ALIASES, METRICS, parse_metric


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("ndcg@10", ("ndcg", 10, {})),
        ("ndcg_lin@10", ("ndcg", 10, {"gain": "linear"})),
        ("NDCG_LIN@10", ("ndcg", 10, {"gain": "linear"})),
        ("ndcg(gain=linear)@10", ("ndcg", 10, {"gain": "linear"})),
        ("ndcg", ("ndcg", None, {})),
        ("dcg@10", ("dcg", 10, {})),
        ("dcg_lin@3", ("dcg", 3, {"gain": "linear"})),
        ("map", ("map", None, {})),
        ("map@100", ("map", 100, {})),
        ("map(rel_level=2)", ("map", None, {"rel_level": 2})),
        ("map(rel_level=2, no_relevant=skip)@100", ("map", 100, {"rel_level": 2, "no_relevant": "skip"})),
        ("ap", ("map", None, {})),
        ("mrr", ("mrr", None, {})),
        ("mrr@10", ("mrr", 10, {})),
        ("rr@10", ("mrr", 10, {})),
        ("p@5", ("p", 5, {})),
        ("P@5", ("p", 5, {})),
        ("precision@5", ("p", 5, {})),
        ("recall@100", ("recall", 100, {})),
        (" recall @ 100 ", ("recall", 100, {})),
    ],
)
def test_parse_metric(spec, expected):
    assert parse_metric(spec) == expected


def test_every_alias_points_at_a_registered_metric():
    for alias, (name, _) in ALIASES.items():
        assert name in METRICS, alias


def test_unknown_metric_lists_valid_names():
    with pytest.raises(UnknownNameError) as ei:
        parse_metric("ndgc@10")
    err = ei.value
    assert err.kind == "metric" and err.name == "ndgc"
    for name in ["ndcg", "dcg", "map", "mrr", "p", "recall", "ndcg_lin"]:
        assert name in err.valid
        assert name in str(err)
    assert isinstance(err, KeyError)


@pytest.mark.parametrize("spec", ["ndcg@0", "ndcg@-1", "ndcg@ten", "ndcg@1.5", "map(rel_level)", "@10", "ndcg@@10", ""])
def test_malformed_metric_strings(spec):
    with pytest.raises(ValueError):
        parse_metric(spec)


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match="valid options: rel_level, no_relevant"):
        parse_metric("map(gain=linear)")
    with pytest.raises(TypeError):
        parse_metric(10)  # type: ignore[arg-type]
