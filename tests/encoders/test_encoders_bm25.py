"""BM25Encoder scores (Q @ W.T) against a straightforward BM25 written here."""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest

from fusionrank.encoders import BM25Encoder

DOCS = [
    "Red cotton T-shirt for men, slim fit",
    "Red red red wine glass set",
    "Blue denim jeans for women",
    "Men's leather wallet with coin pocket",
    "Cotton socks, pack of 5, red and blue",
    "Running shoes for men and women",
    "A very long description of a plain white cotton shirt for men with buttons and a collar and long sleeves",
    "",
]
QUERIES = ["red shirt", "men cotton", "blue blue jeans", "wallet", "white cotton shirt men", "t-shirt", "umbrella", "red"]


def tok(s: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", s.lower())


def reference_bm25(docs, queries, k1, b):
    """Textbook BM25 (Lucene idf); each distinct query term counts once."""
    toks = [tok(d) for d in docs]
    N, avgdl = len(docs), sum(map(len, toks)) / len(docs)
    df = Counter(t for d in toks for t in set(d))
    out = np.zeros((len(queries), N))
    for qi, q in enumerate(queries):
        for term in set(tok(q)):
            if term not in df:
                continue
            idf = math.log(1 + (N - df[term] + 0.5) / (df[term] + 0.5))
            for di, d in enumerate(toks):
                tf = d.count(term)
                out[qi, di] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avgdl)) if tf else 0.0
    return out


@pytest.mark.parametrize("k1, b", [(1.2, 0.75), (2.0, 0.3), (0.9, 1.0)])
def test_bm25_matches_reference(k1, b):
    enc = BM25Encoder(k1=k1, b=b).fit(DOCS)
    W = enc.encode(DOCS)
    Q = enc.encode_queries(QUERIES)
    got = (Q @ W.T).toarray()
    want = reference_bm25(DOCS, QUERIES, k1, b)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # sanity of the reference itself on obvious cases
    assert got[QUERIES.index("wallet")].argmax() == 3
    assert not got[QUERIES.index("umbrella")].any()
    red = got[QUERIES.index("red")]
    assert red[1] > red[0] > 0 and red[2] == 0   # more occurrences score higher, saturating


def test_bm25_new_documents_use_corpus_statistics():
    """Encoding unseen docs keeps the fitted idf/avgdl; unknown words only add length."""
    enc = BM25Encoder().fit(DOCS)
    new = ["red jeans", "red jeans with a totally unknown word"]
    s = (enc.encode_queries(["red"]) @ enc.encode(new).T).toarray()[0]
    assert s[0] > s[1] > 0
    toks = [tok(d) for d in DOCS]
    avgdl = sum(map(len, toks)) / len(toks)
    df = sum("red" in d for d in toks)
    idf = math.log(1 + (len(DOCS) - df + 0.5) / (df + 0.5))
    for d, score in zip(new, s):
        L = len(tok(d))
        assert score == pytest.approx(idf * 2.2 / (1 + 1.2 * (0.25 + 0.75 * L / avgdl)), rel=1e-5)
