"""Shared random evaluation data for the metrics tests (oracle and padded-NDCG tests)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest


@dataclass
class RandomEvalData:
    qrels: dict  # {qid: {pid: grade}}
    run: dict  # {qid: {pid: score}}
    qrels_df: pd.DataFrame
    run_df: pd.DataFrame


def _product_id(rng: np.random.Generator, q: int, j: int) -> str:
    # Mixed formats so string order differs from numeric order ("p9" > "p10"), plus
    # upper case and non-ASCII so the comparison is really by code point.
    style = j % 5
    if style == 0:
        return f"p{j}"
    if style == 1:
        return f"P{j:04d}"
    if style == 2:
        return f"p{j}-{q}"
    if style == 3:
        return f"é{j}"
    return f"{j}x"


def make_random_eval_data(n_queries: int = 3000, seed: int = 1234) -> RandomEvalData:
    rng = np.random.default_rng(seed)
    qrels: dict = {}
    run: dict = {}
    for q in range(n_queries):
        qid = f"q{q}"
        pool_size = int(rng.integers(5, 60))
        pool = [_product_id(rng, q, j) for j in rng.permutation(200)[:pool_size]]
        n_judged = int(rng.integers(1, min(30, pool_size) + 1))
        judged = pool[:n_judged]
        if rng.random() < 0.05:  # no relevant product at all
            grades = np.zeros(n_judged, dtype=int)
        else:
            grades = rng.choice(4, size=n_judged, p=[0.5, 0.25, 0.15, 0.10])
        qrels[qid] = {p: int(g) for p, g in zip(judged, grades)}

        if rng.random() < 0.05:  # qrels query absent from the run
            continue
        n_ret = int(rng.integers(0, pool_size + 1))  # sometimes 0 -> empty ranking
        retrieved = [pool[i] for i in rng.permutation(pool_size)[:n_ret]]  # some relevant ones unretrieved
        mode = rng.random()
        if mode < 0.4:  # heavy ties
            scores = rng.integers(0, 4, size=n_ret) / 4.0
        elif mode < 0.5:  # everything tied
            scores = np.full(n_ret, 0.5)
        elif mode < 0.6:  # negative, few ties
            scores = -rng.integers(0, 50, size=n_ret).astype(float)
        else:
            scores = rng.normal(size=n_ret)
        run[qid] = {p: float(s) for p, s in zip(retrieved, scores)}
    for extra in range(20):  # run-only queries: must be ignored
        run[f"zz_unjudged{extra}"] = {f"p{j}": float(rng.random()) for j in range(10)}

    qrels_df = pd.DataFrame(
        [(q, p, g) for q, d in qrels.items() for p, g in d.items()], columns=["query_id", "product_id", "grade"]
    )
    run_df = pd.DataFrame(
        [(q, p, s) for q, d in run.items() for p, s in d.items()], columns=["query_id", "product_id", "score"]
    )
    return RandomEvalData(qrels, run, qrels_df, run_df)


@pytest.fixture(scope="session")
def random_eval_data() -> RandomEvalData:
    return make_random_eval_data()
