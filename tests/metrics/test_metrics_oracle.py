"""ORACLE test: every metric equals ir_measures (pytrec_eval = trec_eval) per query.

Thousands of random queries with grades 0-3, deliberate score ties, mixed-format product
ids (string order != numeric order, non-ASCII), relevant products left unretrieved,
queries without relevant products, qrels queries missing from the run, empty rankings
and run-only queries.
"""
from __future__ import annotations

import ir_measures
import numpy as np
import pandas as pd
import pytest
from ir_measures import AP, P, R, RR, SetP, SetR, nDCG

from fusionrank.metrics import evaluate

EXP = {0: 0, 1: 1, 2: 3, 3: 7}

# our metric string -> ir_measures measure (pytrec_eval provider, i.e. trec_eval itself)
PAIRS = {
    "ndcg@10": nDCG(gains=EXP) @ 10,
    "ndcg@3": nDCG(gains=EXP) @ 3,
    "ndcg": nDCG(gains=EXP),
    "ndcg_lin@10": nDCG @ 10,
    "ndcg_lin": nDCG,
    "map": AP,
    "map@100": AP @ 100,
    "map@5": AP @ 5,
    "map(rel_level=2)": AP(rel=2),
    "mrr": RR,
    "mrr(rel_level=3)": RR(rel=3),
    "p@5": P @ 5,
    "p@20": P @ 20,
    "p(rel_level=2)@10": P(rel=2) @ 10,
    "p": SetP,
    "recall@100": R @ 100,
    "recall@5": R @ 5,
    "recall": SetR,
}
TOL = 1e-9


def _oracle_per_query(qrels, run, measures) -> pd.DataFrame:
    # One call per measure: ir_measures 0.4.3 merges nDCG variants with equal cutoffs into
    # one pytrec_eval invocation (e.g. nDCG@10 and nDCG(gains=...)@10 collide), so asking
    # for them together returns wrong values for one of them.
    rows = [
        (m.query_id, str(m.measure), m.value)
        for measure in measures
        for m in ir_measures.pytrec_eval.iter_calc([measure], qrels, run)
    ]
    df = pd.DataFrame(rows, columns=["query_id", "measure", "value"])
    return df.pivot(index="query_id", columns="measure", values="value")


@pytest.fixture(scope="module")
def ours_and_oracle(random_eval_data):
    d = random_eval_data
    ours = evaluate(d.qrels_df, d.run_df, list(PAIRS) + ["mrr@10", "mrr@1"])
    oracle = _oracle_per_query(d.qrels, d.run, list(PAIRS.values()))
    return ours, oracle


def test_oracle_covers_interesting_cases(random_eval_data):
    d = random_eval_data
    assert len(d.qrels) >= 3000
    no_rel = [q for q, g in d.qrels.items() if max(g.values()) == 0]
    missing = [q for q in d.qrels if q not in d.run]
    empty = [q for q in d.qrels if q in d.run and not d.run[q]]
    assert len(no_rel) > 50 and len(missing) > 50 and len(empty) > 10
    tied = sum(len(s) != len(set(s.values())) for s in d.run.values())
    assert tied > 1000
    unretrieved_rel = sum(
        any(g > 0 and p not in d.run.get(q, {}) for p, g in d.qrels[q].items()) for q in d.qrels
    )
    assert unretrieved_rel > 1000


def test_same_queries_as_oracle(ours_and_oracle):
    ours, oracle = ours_and_oracle
    assert ours.n_queries == len(oracle)
    assert sorted(ours.per_query.index) == sorted(oracle.index)
    assert not any(q.startswith("zz_unjudged") for q in ours.per_query.index)


@pytest.mark.parametrize("spec", list(PAIRS))
def test_per_query_equals_ir_measures(ours_and_oracle, spec):
    ours, oracle = ours_and_oracle
    expected = oracle[str(PAIRS[spec])]
    got = ours.per_query[spec].reindex(expected.index)
    diff = np.abs(got.to_numpy() - expected.to_numpy())
    worst = expected.index[int(np.argmax(diff))]
    assert diff.max() <= TOL, f"{spec}: query {worst} ours={got[worst]} oracle={expected[worst]}"


@pytest.mark.parametrize("spec", list(PAIRS))
def test_mean_equals_ir_measures_aggregate(random_eval_data, ours_and_oracle, spec):
    ours, _ = ours_and_oracle
    d = random_eval_data
    agg = ir_measures.pytrec_eval.calc_aggregate([PAIRS[spec]], d.qrels, d.run)
    assert ours.mean[spec] == pytest.approx(agg[PAIRS[spec]], abs=TOL)


@pytest.mark.parametrize("k", [1, 10])
def test_mrr_at_k_from_trec_eval_recip_rank(ours_and_oracle, k):
    # trec_eval has no cut-off RR; RR@k = RR if the first relevant rank is <= k, else 0.
    ours, oracle = ours_and_oracle
    rr = oracle[str(RR)]
    expected = rr.where(rr >= 1.0 / k - 1e-15, 0.0)
    got = ours.per_query[f"mrr@{k}"].reindex(expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=0, atol=TOL)


def test_dict_input_equals_dataframe_input(random_eval_data, ours_and_oracle):
    ours, _ = ours_and_oracle
    d = random_eval_data
    from_dicts = evaluate(d.qrels, d.run, list(PAIRS))
    pd.testing.assert_frame_equal(from_dicts.per_query, ours.per_query[list(PAIRS)], check_exact=False, rtol=0, atol=1e-15)
