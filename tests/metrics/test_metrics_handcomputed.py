"""Hand-computed values, conventions, invariance and input handling of fusionrank.metrics."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fusionrank.errors import UnknownNameError
from fusionrank.metrics import (
    METRICS,
    average_precision,
    dcg,
    evaluate,
    ideal_dcg_by_query,
    ndcg,
    precision,
    prepare,
    recall,
    reciprocal_rank,
    to_frame,
)

L2 = math.log2


def one(series: pd.Series, qid: str = "q") -> float:
    return float(series.loc[qid])


# --------------------------------------------------------------------------- NDCG / DCG
def test_perfect_order_ndcg_is_one():
    qrels = {"q": {"a": 3, "b": 2, "c": 1, "d": 0}}
    run = {"q": {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}}
    for gain in ("exp", "linear"):
        for k in (None, 1, 2, 3, 10):
            assert one(ndcg(qrels, run, k, gain=gain)) == pytest.approx(1.0, abs=1e-15)


def test_one_swap_closed_form():
    qrels = {"q": {"a": 3, "b": 2}}
    run = {"q": {"a": 1.0, "b": 2.0}}  # b (grade 2) ranked above a (grade 3)
    exp = (3 / 1 + 7 / L2(3)) / (7 / 1 + 3 / L2(3))
    lin = (2 / 1 + 3 / L2(3)) / (3 / 1 + 2 / L2(3))
    assert one(ndcg(qrels, run, 10)) == pytest.approx(exp, abs=1e-12)
    assert one(ndcg(qrels, run, 10, gain="linear")) == pytest.approx(lin, abs=1e-12)
    # at k=1 only the top product counts: gain(2) / gain(3)
    assert one(ndcg(qrels, run, 1)) == pytest.approx(3 / 7, abs=1e-12)
    assert one(ndcg(qrels, run, 1, gain="linear")) == pytest.approx(2 / 3, abs=1e-12)


def test_linear_vs_exponential_gain_and_dcg():
    qrels = {"q": {"a": 1, "b": 3}}
    run = {"q": {"a": 2.0, "b": 1.0, "x": 0.5}}
    assert one(dcg(qrels, run, 10)) == pytest.approx(1 + 7 / L2(3))
    assert one(dcg(qrels, run, 10, gain="linear")) == pytest.approx(1 + 3 / L2(3))
    assert one(dcg(qrels, run, 1)) == pytest.approx(1.0)
    assert one(ndcg(qrels, run, 10)) == pytest.approx((1 + 7 / L2(3)) / (7 + 1 / L2(3)))
    assert one(ndcg(qrels, run, 10, gain="linear")) == pytest.approx((1 + 3 / L2(3)) / (3 + 1 / L2(3)))
    with pytest.raises(ValueError, match="gain"):
        ndcg(qrels, run, 10, gain="log")


def test_ideal_dcg_uses_all_judged_products_even_unretrieved():
    qrels = {"q": {"a": 1, "b": 3}}  # b is relevant but not retrieved
    run = {"q": {"a": 1.0, "z": 0.5}}
    # DCG = gain(1)/log2(2) = 1; IDCG@10 from judged grades [3, 1] = 7 + 1/log2(3)
    assert one(ndcg(qrels, run, 10)) == pytest.approx(1 / (7 + 1 / L2(3)), abs=1e-12)
    assert one(ideal_dcg_by_query(qrels, 10)) == pytest.approx(7 + 1 / L2(3))
    assert one(ideal_dcg_by_query(qrels, 1, gain="linear")) == pytest.approx(3.0)


# --------------------------------------------------------------------------- other metrics
QRELS = {"q": {"a": 2, "b": 0, "c": 1, "d": 1, "e": 3}}  # 4 relevant (grade >= 1), e unretrieved
RUN = {"q": {"x": 5.0, "a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}}  # ranks: x a b c d


def test_average_precision():
    # relevant at ranks 2 (a), 4 (c), 5 (d); R = 4
    assert one(average_precision(QRELS, RUN)) == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 4)
    assert one(average_precision(QRELS, RUN, 4)) == pytest.approx((1 / 2 + 2 / 4) / 4)  # denominator stays R
    # rel_level=2: relevant = a, e; a at rank 2
    assert one(average_precision(QRELS, RUN, rel_level=2)) == pytest.approx((1 / 2) / 2)


def test_reciprocal_rank():
    assert one(reciprocal_rank(QRELS, RUN)) == pytest.approx(1 / 2)
    assert one(reciprocal_rank(QRELS, RUN, 1)) == 0.0
    assert one(reciprocal_rank(QRELS, RUN, 2)) == pytest.approx(1 / 2)
    assert one(reciprocal_rank(QRELS, RUN, rel_level=3)) == 0.0  # e never retrieved


def test_precision_and_recall():
    assert one(precision(QRELS, RUN, 2)) == pytest.approx(1 / 2)
    assert one(precision(QRELS, RUN, 5)) == pytest.approx(3 / 5)
    assert one(precision(QRELS, RUN, 10)) == pytest.approx(3 / 10)  # divides by k, not by n retrieved
    assert one(precision(QRELS, RUN)) == pytest.approx(3 / 5)  # k=None: rel_ret / n_ret
    assert one(recall(QRELS, RUN, 2)) == pytest.approx(1 / 4)
    assert one(recall(QRELS, RUN, 100)) == pytest.approx(3 / 4)
    assert one(recall(QRELS, RUN, 100, rel_level=2)) == pytest.approx(1 / 2)


# --------------------------------------------------------------------------- conventions
def test_ties_broken_by_product_id_descending():
    qrels = {"q": {"a": 1, "b": 0, "c": 0}}
    run = {"q": {"a": 1.0, "b": 1.0, "c": 1.0}}  # all tied: order c, b, a
    assert one(reciprocal_rank(qrels, run)) == pytest.approx(1 / 3)
    # string order, not numeric: "p9" > "p10" so p9 ranks first
    qrels = {"q": {"p10": 1, "p9": 0}}
    run = {"q": {"p10": 0.5, "p9": 0.5}}
    assert one(reciprocal_rank(qrels, run)) == pytest.approx(1 / 2)
    # code-point order: "é" (U+00E9) > "z" > "Z"
    qrels = {"q": {"Z": 1, "z": 1, "é": 0}}
    run = {"q": {"Z": 0.0, "z": 0.0, "é": 0.0}}  # order é, z, Z
    assert one(reciprocal_rank(qrels, run)) == pytest.approx(1 / 2)
    assert one(average_precision(qrels, run)) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_tie_rule_in_prepared_ranking():
    # grades label the products so the ranked grade sequence reveals the order
    expected_order = ["d", "a", "p9", "p10", "c", "b"]  # 3.0 | 2.0 | four ties at 1.0, id descending
    qrels = {"q": {pid: 6 - i for i, pid in enumerate(expected_order)}}
    p = prepare(qrels, {"q": {"a": 2.0, "b": 1.0, "c": 1.0, "d": 3.0, "p10": 1.0, "p9": 1.0}})
    assert list(p.grade) == [6, 5, 4, 3, 2, 1]
    assert list(p.rank) == [1, 2, 3, 4, 5, 6]


def test_query_without_relevant_products_scores_zero_and_is_averaged():
    qrels = {"good": {"a": 1}, "none": {"b": 0, "c": 0}}
    run = {"good": {"a": 1.0}, "none": {"b": 1.0, "c": 0.5}}
    res = evaluate(qrels, run, ["ndcg@10", "map", "mrr", "p@1", "recall@10"])
    assert res.n_queries == 2
    for m in res.metrics:
        assert res.per_query.loc["none", m] == 0.0
        assert res.mean[m] == pytest.approx(0.5)  # (1 + 0) / 2


def test_no_relevant_skip_option():
    qrels = {"good": {"a": 1}, "none": {"b": 0}}
    run = {"good": {"a": 1.0}, "none": {"b": 1.0}}
    s = ndcg(qrels, run, 10, no_relevant="skip")
    assert list(s.index) == ["good"]
    res = evaluate(qrels, run, ["ndcg@10", "map"], no_relevant="skip")
    assert np.isnan(res.per_query.loc["none", "map"])
    assert res.mean == {"ndcg@10": 1.0, "map": 1.0}
    # rel_level decides what "no relevant" means: "good" has no grade >= 2
    assert average_precision(qrels, run, rel_level=2, no_relevant="skip").empty
    with pytest.raises(ValueError, match="no_relevant"):
        ndcg(qrels, run, 10, no_relevant="drop")


def test_qrels_query_missing_from_run_scores_zero_and_counts():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": {"a": 1.0}}
    res = evaluate(qrels, run, ["ndcg@10", "map", "mrr", "p@1", "recall@10", "dcg@10"])
    assert res.n_queries == 2
    assert res.per_query.loc["q2"].tolist() == [0.0] * 6
    assert res.mean["ndcg@10"] == pytest.approx(0.5)


def test_run_queries_not_in_qrels_are_ignored():
    qrels = {"q1": {"a": 1}}
    run = {"q1": {"a": 1.0}, "other": {"a": 1.0, "b": 2.0}}
    res = evaluate(qrels, run, ["ndcg@10", "map"])
    assert list(res.per_query.index) == ["q1"]
    assert res.mean == {"ndcg@10": 1.0, "map": 1.0}


def test_unjudged_products_count_as_non_relevant():
    qrels = {"q": {"a": 1}}
    run = {"q": {"unjudged": 2.0, "a": 1.0}}
    assert one(reciprocal_rank(qrels, run)) == pytest.approx(0.5)
    assert one(ndcg(qrels, run, 10)) == pytest.approx(1 / L2(3))


# --------------------------------------------------------------------------- invariance
ALL_SPECS = ["ndcg@10", "ndcg_lin@5", "ndcg", "dcg@10", "map", "map@20", "mrr", "mrr@3", "p@5", "p", "recall@10", "recall"]


def test_adding_a_constant_to_scores_changes_nothing():
    rng = np.random.default_rng(7)
    rows_q, rows_r = [], []
    for q in range(200):
        pids = [f"d{j}" for j in rng.permutation(40)[:25]]
        rows_q += [(f"q{q}", p, int(g)) for p, g in zip(pids[:15], rng.integers(0, 4, 15))]
        n = int(rng.integers(0, 25))
        # multiples of 1/8: exactly representable, and so are their sums with 1024 (ties preserved)
        rows_r += [(f"q{q}", p, float(s)) for p, s in zip(rng.permutation(pids)[:n], rng.integers(-20, 20, n) / 8)]
    qrels = pd.DataFrame(rows_q, columns=["query_id", "product_id", "grade"])
    run = pd.DataFrame(rows_r, columns=["query_id", "product_id", "score"])
    base = evaluate(qrels, run, ALL_SPECS)
    for c in (1024.0, -3.5):
        shifted = evaluate(qrels, run.assign(score=run["score"] + c), ALL_SPECS)
        pd.testing.assert_frame_equal(base.per_query, shifted.per_query, check_exact=True)


# --------------------------------------------------------------------------- inputs
def test_dataframe_and_dict_inputs_agree_and_ids_are_strings():
    qrels_df = pd.DataFrame({"query_id": [1, 1, 2], "product_id": [10, 9, 10], "grade": [1, 2, 0], "extra": 0})
    run_df = pd.DataFrame({"query_id": ["1", "1", "2"], "product_id": ["9", "10", "10"], "score": [1.0, 1.0, 3.0]})
    res_df = evaluate(qrels_df, run_df, ["ndcg@10", "map"])
    res_dict = evaluate({1: {10: 1, 9: 2}, 2: {10: 0}}, {"1": {"9": 1.0, "10": 1.0}, "2": {"10": 3.0}}, ["ndcg@10", "map"])
    pd.testing.assert_frame_equal(res_df.per_query, res_dict.per_query)
    assert list(res_df.per_query.index) == ["1", "2"]
    assert res_df.per_query.loc["1", "ndcg@10"] == pytest.approx(1.0)  # tie: "9" > "10" so 9 (grade 2) first


def test_to_frame_canonical_form():
    f = to_frame({"q": {"a": 1, "b": 0}}, "grade")
    assert list(f.columns) == ["query_id", "product_id", "grade"]
    assert f["grade"].dtype == np.int64
    r = to_frame(pd.DataFrame({"query_id": [1], "product_id": [2], "score": [np.float32(0.5)]}), "score")
    assert r["score"].dtype == np.float64 and r["query_id"].iloc[0] == "1"
    g = to_frame(pd.DataFrame({"query_id": ["q"], "product_id": ["a"], "grade": [2.0]}), "grade")
    assert g["grade"].dtype == np.int64


@pytest.mark.parametrize(
    "qrels, run, match",
    [
        ({"q": {"a": -1}}, {"q": {"a": 1.0}}, ">= 0"),
        ({"q": {"a": 1.5}}, {"q": {"a": 1.0}}, "integers"),
        ({"q": {"a": 1}}, {"q": {"a": float("nan")}}, "non-finite"),
        ({"q": {"a": 1}}, {"q": {"a": float("inf")}}, "non-finite"),
        (pd.DataFrame({"query_id": ["q"], "product_id": ["a"]}), {"q": {"a": 1.0}}, "missing column"),
        (
            pd.DataFrame({"query_id": ["q", "q"], "product_id": ["a", "a"], "grade": [1, 2]}),
            {"q": {"a": 1.0}},
            "duplicate",
        ),
        (
            {"q": {"a": 1}},
            pd.DataFrame({"query_id": ["q", "q"], "product_id": ["a", "a"], "score": [1.0, 2.0]}),
            "duplicate",
        ),
    ],
)
def test_invalid_inputs_raise(qrels, run, match):
    with pytest.raises(ValueError, match=match):
        ndcg(qrels, run, 10)


def test_wrong_types_and_bad_cutoffs():
    with pytest.raises(TypeError):
        ndcg([("q", "a", 1)], {"q": {"a": 1.0}})
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="cutoff"):
            ndcg({"q": {"a": 1}}, {"q": {"a": 1.0}}, bad)
    with pytest.raises(ValueError, match="rel_level"):
        average_precision({"q": {"a": 1}}, {"q": {"a": 1.0}}, rel_level=0)


def test_empty_inputs():
    res = evaluate({"q": {"a": 1}}, {}, ["ndcg@10", "map", "mrr", "p@5", "recall@100"])
    assert res.n_queries == 1 and all(v == 0.0 for v in res.mean.values())
    empty = evaluate({}, {}, ["ndcg@10"])
    assert empty.n_queries == 0 and math.isnan(empty.mean["ndcg@10"])


# --------------------------------------------------------------------------- registry / evaluate
def test_registry_contents_and_signatures():
    assert METRICS.names() == ["dcg", "map", "mrr", "ndcg", "p", "recall"]
    for name in METRICS:
        s = METRICS.get(name)({"q": {"a": 1}}, {"q": {"a": 1.0}}, None)
        assert isinstance(s, pd.Series) and s.index.name == "query_id"
    with pytest.raises(UnknownNameError) as ei:
        METRICS.get("ndgc")
    assert "ndcg" in str(ei.value)


def test_evaluate_result_shape():
    qrels = {"q1": {"a": 1, "b": 2}, "q2": {"c": 1}}
    run = {"q1": {"a": 1.0, "b": 2.0}, "q2": {"c": 1.0, "d": 5.0}}
    res = evaluate(qrels, run)
    assert res.metrics == ("ndcg@10", "map", "mrr", "recall@100")
    assert list(res.per_query.columns) == list(res.metrics) == list(res.mean)
    assert res.per_query.index.name == "query_id" and res.n_queries == 2
    assert res.mean["mrr"] == pytest.approx((1 + 0.5) / 2)
    assert res.per_query.loc["q2", "ndcg@10"] == pytest.approx(1 / L2(3))
    assert evaluate(qrels, run, "mrr").mean == {"mrr": pytest.approx(0.75)}
    with pytest.raises(UnknownNameError, match="valid names"):
        evaluate(qrels, run, ["ndcg@10", "bogus@3"])


def test_evaluate_handles_500_queries_x_1000_products():
    """A realistic size evaluates in one vectorised pass (speed is measured in benchmarks/, not here)."""
    rng = np.random.default_rng(0)
    nq, depth, catalog = 500, 1000, 44_000
    ids = np.array([f"P{j:06d}" for j in range(catalog)], dtype=object)
    run = pd.DataFrame(
        {
            "query_id": np.repeat([f"q{i}" for i in range(nq)], depth),
            "product_id": np.concatenate([ids[rng.choice(catalog, depth, replace=False)] for _ in range(nq)]),
            "score": rng.normal(size=nq * depth).round(3),
        }
    )
    qrels = run.sample(n=20_000, random_state=0)[["query_id", "product_id"]].assign(grade=rng.integers(0, 4, 20_000))
    res = evaluate(qrels, run, ["ndcg@10", "ndcg_lin@10", "map", "mrr", "p@5", "recall@100"])
    assert res.n_queries == nq
    assert res.per_query.shape == (nq, 6)
    assert np.isfinite(res.per_query.to_numpy()).all()
