"""What the ranker saw, captured at serving time and rebuilt for training: the one bridge between the two.

:func:`served_slate` turns one :class:`~fusionrank.ranking.pipeline.SearchResult` into a
:class:`~fusionrank.feedback.schema.ServedSlate`: for every product shown, in shown order, the
scalar features and modality masks the ranker scored, its score, the query vector, and a
*vector key* naming the product's embedding rows. The embedding rows themselves go to the
store's ``vectors`` table (:class:`VectorArchive`): every product's when the service starts, a
product added or changed later the first time it is served. So a logged slate can be rebuilt
after the product has changed, or after the catalogue was rebuilt.

:func:`rebuild_slates` does the reverse: logged slates -> :class:`~fusionrank.ranking.features.Slates`
plus the embedding tables they index, the inputs ``ranker.predict`` had. A test proves the rebuilt
inputs bit-identical to the served ones, and the scores equal to float32 rounding.
"""
from __future__ import annotations

import threading
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import FusionrankError
from ..modalities import TABLES
from ..ranking.features import Slates
from .schema import ServedSlate, vector_key


class VectorArchive:
    """Vector keys of catalogue rows (cached per row: rows are never rewritten in place), and which keys the store has."""

    def __init__(self, known: Iterable[str] = ()):
        # per catalogue (one by its id; every candidate view under "catalogue", by the catalogue rows it holds), the
        # key of each row as ASCII bytes in one numpy array (b"": not computed yet): no Python string per row, so that
        # a worker process forked from a loaded one copies no page of them when it reads a key (a cached str would have
        # its reference count written)
        self._row_keys: dict[Any, np.ndarray] = {}
        self._stored: set[str] = set(known)
        self._lock = threading.Lock()

    @staticmethod
    def rows(catalog, row: int) -> list[np.ndarray]:
        """The embedding rows of catalogue row ``row``, one per table (copies, float32)."""
        return [np.array(catalog.emb[t][row], np.float32) for t in TABLES]

    def key(self, catalog, row: int) -> str:
        """The vector key of catalogue row ``row`` (its vectors are read only the first time: the key is cached).

        A sharded search's candidate-only view (:meth:`CatalogTables.view`) lives for one search: its rows are
        cached by the whole catalogue's row they hold (``catalogue_rows``), which no write rewrites either."""
        whole = getattr(catalog, "catalogue_rows", None)
        tag, at = ("catalogue", int(whole[row])) if whole is not None else (id(catalog), int(row))
        keys = self._row_keys.get(tag)
        if keys is not None and at < len(keys):
            k = keys[at]
            if k:
                return k.decode("ascii")
        k = vector_key(self.rows(catalog, row))
        if keys is None or at >= len(keys):
            size = max(at + 1, 2 * (0 if keys is None else len(keys)), 1024)
            grown = np.zeros(size, f"S{len(k)}")  # every key is as long (a fixed-size digest, in hex)
            if keys is not None:
                grown[:len(keys)] = keys
            self._row_keys[tag] = keys = grown
        keys[at] = k.encode("ascii")
        return k

    def remember(self, store) -> None:
        """Mark the vectors ``store`` holds as held (they are not written again)."""
        with self._lock:
            self._stored |= store.vector_keys()

    def new(self, catalog, keyed: Sequence[tuple[str, int]]) -> dict[str, list[np.ndarray]]:
        """The vectors of the ``(key, row)`` pairs the store does not hold yet (marked as held: the caller writes them
        now). Call it under ``catalog.lock``, as :meth:`key`."""
        out = {}
        with self._lock:
            for k, row in keyed:
                if k not in self._stored:
                    self._stored.add(k)
                    out[k] = self.rows(catalog, row)
        return out

    def archive_catalog(self, catalog, store, batch: int = 2000, log=print) -> int:
        """Store the vectors of every live row of ``catalog`` that ``store`` lacks; returns how many were written.

        Run when the service starts, so searches write only their features and keys: a product's
        vectors are then written on the search path only if it was added or changed since.
        """
        import time

        t0 = time.perf_counter()
        self.remember(store)
        with catalog.lock:
            live = np.flatnonzero(catalog.live[:catalog.n_rows])
        written = 0
        for i in range(0, len(live), batch):  # a batch of rows' vectors at a time: the peak stays a batch, not the catalogue
            with catalog.lock:
                new = self.new(catalog, [(self.key(catalog, int(r)), int(r)) for r in live[i:i + batch]])
            try:
                written += store.put_many_vectors(new.items())
            except BaseException:
                self.forget(new)
                raise
        if log and written:
            log(f"event store: archived the vectors of {written:,} products in {time.perf_counter() - t0:.1f} s")
        return written

    def forget(self, keys: Iterable[str]) -> None:
        """Keys whose write failed: written again next time they are served."""
        with self._lock:
            self._stored.difference_update(keys)


def served_slate(result, catalog, archive: VectorArchive, swap: int | None = None,
                 features: bool = True, logged_ranks: Sequence[int] | None = None) -> tuple[ServedSlate, dict[str, list[np.ndarray]]]:
    """The shown products of one search with the ranker's inputs; and the vectors to archive.

    ``swap``: 0-based shown position exchanged with the top one (a randomised swap), or None.
    Without ``features`` only the products and scores are kept (feature logging off).
    ``logged_ranks``: the rank the ranker gave each product of ``result.order`` (1-based), when
    that order is not its top k (an explored search, :func:`draw_exploration`); default ``1..n``.
    """
    sc = result.scored
    order = np.asarray(result.order, np.int64)
    n = len(order)
    ranks = list(range(1, n + 1)) if logged_ranks is None else [int(r) for r in logged_ranks]
    if len(ranks) != n:
        raise FusionrankError(f"logged_ranks has {len(ranks)} entries for {n} shown products")
    sl = sc.slates
    rows = sl.rows[0, order]
    ids = [str(catalog.ids[r]) for r in rows]
    scores = np.asarray(sc.scores[0, order], np.float32)
    if not features:
        slate = ServedSlate(ids, scores, np.zeros((n, 0), np.float32), np.zeros((n, 0), bool), np.zeros(0, np.float32),
                            [""] * n, ranks)
        return swapped(slate, swap), {}
    with catalog.lock:
        keys = [archive.key(catalog, int(r)) for r in rows]
        vectors = archive.new(catalog, list(zip(keys, map(int, rows))))
    slate = ServedSlate(ids, scores, np.array(sl.x[0, order], np.float32), np.array(sl.mask[0, order], bool),
                        np.array(sl.q[0], np.float32), keys, ranks)
    return swapped(slate, swap), vectors


def taken(slate: ServedSlate, positions: Sequence[int]) -> ServedSlate:
    """The entries of ``slate`` at 0-based ``positions``, in that order (their ``logged_ranks`` kept)."""
    p = np.asarray(positions, np.int64)
    n = len(slate.product_ids)
    if len(p) and (p.min() < 0 or p.max() >= n):
        raise FusionrankError(f"positions {p.tolist()} are outside the slate of {n}")
    feats = slate.features[p] if len(slate.features) == n else slate.features
    mask = slate.mask[p] if len(slate.mask) == n else slate.mask
    return ServedSlate([slate.product_ids[i] for i in p], slate.scores[p], feats, mask, slate.query_vector,
                       [slate.vector_keys[i] for i in p], [slate.logged_ranks[i] for i in p])


def swapped(slate: ServedSlate, swap: int | None) -> ServedSlate:
    """``slate`` with the product at 0-based shown position ``swap`` exchanged with the top one (the randomisation
    intervention); ``logged_ranks`` keep the ranks the ranker gave. ``None`` or 0 returns ``slate`` itself."""
    if not swap:
        return slate
    n = len(slate.product_ids)
    if not 0 < swap < n:
        raise FusionrankError(f"swap position {swap} is outside the slate of {n}")
    p = np.arange(n)
    p[[0, swap]] = p[[swap, 0]]
    return taken(slate, p)


def draw_swap(rng, share: float, n: int) -> int | None:
    """The randomisation decision for one search of ``n`` results: None, or the 0-based position swapped with the top.

    With probability ``share`` a position is drawn uniformly from 2..n (Joachims et al. 2017's swap
    intervention); ``rng`` is a :class:`random.Random`.
    """
    if share <= 0 or n < 2 or rng.random() >= share:
        return None
    return rng.randrange(1, n)


def draw_exploration(rng, share: float, k: int, n: int, count: int = 1) -> tuple[tuple[int, int], ...] | None:
    """The exploration decision for one search that shows ``k`` of ``n`` ranked candidates, or None.

    With probability ``share``: ``count`` pairs ``(j, m)``, 0-based, meaning shown position ``j``
    shows the candidate the ranker put at ``m`` instead of its own; the positions are distinct
    and uniform in 0..k-1, the ranks distinct and uniform in k..n-1 (fewer pairs when fewer than
    ``count`` candidates are below the page). Clicks only ever label what a ranker shows, so a
    ranker retrained from its own clicks sees no evidence about a relevant product it keeps below
    the page; an explored search puts such products on the page, at positions drawn independently
    of them, so their clicks are corrected by their positions' propensities like any other (the
    position-based model's assumption). ``rng`` is a :class:`random.Random`.
    """
    if count < 1:
        raise FusionrankError(f"explore_count must be at least 1; got {count}")
    if share <= 0 or k < 1 or n <= k or rng.random() >= share:
        return None
    if count == 1:  # the same two draws as when one position was all there was, so seeded runs reproduce
        return ((rng.randrange(k), rng.randrange(k, n)),)
    c = min(count, k, n - k)
    return tuple(sorted(zip(rng.sample(range(k), c), rng.sample(range(k, n), c))))


def explore_positions(k: int, exploration: Sequence[tuple[int, int]] | None) -> np.ndarray:
    """Ranked positions (0-based) shown at positions ``0..k-1``: the top ``k``, with an exploration's swap-ins."""
    p = np.arange(k, dtype=np.int64)
    for j, m in exploration or ():
        if not (0 <= j < k and m >= k) or p[j] >= k or m in p:
            raise FusionrankError(f"exploration {exploration} must show distinct candidates ranked below {k} "
                                  f"at distinct positions in 0..{k - 1}")
        p[j] = m
    return p


def rebuild_slates(slates: Sequence[ServedSlate], vectors: dict[str, list[np.ndarray]], query_ids: Sequence[str] | None = None,
                   queries: Sequence[str] | None = None) -> tuple[Slates, dict[str, np.ndarray]]:
    """Logged slates -> ``(Slates, tables)``, the inputs ``ranker.predict`` had when the slates were served.

    ``vectors`` maps vector keys to embedding rows (``store.vectors(keys)``). Rows of the
    returned slates index the returned tables (one row per distinct key).
    """
    if not slates:
        raise FusionrankError("no logged slates to rebuild")
    keys = sorted({k for s in slates for k in s.vector_keys})
    missing = [k for k in keys if k not in vectors]
    if "" in keys or missing:
        raise FusionrankError(f"cannot rebuild the ranker's inputs: {len(missing) or 'some'} slates were logged without "
                              f"features or their vectors are missing from the store (first: {(missing or [''])[0]!r})")
    pos = {k: i for i, k in enumerate(keys)}
    tables = {t: np.stack([vectors[k][j] for k in keys]).astype(np.float32) for j, t in enumerate(TABLES)}
    B, N = len(slates), max(len(s.product_ids) for s in slates)
    F = slates[0].features.shape[1]
    K = slates[0].mask.shape[1]
    rows = np.full((B, N), -1, np.int64)
    x = np.zeros((B, N, F), np.float32)
    mask = np.zeros((B, N, K), bool)
    q = np.stack([s.query_vector for s in slates]).astype(np.float32)
    for b, s in enumerate(slates):
        n = len(s.product_ids)
        rows[b, :n] = [pos[k] for k in s.vector_keys]
        x[b, :n] = s.features
        mask[b, :n] = s.mask
    qids = list(query_ids) if query_ids is not None else [str(i) for i in range(B)]
    texts = list(queries) if queries is not None else [""] * B
    return Slates(qids, texts, rows, x, mask, q), tables
