"""LexicalField scores like an independent BM25 written out below, fitted from scratch on the live documents."""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest

from fusionrank.encoders import BM25Encoder
from fusionrank.ranking.lexical import LexicalField

WORDS = "red blue green black white shirt dress jeans watch shoes men women casual formal cotton silk zorblax".split()


def random_docs(rng, n):
    return [" ".join(rng.choice(WORDS, size=rng.integers(0, 7))) for _ in range(n)]


def reference(live_docs: list[str], queries: list[str], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """[Q, D] BM25 by the textbook formula (Lucene idf), in plain Python, over ``live_docs``."""
    toks = [re.findall(r"[a-z0-9]+", d.lower()) for d in live_docs]
    n = len(toks)
    avgdl = sum(map(len, toks)) / n
    df = Counter(t for d in toks for t in set(d))
    out = np.zeros((len(queries), n))
    for qi, q in enumerate(queries):
        for t in set(re.findall(r"[a-z0-9]+", q.lower())):
            if t not in df:
                continue
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            for di, d in enumerate(toks):
                tf = d.count(t)
                if tf:
                    out[qi, di] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avgdl))
    return out


def test_bm25_encoder_is_a_view_of_the_field():
    """BM25 as sparse vectors (the registered encoder) gives the same scores as the index it wraps."""
    docs = random_docs(np.random.default_rng(3), 40)
    enc = BM25Encoder().fit(docs)
    np.testing.assert_allclose((enc.encode_queries(QUERIES) @ enc.encode(docs).T).toarray(), reference(docs, QUERIES),
                               rtol=1e-5, atol=1e-6)


def dense(field: LexicalField, query: str, rows: list[int]) -> np.ndarray:
    r, s = field.score(field.query_terms(query)).arrays()
    out = dict(zip(r.tolist(), s.tolist()))
    return np.array([out.get(i, 0.0) for i in rows])


QUERIES = ["red shirt", "black watch men", "zorblax", "silk silk dress", "nothing here", "women casual cotton shoes"]


def test_fresh_index_matches_the_encoder():
    docs = random_docs(np.random.default_rng(0), 60)
    f = LexicalField.build(docs)
    ref = reference(docs, QUERIES)
    for qi, q in enumerate(QUERIES):
        np.testing.assert_allclose(dense(f, q, list(range(60))), ref[qi], rtol=1e-5, atol=1e-6)


@pytest.fixture(autouse=True)
def exact_bm25(monkeypatch):
    """These tests compare with a from-scratch BM25 to 1e-5: no avgdl drift allowed."""
    monkeypatch.setattr(LexicalField, "avgdl_tolerance", 0.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_after_adds_and_deletes_it_matches_a_rebuild(seed):
    rng = np.random.default_rng(seed)
    docs = random_docs(rng, 40)
    f = LexicalField.build(docs)
    texts = dict(enumerate(docs))
    live = set(range(40))
    nxt = 40
    for step in range(80):
        if rng.random() < 0.6 or not live:
            t = " ".join(rng.choice(WORDS, size=rng.integers(1, 6)))
            f.add(nxt, t)
            texts[nxt] = t
            live.add(nxt)
            nxt += 1
        else:
            r = int(rng.choice(sorted(live)))
            f.delete(r, texts[r])
            live.discard(r)
        if step % 20 == 19:
            f.merge()
    rows = sorted(live)
    ref = reference([texts[r] for r in rows], QUERIES)
    for qi, q in enumerate(QUERIES):
        np.testing.assert_allclose(dense(f, q, rows), ref[qi], rtol=1e-5, atol=1e-6)
        r, _ = f.score(f.query_terms(q)).arrays()
        assert set(r.tolist()) <= live  # deleted rows never come back


def test_matched_counts_distinct_query_terms_and_filter():
    f = LexicalField.build(["red shirt", "red red dress", "blue shirt", ""])
    res = f.score(f.query_terms("red shirt red"))
    r, s = res.arrays()
    assert dict(zip(r.tolist(), res.matched(r).tolist())) == {0: 2, 1: 1, 2: 1}
    assert res.matched(np.array([3])).tolist() == [0]
    allowed = np.array([False, True, True, True])
    r, _ = f.score(f.query_terms("red shirt"), allowed).arrays()
    assert sorted(r.tolist()) == [1, 2]


def test_new_terms_become_searchable_and_deleted_terms_vanish():
    f = LexicalField.build(["red shirt", "blue shirt"])
    assert len(f.query_terms("zorblax")) == 0
    f.add(2, "zorblax sneakers")
    r, s = f.score(f.query_terms("zorblax")).arrays()
    assert r.tolist() == [2] and s[0] > 0
    f.delete(2, "zorblax sneakers")
    assert len(f.query_terms("zorblax")) == 0  # df 0: not a query term, as after a rebuild


def test_rows_are_append_only():
    f = LexicalField.build(["a b"])
    with pytest.raises(ValueError, match="append-only"):
        f.add(0, "c")


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(5)
    docs = random_docs(rng, 30)
    f = LexicalField.build(docs)
    f.add(30, "zorblax red")
    f.delete(3, docs[3])
    f.save(tmp_path / "lex")
    g = LexicalField.load(tmp_path / "lex")
    for q in QUERIES:
        a, b = f.score(f.query_terms(q)).arrays(), g.score(g.query_terms(q)).arrays()
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-6)


@pytest.mark.parametrize("dense_fraction", [0.0, 1e9])  # always dense / always sparse
def test_dense_and_sparse_results_agree_with_brute_force(monkeypatch, dense_fraction):
    rng = np.random.default_rng(7)
    docs = random_docs(rng, 5000)
    f = LexicalField.build(docs)
    for r in rng.choice(5000, 300, replace=False):  # dead rows must never surface
        f.delete(int(r), docs[r])
    f.add(5000, "zorblax silk")
    monkeypatch.setattr(LexicalField, "dense_fraction", dense_fraction)
    for q in QUERIES:
        res = f.score(f.query_terms(q))
        rows, s = res.arrays()
        assert f.live[rows].all()
        for depth in (1, 10, 200):
            want = rows[np.lexsort((rows, -s))][:depth]  # by score, ties to the lower row
            assert res.top(depth).tolist() == want.tolist()
        probe = np.array([0, 1, 2, 4999, 5000])
        np.testing.assert_allclose(res.at(probe), [dict(zip(rows.tolist(), s.tolist())).get(int(p), 0.0) for p in probe], rtol=1e-6)
        terms = set(q.split())
        texts = docs + ["zorblax silk"]
        np.testing.assert_array_equal(res.matched(probe), [len(terms & set(texts[p].split())) for p in probe])


def test_default_tolerance_keeps_scores_close_to_exact(monkeypatch):
    monkeypatch.setattr(LexicalField, "avgdl_tolerance", 1e-4)
    rng = np.random.default_rng(11)
    docs = random_docs(rng, 3000)
    f = LexicalField.build(docs)
    f.score(f.query_terms("red shirt"))  # caches the weights
    texts = dict(enumerate(docs))
    for i in range(3000, 3003):  # a few writes: avgdl drifts by ~1e-4 at most
        texts[i] = "red silk shirt"
        f.add(i, texts[i])
    rows = sorted(texts)
    ref = reference([texts[r] for r in rows], QUERIES)
    for qi, q in enumerate(QUERIES):
        np.testing.assert_allclose(dense(f, q, rows), ref[qi], rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("share", [0.0005, 0.01, 0.3, 1.0])  # matching rows: fewer than the sample needs .. all
def test_dense_top_matches_a_full_sort(share):
    """The dense accumulator's top rows (sampled threshold) equal a full sort by score then row, with many ties."""
    from fusionrank.ranking.lexical import LexScores

    rng = np.random.default_rng(3)
    n = 100_000
    for _ in range(5):
        dense = np.zeros(n)
        hit = rng.random(n) < share
        dense[hit] = rng.integers(1, 40, hit.sum()) / 8  # few distinct scores: ties at every cut
        res = LexScores(None, np.zeros(0, np.int64), None, None, dense)
        nz = np.flatnonzero(dense)
        want = nz[np.lexsort((nz, -dense[nz]))]
        for depth in (1, 10, 200, 1000):
            rows, s = res.top_scored(depth)
            assert rows.tolist() == want[:depth].tolist()
            np.testing.assert_array_equal(s, dense[rows])
