"""Hybrid candidate retrieval: BM25 plus vector search, merged by reciprocal rank fusion.

Each *source* returns its top ``depth`` products for a query; the merged list
ranks products by RRF (Cormack et al. 2009), ``sum_s 1 / (rrf_k + rank_s)``, and
keeps the top ``n`` (default 200). Training, evaluation and search all use this
same stage, so the ranker learns on the candidate distribution it will meet.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


@dataclass
class CandidateConfig:
    n: int = 200
    depth: int = 200
    rrf_k: float = 60.0
    sources: tuple[str, ...] = ("bm25:title", "bm25:transcript", "dense:title", "dense:image_proj", "dense:transcript")
    weights: dict = field(default_factory=dict)  # optional per-source RRF weight (default 1)


def topk_rows(scores: np.ndarray, k: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` largest entries of each row (descending), ties by lower index."""
    s = scores if valid is None else np.where(valid, scores, -np.inf)
    k = min(k, s.shape[1])
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    ps = np.take_along_axis(s, part, 1)
    # argpartition picks an arbitrary subset of the entries tied with the k-th value;
    # take the lowest-indexed ones instead (only where the tied value is not padded anyway)
    kth = ps.min(1)
    floor = 0 if valid is None else -np.inf
    tied = np.flatnonzero((kth > floor) & ((s >= kth[:, None]).sum(1) > k))
    for b in tied:
        gt, eq = np.flatnonzero(s[b] > kth[b]), np.flatnonzero(s[b] == kth[b])
        part[b] = np.concatenate([gt, eq[:k - len(gt)]])
    if len(tied):
        ps = np.take_along_axis(s, part, 1)
    order = np.lexsort((part, -ps), axis=1)
    out = np.take_along_axis(part, order, 1)
    ok = np.isfinite(np.take_along_axis(s, out, 1)) & (np.take_along_axis(s, out, 1) > (0 if valid is None else -np.inf))
    return np.where(ok, out, -1)


def sparse_topk(q: sp.csr_matrix, docs_t: sp.csc_matrix | sp.csr_matrix, k: int, chunk: int = 256) -> np.ndarray:
    """Top ``k`` documents by sparse dot product (BM25) for each query row; -1 pads zero scores."""
    out = np.full((q.shape[0], k), -1, np.int64)
    for i in range(0, q.shape[0], chunk):
        s = (q[i:i + chunk] @ docs_t).toarray()
        out[i:i + chunk, :min(k, s.shape[1])] = topk_rows(s, k)
    return out


def rrf_merge(lists: list[np.ndarray], n: int, rrf_k: float = 60.0, weights: list[float] | None = None) -> np.ndarray:
    """Merge per-source ranked row lists (each ``[depth]``, -1 padded) into the top ``n`` rows.

    Ties in the fused score go to the lower row.
    """
    rows, vals = [], []
    for li, r in enumerate(lists):
        r = np.asarray(r, np.int64)
        ok = r >= 0
        w = 1.0 if weights is None else weights[li]
        rows.append(r[ok])
        vals.append(w / (rrf_k + np.flatnonzero(ok) + 1.0))
    if not rows or not sum(len(r) for r in rows):
        return np.zeros(0, np.int64)
    allr, allv = np.concatenate(rows), np.concatenate(vals)
    urows, inv = np.unique(allr, return_inverse=True)
    score = np.bincount(inv, weights=allv, minlength=len(urows))
    order = np.lexsort((urows, -score))[:n]
    return urows[order]
