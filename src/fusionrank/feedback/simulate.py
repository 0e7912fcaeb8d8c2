"""Simulated shoppers: draw queries, search through the real service, click by a click model, post events.

A :class:`Shoppers` population draws each session's query with a Zipf-like frequency from a
set of queries with graded judgments (fashion44k's training queries), searches through a
:class:`Shop` (the in-process :class:`~fusionrank.serving.service.SearchService`, or the HTTP
API with the events key, as the web page does), lets a click model
(:mod:`fusionrank.feedback.clickmodels`) decide clicks, carts and purchases from the true
grades of the products shown at their positions, and posts them as events.

For 10^5 to 10^6 sessions, :meth:`Shoppers.run` with ``cache=True`` searches each distinct
query once per logging model (as the unbiased-LTR literature does), keeps that result list,
applies the service's own randomisation (:func:`~fusionrank.feedback.logged.draw_swap`,
:func:`~fusionrank.feedback.logged.swapped`) per session, and writes searches and events to
the service's event store in bulk: a million sessions take minutes rather than hours.
"""
from __future__ import annotations

import dataclasses
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from .. import schema as S
from ..errors import FusionrankError
from .logged import draw_exploration, draw_swap, explore_positions, swapped, taken
from .schema import ACTIONS, SearchLog


class Shop(Protocol):
    """Where shoppers search and post events: the service in process, or over HTTP."""

    def search(self, query: str, k: int, client_id: str, session_id: str) -> dict[str, Any]: ...

    def post(self, events: list[dict[str, Any]]) -> None: ...


class ServiceShop:
    """The in-process :class:`~fusionrank.serving.service.SearchService`."""

    def __init__(self, service):
        self.service = service

    def search(self, query, k, client_id, session_id):
        return self.service.search(query, k=k, explain=False, client_id=client_id, session_id=session_id)

    def post(self, events):
        self.service.record_events(events, require_known=True)


class HttpShop:
    """The HTTP API with the public events key, exactly as the web page calls it (an ``httpx.Client`` or TestClient)."""

    def __init__(self, client, events_key: str):
        self.client, self.key = client, events_key

    def search(self, query, k, client_id, session_id):
        r = self.client.get("/search", params={"q": query, "k": k, "explain": "false", "client_id": client_id,
                                                "session_id": session_id})
        r.raise_for_status()
        return r.json()

    def post(self, events):
        for i in range(0, len(events), 1000):
            r = self.client.post("/events", json={"events": events[i:i + 1000]}, headers={"X-API-Key": self.key})
            r.raise_for_status()


@dataclass
class SimulationReport:
    sessions: int
    searches: int
    actions: dict[str, int]
    seconds: float
    distinct_lists: int = 0
    randomised: int = 0
    query_counts: dict[str, int] = field(default_factory=dict)
    interleaved: int = 0
    searched: int = 0          # real searches of the service this run made (lists not kept from an earlier run)


@dataclass
class _Drafts:
    """One query's cached rankings for interleaved sessions (see :meth:`Shoppers._drafts`)."""

    promoted: list[int]        # the promoted model's top 2k candidates (indices into the search's candidates)
    rivals: list[list[int]]    # each interleaving candidate's top 2k
    slate: Any                 # the logged slate of their union (a ServedSlate)
    position: dict[int, int]   # candidate index -> its entry in ``slate``


def zipf_weights(n: int, s: float = 1.0) -> np.ndarray:
    """P(query of frequency rank i) ∝ 1 / i^s, i = 1..n."""
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


class Shoppers:
    """A population of simulated shoppers over judged queries.

    ``queries``: DataFrame with ``query_id`` and ``query``; ``qrels``: ``query_id``, ``product_id``,
    ``grade`` (unjudged products have grade 0). ``click_model`` has
    ``sample_actions(grades [S, n], rng) -> {action: bool [S, n]}`` (see :mod:`.clickmodels`).
    Query popularity is Zipf(``zipf_s``) over a seeded shuffle of the queries.
    """

    def __init__(self, queries: pd.DataFrame, qrels: pd.DataFrame, click_model, k: int = 10, zipf_s: float = 1.0,
                 clients: int = 10_000, seed: int = 0):
        if queries.empty:
            raise FusionrankError("no queries for the simulated shoppers")
        self.queries = queries[[S.QUERY_ID, S.QUERY]].drop_duplicates(S.QUERY_ID).reset_index(drop=True)
        rng = np.random.default_rng(seed)
        self.queries = self.queries.iloc[rng.permutation(len(self.queries))].reset_index(drop=True)
        self.p = zipf_weights(len(self.queries), zipf_s)
        self.grades = {str(q): dict(zip(d[S.PRODUCT_ID].astype(str), d[S.GRADE].astype(float)))
                       for q, d in qrels.groupby(S.QUERY_ID)}
        self.click_model, self.k, self.clients, self.seed = click_model, k, clients, seed
        # run_cached's lists, kept across calls while what they depend on stays the same (see _lists_for)
        self._lists: dict[str, tuple[tuple, dict]] = {}

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Indices into ``self.queries`` of ``n`` sessions."""
        return rng.choice(len(self.queries), size=n, p=self.p)

    def grades_of(self, qi: int, product_ids) -> np.ndarray:
        g = self.grades.get(str(self.queries.at[qi, S.QUERY_ID]), {})
        return np.array([g.get(str(p), 0.0) for p in product_ids], np.float64)

    # -- every session through the shop ----------------------------------------------------------
    def run_live(self, shop: Shop, n_sessions: int, batch: int = 100, seed: int | None = None) -> SimulationReport:
        """Each session searches and posts through ``shop`` (the path the web page takes).

        ``seed`` draws these sessions (default: the population's seed); the population itself (its
        queries' popularity) stays the same, so successive runs with other seeds continue one shop's traffic.
        """
        rng = np.random.default_rng(self.seed if seed is None else seed)
        t0 = time.perf_counter()
        counts = {a: 0 for a in ACTIONS[1:]}
        pending: list[dict] = []
        randomised = 0
        for i, qi in enumerate(self.draw(n_sessions, rng)):
            client, session = f"shopper-{rng.integers(self.clients)}", uuid.UUID(int=int(rng.integers(2**63))).hex
            res = shop.search(self.queries.at[qi, S.QUERY], self.k, client, session)
            hits = res["results"]
            randomised += bool(res.get("randomised"))
            if not hits:
                continue
            acts = self.click_model.sample_actions(self.grades_of(qi, [h["product_id"] for h in hits])[None, :], rng=rng)
            for a in ACTIONS[1:]:
                for j in np.flatnonzero(acts[a][0]):
                    h = hits[j]
                    pending.append({"type": a, "search_id": res["search_id"], "model_version": res["model_version"],
                                    "product_id": h["product_id"], "position": h["rank"], "client_id": client,
                                    "session_id": session, "timestamp": time.time()})
                    counts[a] += 1
            if len(pending) >= batch:
                shop.post(pending)
                pending = []
        if pending:
            shop.post(pending)
        return SimulationReport(n_sessions, n_sessions, counts, time.perf_counter() - t0, randomised=randomised)

    # -- cached result lists, bulk writes --------------------------------------------------------
    def run_cached(self, service, n_sessions: int, chunk: int = 50_000, log=print, seed: int | None = None) -> SimulationReport:
        """``n_sessions`` sessions against ``service``'s current model, each distinct query searched once.

        The lists are kept for the next call while the service, its index version, its model and candidates
        stay the same (a loop's interleaving batches search each query once, not once per batch).

        ``seed`` draws these sessions (default: the population's seed), as in :meth:`run_live`.

        Every session gets its own search record (its own id, ids, time, randomisation and
        exploration, drawn as the service draws them) referencing the cached list (to the service's
        ``explore_depth`` when it explores); events go through
        ``service.record_events`` (as the page's events do). Written in chunks of ``chunk`` sessions.

        While candidates interleave (``service.interleaving``), each distinct query's candidates are also
        ranked by every candidate (:meth:`~fusionrank.serving.service.SearchService.rival_order`), and the
        service's share of sessions shows a team draft of the two rankings, drawn per session as the
        service draws it (:func:`~fusionrank.feedback.interleave.draw_interleaving`,
        :func:`~fusionrank.feedback.interleave.team_draft`) and logged with its teams.
        """
        from .interleave import draw_interleaving, team_draft

        if service.events is None:
            raise FusionrankError("the service has no event store to log the simulated sessions in")
        seed = self.seed if seed is None else seed
        rng = np.random.default_rng(seed)
        swap_rng = random.Random(seed)
        t0 = time.perf_counter()
        draws = self.draw(n_sessions, rng)
        share, explore_share = service.randomise_share, service.explore_share
        counts = {a: 0 for a in ACTIONS[1:]}
        randomised = interleaved = searched = 0
        model = service.model  # one read: every session of this run is this model's
        rivals, il_share = service.interleaving  # and these candidates'
        version = model.version
        cache: dict[int, tuple[SearchLog, np.ndarray]] = self._lists_for("lists", service, model)
        drafts: dict[int, _Drafts] = self._lists_for("drafts", service, model, rivals) if rivals else {}
        for start in range(0, n_sessions, chunk):
            part = draws[start:start + chunk]
            for qi in np.unique(part):
                qi = int(qi)
                if qi not in cache or (rivals and qi not in drafts):  # one real search through the service
                    res = service.pipeline.search(self.queries.at[qi, S.QUERY], self.k, None, False, ranker=model.ranker,
                                                  understanding=model.understanding)  # as the service searches
                    searched += 1
                    if rivals:
                        drafts[qi] = self._drafts(service, res, rivals)
                    if qi not in cache:  # its log is the template
                        cache[qi] = self._template(service, qi, res)
            logs: list[SearchLog] = []
            events: list[dict] = []
            now = time.time()
            # group the chunk's sessions by what they were shown, so each group's clicks are drawn in one call:
            # (query, swap, exploration, None) or (query, 0, None, (candidate, shown, teams)) when interleaved
            groups: dict[tuple, list[int]] = {}
            for j, q in enumerate(part):
                q = int(q)
                drawn = draw_interleaving(swap_rng, il_share, len(rivals))
                if drawn is not None:
                    d = drafts[q]
                    shown, teams = team_draft(d.promoted, d.rivals[drawn[0]], self.k, drawn[1])
                    groups.setdefault((q, 0, None, (drawn[0], tuple(shown), tuple(teams))), []).append(j)
                    continue
                ranked = len(cache[q][0].slate.product_ids)
                n = min(self.k, ranked)
                sw = draw_swap(swap_rng, share, n)
                ex = (draw_exploration(swap_rng, explore_share, self.k, ranked, service.explore_count)
                      if sw is None and n == self.k else None)
                groups.setdefault((q, sw or 0, ex, None), []).append(j)
            ids = [uuid.UUID(int=int(x)).hex for x in rng.integers(0, 2**63, size=len(part))]
            for (qi, sw, ex, il), members in groups.items():
                tmpl, grades = cache[qi]
                rival = teams = None
                if il is not None:
                    d = drafts[qi]
                    rival, teams = rivals[il[0]].version, list(il[2])
                    slate = taken(d.slate, [d.position[c] for c in il[1]])
                    slate = dataclasses.replace(slate, logged_ranks=list(range(1, len(slate.product_ids) + 1)))
                    g = self.grades_of(qi, slate.product_ids)
                    interleaved += len(members)
                else:
                    top = taken(tmpl.slate, explore_positions(min(self.k, len(tmpl.slate.product_ids)), ex))
                    slate = swapped(top, sw)
                    g = self.grades_of(qi, slate.product_ids) if sw or ex else grades
                acts = self.click_model.sample_actions(np.broadcast_to(g, (len(members), len(g))), rng=rng)
                for m, j in enumerate(members):
                    sid = ids[j]
                    client = f"shopper-{(start + j) % self.clients}"
                    session = f"{seed}-{start + j}"
                    logs.append(SearchLog(sid, tmpl.user_query, now, version, slate, client_id=client, session_id=session,
                                          k=self.k, index_version=tmpl.index_version, grid_columns=tmpl.grid_columns,
                                          randomised=bool(sw), interleaved_with=rival, teams=teams))
                    for a in ACTIONS[1:]:
                        for pos in np.flatnonzero(acts[a][m]):
                            events.append({"type": a, "search_id": sid, "model_version": version,
                                           "product_id": slate.product_ids[pos], "position": int(pos + 1), "timestamp": now,
                                           "client_id": client, "session_id": session})
                            counts[a] += 1
                randomised += len(members) if sw else 0
            service.events.log_searches(logs)
            service.record_events(events)  # the service's own checks and grid cells, as for the page's events
            if log:
                log(f"  sessions {min(start + chunk, n_sessions):,}/{n_sessions:,}: {sum(counts.values()):,} actions "
                    f"({time.perf_counter() - t0:.0f} s)")
        qc = pd.Series(draws).value_counts()
        return SimulationReport(n_sessions, n_sessions, counts, time.perf_counter() - t0, len(qc), randomised,
                                {str(self.queries.at[int(i), S.QUERY_ID]): int(c) for i, c in qc.items()}, interleaved,
                                searched)

    def _lists_for(self, kind: str, service, model, rivals=()) -> dict:
        """The cached lists of ``kind`` for this service as it is now: kept from earlier :meth:`run_cached` calls while
        the service, its event store, its index version, the model (and query understanding) version, the candidates
        interleaved and what a list keeps (exploration depth, feature logging) are the same; else empty."""
        key = (id(service), id(service.events), int(service.index.version), model.version,
               tuple(r.version for r in rivals), service.explore_share > 0, service.explore_depth, service.feature_logging)
        kept = self._lists.get(kind)
        if kept is None or kept[0] != key:
            kept = self._lists[kind] = (key, {})
        return kept[1]

    def _drafts(self, service, res, rivals) -> _Drafts:
        """What an interleaved session of one query can show: the promoted and each candidate's top ``2k`` (every
        product a draft of ``k`` can reach), and one logged slate of their union to take the shown ones from."""
        from .logged import served_slate

        depth = 2 * self.k  # a team's i-th pick skips fewer than k products already shown: within its first 2k - 1
        promoted = res.scored.order(0)[:depth].tolist()
        ranked = [service.rival_order(r, res)[:depth].tolist() for r in rivals]
        union = list(dict.fromkeys(promoted + [c for r in ranked for c in r]))
        shown, res.order = res.order, np.asarray(union, np.int64)
        try:
            slate, vectors = served_slate(res, res.catalog, service.archive, None, features=service.feature_logging)
        finally:
            res.order = shown  # the search's own list stays the template's
        service.events.put_many_vectors(vectors.items())
        return _Drafts(promoted, ranked, slate, {c: i for i, c in enumerate(union)})

    def _template(self, service, qi: int, res) -> tuple[SearchLog, np.ndarray]:
        """One search's log to reuse: its top ``k``, or its ranking to the service's ``explore_depth`` when it explores."""
        from .logged import served_slate

        if service.explore_share > 0:
            res.order = np.asarray(res.scored.order(0, service.explore_depth), np.int64)
        slate, vectors = served_slate(res, res.catalog, service.archive, None, features=service.feature_logging)
        service.events.put_many_vectors(vectors.items())  # products added since the service archived its catalogue
        tmpl = SearchLog("", self.queries.at[qi, S.QUERY], 0.0, service.model.version, slate,
                         index_version=int(service.index.version), grid_columns=service.grid_columns)
        return tmpl, self.grades_of(qi, slate.product_ids[:self.k])
