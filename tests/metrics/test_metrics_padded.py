"""The vectorised padded NDCG equals the DataFrame NDCG (trec_eval convention)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fusionrank.metrics import dcg_at_k_padded, ideal_dcg, ideal_dcg_by_query, ndcg, ndcg_at_k_padded


def _slates(data, rng):
    """Padded [B, S] arrays of each qrels query's retrieved products, in shuffled slot order."""
    qids = sorted(data.qrels)
    all_ids = sorted({p for d in data.run.values() for p in d} | {p for d in data.qrels.values() for p in d})
    id_rank = {p: i for i, p in enumerate(all_ids)}  # string order -> tie_break key
    S = max(len(data.run.get(q, {})) for q in qids) + 3
    B = len(qids)
    scores = np.zeros((B, S))
    grades = np.zeros((B, S), dtype=np.int64)
    tie = np.zeros((B, S))
    mask = np.zeros((B, S), dtype=bool)
    for b, q in enumerate(qids):
        items = list(data.run.get(q, {}).items())
        slots = rng.permutation(S)[: len(items)]  # padding interleaved with candidates
        for slot, (pid, s) in zip(slots, items):
            scores[b, slot] = s
            grades[b, slot] = data.qrels[q].get(pid, 0)
            tie[b, slot] = id_rank[pid]
            mask[b, slot] = True
    scores[~mask] = rng.normal(size=(~mask).sum()) * 100  # garbage in padding must not matter
    grades[~mask] = 3
    return qids, scores, grades, tie, mask


@pytest.mark.parametrize("gain", ["exp", "linear"])
@pytest.mark.parametrize("k", [10, 3])
def test_padded_ndcg_equals_dataframe_ndcg(random_eval_data, gain, k):
    rng = np.random.default_rng(5)
    qids, scores, grades, tie, mask = _slates(random_eval_data, rng)
    expected = ndcg(random_eval_data.qrels, random_eval_data.run, k, gain=gain).loc[qids].to_numpy()

    idcg = ideal_dcg_by_query(random_eval_data.qrels, k, gain=gain).loc[qids].to_numpy()
    got = ndcg_at_k_padded(scores, grades, k, mask=mask, ideal_dcg=idcg, tie_break=tie, gain=gain)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)

    # same ideal DCG from the ragged helper
    ragged = [list(random_eval_data.qrels[q].values()) for q in qids]
    np.testing.assert_allclose(ideal_dcg(ragged, k, gain), idcg, rtol=0, atol=1e-12)


def test_padded_speed_smoke():
    rng = np.random.default_rng(0)
    B, S = 512, 100
    out = ndcg_at_k_padded(rng.normal(size=(B, S)), rng.integers(0, 4, (B, S)), 10)
    assert out.shape == (B,) and np.all((out >= 0) & (out <= 1))


def test_position_tie_rule_and_secondary_key():
    scores = np.array([[1.0, 1.0, 0.0]])
    grades = np.array([[0, 1, 0]])
    # default: equal scores -> lower slot first -> relevant item at rank 2
    assert dcg_at_k_padded(scores, grades, 10, gain="linear")[0] == pytest.approx(1 / math.log2(3))
    # tie_break descending: slot 1 has the larger key -> rank 1
    tb = np.array([[0, 5, 9]])
    assert dcg_at_k_padded(scores, grades, 10, tie_break=tb, gain="linear")[0] == pytest.approx(1.0)


def test_mask_and_ideal_conventions():
    scores = np.array([[0.1, 0.9, 5.0], [0.0, 0.0, 0.0]])
    grades = np.array([[1, 2, 3], [0, 0, 0]])
    mask = np.array([[True, True, False], [True, True, True]])
    # masked grade-3 item is ignored; ideal from the slate's own masked grades -> perfect order
    got = ndcg_at_k_padded(scores, grades, 10, mask=mask)
    assert got.tolist() == [pytest.approx(1.0), 0.0]  # row with ideal 0 -> 0
    # ideal from all judged products of the query (a grade-3 product exists but is not in the slate)
    idcg = np.array([ideal_dcg([3, 2, 1], 10), 0.0])
    got = ndcg_at_k_padded(scores, grades, 10, mask=mask, ideal_dcg=idcg)
    assert got[0] == pytest.approx((3 + 1 / math.log2(3)) / (7 + 3 / math.log2(3) + 1 / 2))


def test_ideal_dcg_helper_forms():
    assert ideal_dcg([1, 3, 0], None, "linear") == pytest.approx(3 + 1 / math.log2(3))
    assert ideal_dcg(np.array([1, 3, 0]), 1) == pytest.approx(7.0)
    assert ideal_dcg([], 10) == 0.0
    padded = np.array([[3, 1, 0], [2, 0, 0]])  # zero padding adds nothing
    np.testing.assert_allclose(ideal_dcg(padded, 10), [7 + 1 / math.log2(3), 3.0])
    np.testing.assert_allclose(ideal_dcg([[3, 1], [2]], 10), [7 + 1 / math.log2(3), 3.0])


def test_padded_input_validation():
    with pytest.raises(ValueError, match="shape"):
        ndcg_at_k_padded(np.zeros((2, 3)), np.zeros((2, 4)), 10)
    with pytest.raises(ValueError, match="NaN"):
        ndcg_at_k_padded(np.array([[np.nan, 1.0]]), np.array([[1, 0]]), 10)
    with pytest.raises(ValueError, match="ideal_dcg"):
        ndcg_at_k_padded(np.zeros((2, 3)), np.zeros((2, 3)), 10, ideal_dcg=np.ones(3))
    # NaN in padding is fine
    out = ndcg_at_k_padded(np.array([[np.nan, 1.0]]), np.array([[0, 1]]), 10, mask=np.array([[False, True]]))
    assert out[0] == pytest.approx(1.0)


def test_ideal_dcg_by_query_matches_dataframe_qrels():
    qrels = pd.DataFrame({"query_id": ["a", "a", "b"], "product_id": ["x", "y", "x"], "grade": [2, 1, 0]})
    s = ideal_dcg_by_query(qrels, 10, gain="linear")
    assert s.to_dict() == {"a": pytest.approx(2 + 1 / math.log2(3)), "b": 0.0}
