"""A trainable text encoder: MiniLM with a small residual adapter learned on the catalogue.

``v = normalise(m + W m)`` with ``m`` the MiniLM vector (L2-normalised, 384-d) and ``W`` a
384x384 matrix initialised at zero, so the untrained adapter *is* MiniLM. One map serves
every vector that lives in MiniLM space: queries, titles, transcripts and photos projected
into that space (:class:`~fusionrank.encoders.image.ImageTextProjection`); cosines between
any two of them keep their meaning.

Training (:meth:`MiniLMAdapter.fit`) is a symmetric InfoNCE loss (in-batch negatives, as in
CLIP) over :class:`PairSet` s of base vectors -- a title and the transcript of the same
product, a title and its projected photo, a training query and a product judged relevant for
it, with hard negatives for the query pairs -- plus ``penalty * ||W||_F^2``, which keeps the
identity path dominant: what MiniLM already knows of the catalogue's vocabulary is bent, not
overwritten, by the queries' phrasing.

The adapter reads base vectors, never text, when it trains or when the store's adapted
features are derived (:mod:`fusionrank.adaptation`): 44k titles are not re-encoded by the
transformer. Only :meth:`encode` (new texts) runs MiniLM.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from ..errors import FusionrankError, NotFittedError
from .base import ENCODERS, Encoder
from .text import MiniLMEncoder

PAIR_SOURCES = ("transcript", "photo", "judgments")


@dataclass
class PairSet:
    """Pairs of base vectors that should end up close: ``left[i]`` with ``right[i]``.

    ``negatives`` (n, h): rows of ``pool`` that are known *not* to match ``left[i]`` (hard
    negatives, e.g. products the candidate stage ranks high for a query but nobody judged
    relevant). ``groups`` (n,): pairs that share a group (the same query) are never each
    other's negatives. ``weight`` scales the source's loss.
    """

    name: str
    left: np.ndarray
    right: np.ndarray
    negatives: np.ndarray | None = None
    pool: np.ndarray | None = None
    groups: np.ndarray | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        self.left = np.asarray(self.left, np.float32)
        self.right = np.asarray(self.right, np.float32)
        if self.left.ndim != 2 or self.left.shape != self.right.shape:
            raise FusionrankError(f"pair set {self.name!r}: left and right must be (n, d) of one shape; "
                                  f"got {self.left.shape} and {self.right.shape}")
        if (self.negatives is None) != (self.pool is None):
            raise FusionrankError(f"pair set {self.name!r}: negatives and pool go together")
        if self.negatives is not None:
            self.negatives = np.asarray(self.negatives, np.int64)
            self.pool = np.asarray(self.pool, np.float32)
            if self.negatives.ndim != 2 or len(self.negatives) != len(self.left):
                raise FusionrankError(f"pair set {self.name!r}: negatives must be (n, h) with n = {len(self.left)}; "
                                      f"got {self.negatives.shape}")
            if self.negatives.size and (self.negatives.min() < 0 or self.negatives.max() >= len(self.pool)):
                raise FusionrankError(f"pair set {self.name!r}: negatives must be rows of pool (0..{len(self.pool) - 1})")
        if self.groups is not None:
            self.groups = np.unique(np.asarray(self.groups), return_inverse=True)[1].reshape(-1).astype(np.int64)
            if self.groups.shape != (len(self.left),):
                raise FusionrankError(f"pair set {self.name!r}: groups must be ({len(self.left)},); got {self.groups.shape}")

    def __len__(self) -> int:
        return len(self.left)

    def subset(self, rows: np.ndarray) -> "PairSet":
        return PairSet(self.name, self.left[rows], self.right[rows],
                       None if self.negatives is None else self.negatives[rows], self.pool,
                       None if self.groups is None else self.groups[rows], self.weight)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def recall_at_k(queries: np.ndarray, targets: np.ndarray, pool: np.ndarray, k: int = 10) -> float:
    """Share of pairs whose target (a row of ``pool``, ``targets[i]``) is in the top ``k`` of ``pool`` for ``queries[i]``."""
    if not len(queries):
        return float("nan")
    hits = 0
    for s in range(0, len(queries), 512):  # a block of scores at a time: 512 x 44k floats
        sc = queries[s:s + 512] @ pool.T
        own = sc[np.arange(len(sc)), targets[s:s + 512]][:, None]
        hits += int(((sc > own).sum(1) < k).sum())
    return hits / len(queries)


@dataclass
class RetrievalCheck:
    """Held-out pairs to measure the fit by: ``queries[i]`` should retrieve row ``rows[i]`` of ``pool``."""

    queries: np.ndarray
    rows: np.ndarray
    pool: np.ndarray

    def recall(self, transform, k: int = 10) -> float:
        """recall@k with both sides mapped by ``transform`` (base vectors -> compared vectors)."""
        return recall_at_k(transform(l2_normalise(self.queries)), np.asarray(self.rows, np.int64), transform(l2_normalise(self.pool)), k)


@ENCODERS.register("minilm_adapter")
class MiniLMAdapter(Encoder):
    """MiniLM + a residual linear adapter trained on the catalogue (see the module docstring), 384-d.

    ``sources``: which pair sets :mod:`fusionrank.adaptation` builds (any of :data:`PAIR_SOURCES`;
    a source the store lacks is skipped). ``penalty``: weight of ``||W||_F^2``. ``hard_negatives``:
    per query pair, from the top ``negative_depth`` products of the base MiniLM and BM25.
    ``max_positives``: grade-3 products per training query at most. The ranker's validation queries
    (held out of the training split) measure the fit: their recall@10 with and without the adapter.

    In an experiment config::

        [encoders.text]
        name = "minilm_adapter"
        args = { epochs = 4, penalty = 1e-4, sources = ["transcript", "photo", "judgments"] }

    The defaults were chosen on fashion44k's validation queries (recall@10 of the grade-3 products over
    the catalogue's titles, ``benchmarks/text_adapter.py``), never on dev: MiniLM 0.395; penalty 1.0 -> 0.399
    and 0.1 -> 0.421 (8 epochs at lr 1e-3), 0.01 -> 0.472, 1e-3 -> 0.498, 1e-4 -> 0.517, 0 -> 0.517 (4 epochs
    at lr 3e-3). Below 1e-3 the penalty hardly matters in 4 epochs; it stays as a guard for longer fits.
    """

    name = "minilm_adapter"
    modality = "text"
    trainable = True
    base: ClassVar[str] = MiniLMEncoder.name
    dim = MiniLMEncoder.dim

    def __init__(self, epochs: int = 4, batch_size: int = 256, lr: float = 3e-3, temperature: float = 0.05,
                 penalty: float = 1e-4, sources: Sequence[str] = PAIR_SOURCES, hard_negatives: int = 8,
                 negative_depth: int = 50, max_positives: int = 8, seed: int = 0):
        bad = [s for s in sources if s not in PAIR_SOURCES]
        if bad or not len(sources):
            raise FusionrankError(f"minilm_adapter: unknown pair source {bad[0]!r}; valid: {', '.join(PAIR_SOURCES)}" if bad
                                  else f"minilm_adapter: sources must name at least one of {', '.join(PAIR_SOURCES)}")
        if temperature <= 0 or penalty < 0 or epochs < 0:
            raise FusionrankError(f"minilm_adapter: temperature must be > 0, penalty and epochs >= 0; "
                                  f"got temperature={temperature}, penalty={penalty}, epochs={epochs}")
        self.epochs, self.batch_size, self.lr, self.temperature, self.penalty = int(epochs), int(batch_size), lr, temperature, penalty
        self.sources = tuple(sources)
        self.hard_negatives, self.negative_depth, self.max_positives = int(hard_negatives), int(negative_depth), int(max_positives)
        self.seed = seed
        self.weight_: np.ndarray | None = None  # W, (dim, dim): v = normalise(m + m @ W.T)
        self.history_: list[dict] = []
        self._minilm = MiniLMEncoder()

    def config(self) -> dict[str, Any]:
        keys = ("epochs", "batch_size", "lr", "temperature", "penalty", "hard_negatives", "negative_depth", "max_positives", "seed")
        return {k: getattr(self, k) for k in keys} | {"sources": list(self.sources)}

    # the map -------------------------------------------------------------------------------------
    def initialise(self) -> "MiniLMAdapter":
        """The untrained adapter: ``W = 0``, so :meth:`adapt` is the identity on unit vectors."""
        self.weight_ = np.zeros((self.dim, self.dim), np.float32)
        self.history_ = []
        return self

    def adapt(self, vectors: np.ndarray) -> np.ndarray:
        """Base MiniLM vectors ``(n, 384)`` -> adapted, L2-normalised ``(n, 384)``. The one implementation of the map."""
        if self.weight_ is None:
            raise NotFittedError(self)
        m = np.asarray(vectors, np.float32)
        if m.ndim != 2 or m.shape[1] != self.dim:
            raise FusionrankError(f"minilm_adapter: expected base vectors (n, {self.dim}); got {m.shape}")
        return l2_normalise(m + m @ self.weight_.T)

    def encode(self, items: Sequence[str]) -> np.ndarray:
        if self.weight_ is None:
            raise NotFittedError(self)
        return self.adapt(self._minilm.encode(items))

    # training ------------------------------------------------------------------------------------
    def fit(self, pairs: Sequence[PairSet], valid: RetrievalCheck | None = None, log=None) -> "MiniLMAdapter":
        """Train ``W`` on ``pairs`` (base vectors). ``valid``: pairs never trained on, whose recall@10 is recorded in
        ``history_`` per epoch, and for the untrained adapter (MiniLM itself) as ``epoch = -1``."""
        import torch
        import torch.nn.functional as F

        pairs = [p for p in pairs if len(p) >= 2]
        if not pairs:
            raise FusionrankError("minilm_adapter: no pairs to train on (no source gave two or more pairs)")
        for p in pairs:
            if p.left.shape[1] != self.dim:
                raise FusionrankError(f"pair set {p.name!r}: vectors are {p.left.shape[1]}-d, the adapter maps {self.dim}-d")
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.initialise()
        W = torch.zeros((self.dim, self.dim), requires_grad=True)
        opt = torch.optim.Adam([W], lr=self.lr)
        tensors = [(p, torch.from_numpy(l2_normalise(p.left)), torch.from_numpy(l2_normalise(p.right)),
                    None if p.pool is None else torch.from_numpy(l2_normalise(p.pool))) for p in pairs]

        def amap(x):
            return F.normalize(x + x @ W.T, dim=-1)

        def batch_loss(p: PairSet, L, R, pool, idx: np.ndarray):
            a, b = amap(L[idx]), amap(R[idx])
            logits = a @ b.T / self.temperature
            same = (L[idx] @ L[idx].T > 0.999) | (R[idx] @ R[idx].T > 0.999)  # duplicates are positives for each other
            if p.groups is not None:
                g = torch.from_numpy(p.groups[idx])
                same |= g[:, None] == g[None, :]
            target = same.float() / same.float().sum(1, keepdim=True)
            fwd = logits
            tgt_fwd = target
            if p.negatives is not None and p.negatives.shape[1]:
                raw = pool[torch.from_numpy(p.negatives[idx])]                 # (B, h, d)
                neg_logits = torch.einsum("bd,bhd->bh", a, amap(raw)) / self.temperature
                # a "negative" with the positive's very vector (a duplicate title nobody judged) is no negative
                neg_logits = neg_logits.masked_fill(torch.einsum("bd,bhd->bh", R[idx], raw) > 0.999, -1e4)
                fwd = torch.cat([logits, neg_logits], 1)
                tgt_fwd = torch.cat([target, torch.zeros_like(neg_logits)], 1)
            return 0.5 * (F.cross_entropy(fwd, tgt_fwd) + F.cross_entropy(logits.T, target))  # `same` is symmetric

        if valid is not None:
            self.history_.append({"epoch": -1, "valid_recall@10": valid.recall(self.adapt)})
            if log:
                log(f"minilm_adapter untrained (MiniLM): valid_recall@10 {self.history_[-1]['valid_recall@10']:.4f}")
        for ep in range(self.epochs):
            batches = [(k, order[i:i + self.batch_size]) for k, (p, *_) in enumerate(tensors)
                       for order in [rng.permutation(len(p))] for i in range(0, len(p), self.batch_size)]
            batches = [batches[j] for j in rng.permutation(len(batches)) if len(batches[j][1]) >= 2]
            totals = {p.name: [0.0, 0] for p in pairs}
            for k, idx in batches:
                p, L, R, pool = tensors[k]
                loss = p.weight * batch_loss(p, L, R, pool, idx)
                reg = self.penalty * (W ** 2).sum()
                opt.zero_grad()
                (loss + reg).backward()
                opt.step()
                totals[p.name][0] += loss.item() * len(idx)
                totals[p.name][1] += len(idx)
            self.weight_ = W.detach().numpy().copy()
            rec: dict[str, Any] = {"epoch": ep, "norm_W": float(np.linalg.norm(self.weight_)),
                                   **{f"loss/{n}": t / max(1, c) for n, (t, c) in totals.items()}}
            if valid is not None:
                rec["valid_recall@10"] = valid.recall(self.adapt)
            self.history_.append(rec)
            if log:
                log("minilm_adapter epoch " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()))
        self.weight_ = W.detach().numpy().astype(np.float32).copy()
        return self

    # persistence ---------------------------------------------------------------------------------
    def _state_signature(self) -> dict[str, Any]:
        if self.weight_ is None:
            return {}
        import hashlib

        return {"weights": hashlib.sha1(np.ascontiguousarray(self.weight_, np.float32).tobytes()).hexdigest()[:12]}

    def _save_state(self, d: Path) -> None:
        if self.weight_ is None:
            raise NotFittedError(self)
        np.save(d / "adapter.npy", self.weight_.astype(np.float32))
        (d / "history.json").write_text(json.dumps(self.history_, indent=1))

    def _load_state(self, d: Path) -> None:
        if (d / "adapter.npy").exists():
            w = np.load(d / "adapter.npy")
            if w.shape != (self.dim, self.dim):
                raise FusionrankError(f"{d / 'adapter.npy'}: expected a ({self.dim}, {self.dim}) matrix; got {w.shape}")
            self.weight_ = w.astype(np.float32)
            if (d / "history.json").exists():
                self.history_ = json.loads((d / "history.json").read_text())
