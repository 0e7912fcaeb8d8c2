"""Query-grouped splits: seeded, deterministic, no query text in two splits."""
from __future__ import annotations

import pandas as pd
import pytest

from fusionrank.errors import FusionrankError
from fusionrank.ingest import split_queries


@pytest.fixture
def queries():
    texts = [f"query number {i}" for i in range(300)]
    # the same text under other ids, differing only by case and whitespace
    dups = [t.upper().replace(" ", "  ") + " " for t in texts[:60]]
    qs = texts + dups
    return pd.DataFrame({"query_id": [f"q{i}" for i in range(len(qs))], "query": qs})


def test_deterministic_and_seeded(queries):
    a = split_queries(queries, seed=3)
    b = split_queries(queries, seed=3)
    assert a.equals(b)
    assert not a.equals(split_queries(queries, seed=4))
    assert a.name == "split" and a.index.equals(queries.index)
    # row order does not matter: the assignment depends only on the texts and the seed
    shuffled = queries.sample(frac=1.0, random_state=0)
    assert split_queries(shuffled, seed=3).sort_index().equals(a)


def test_fractions_and_no_leakage(queries):
    fr = {"train": 0.7, "valid": 0.2, "test": 0.1}
    s = split_queries(queries, fr, seed=0)
    norm = queries["query"].str.lower().str.split().str.join(" ")
    per_text = pd.DataFrame({"t": norm, "s": s}).groupby("t")["s"].nunique()
    assert (per_text == 1).all()  # no normalised query text lands in two splits
    groups = pd.DataFrame({"t": norm, "s": s}).drop_duplicates("t")["s"].value_counts()
    assert set(groups.index) == set(fr)
    for name, f in fr.items():
        assert abs(groups[name] - f * 300) <= 2, (name, groups[name])
    assert s.value_counts().sum() == len(queries)


def test_default_and_two_way(queries):
    s = split_queries(queries)
    assert set(s) == {"train", "valid", "test"}
    s = split_queries(queries, {"train": 1.0, "test": 0.0})
    assert set(s) == {"train"}


@pytest.mark.parametrize("bad", [{"train": 0.8, "test": 0.1}, {"train": 1.2, "test": -0.2}, {"train": 0.5, "test": 0.6}])
def test_bad_fractions(queries, bad):
    with pytest.raises(FusionrankError, match="fractions"):
        split_queries(queries, bad)
