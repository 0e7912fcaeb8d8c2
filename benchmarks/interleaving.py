"""Interleaving sensitivity against an A/B test, and the closed loop, on fashion44k with simulated shoppers (issue 11).

    nice -n 10 .venv/bin/python benchmarks/interleaving.py [--pairs 24] [--il-cap 25600] [--ab-cap 3276800]
        [--loop-rounds 3] [--loop-sessions 3000] [--parts versions,sensitivity,loop]

Everything it writes goes under ``--out`` (default ``$FUSIONRANK_HOME/bench-interleave``); the prepared data of
``clicks_prepare.py`` (``$FUSIONRANK_HOME/bench-clicks``: training/dev slates, the serving index) is only read
(the index is copied once into ``--out``).

1. **Model versions.** The fusion ranker of ``learning_from_clicks.py`` (gated fusion, MLP head,
   ``ips_listwise``, batch 32) trained with full-information labels on the first 20 to 3,000 training
   queries, with several seeds and epochs; each saved as a model directory, its dev NDCG@10 measured on
   both title fields.
2. **Pairs.** ``--pairs`` pairs whose dev NDCG@10 (title) differs by 0.005 to 0.05, spread over that band.
3. **Interleaving.** For each pair, simulated shoppers (:class:`~fusionrank.feedback.simulate.Shoppers`,
   Zipf(1) popularity over the 500 dev queries, which no version trained on; ``--click-model``: PBM clicks,
   theta_k = 1/k, eps- 0.1, eps+ 1 by default, or ``dbn``, ``cascade``, ... with the registry's defaults)
   search a :class:`~fusionrank.serving.service.SearchService` that serves one version of the pair (team a,
   a coin per pair) and interleaves the other (team b) on every search. As
   ``Shoppers.run_cached`` caches result lists, every dev query's candidates and features come once from the
   service's ranking path (``RankingPipeline.slates``, as evaluation runs it) and each version's ranking of
   them is kept (the service's own :class:`~fusionrank.ranking.explain.Scorer`); every session then gets its
   own :func:`~fusionrank.feedback.interleave.team_draft` (its own coin), its own search record with the
   teams and its events, written through the service's event store. The preference and its 95% bootstrap
   interval come from :func:`~fusionrank.feedback.interleave.interleaving_report` on that store, read after
   200, 400, 800, ... sessions up to ``--il-cap``. Per run, some searches go through
   ``SearchService.search`` itself (interleaving share 1.0) and their lists are checked against the
   cached rankings' draft.
4. **A/B test.** The same pairs, the same shoppers and lists; each version serves half the sessions alone.
   Click-through rate (share of sessions with a click) with a two-sided two-proportion z-test at 5%, and
   clicks per session with Welch's t-test (a more sensitive A/B metric), read after 200, 400, 800, ...
   sessions (both arms together) up to ``--ab-cap``. The A/B sessions are drawn in memory (no event
   store: nothing in them is interleaved).

   Every test runs to its cap and is read two ways: *stable* (the last reading decides; the sessions
   needed are those from which every later reading was confident the same way) and *first* (the first
   confident reading decides, as a gate that stops there would).
5. **The loop.** :func:`fusionrank.models.loop.run_loop` (what ``fusionrank loop`` runs) from the
   20-query version: the service on HTTP follows a fresh registry; per round ``--loop-sessions`` sessions
   of shoppers (training queries, PBM), ``fusionrank retrain`` on that round's searches (``--loop-labels``,
   ``--loop-propensity``: by default the PBM propensities ``learning_from_clicks.py`` harvested, since EM
   on one logger without randomisation finds no position bias here), interleaving at the policy's share
   until the gate decides, promotion or retirement. After each round the promoted version's dev NDCG@10
   on both title fields (the slates' path, as for every version above) beside the full-information
   model's. Defaults: labels ``dr`` (part I's best from a weak logger), 3,000 sessions per round, the
   interleaving share 1.0, at most 4,000 interleaved sessions per candidate.

``--parts`` runs some of it (``versions``, ``sensitivity``, ``loop``, ``extend``: the pairs interleaving left
undecided continued to a new ``--il-cap``); each part is kept in the results file until a run repeats it.
The published results came from (the loop alongside the sensitivity part)::

    nice -n 10 .venv/bin/python benchmarks/interleaving.py --parts versions
    nice -n 10 .venv/bin/python benchmarks/interleaving.py --parts sensitivity
    nice -n 10 .venv/bin/python benchmarks/interleaving.py --parts loop --loop-rounds 3 --loop-sessions 3000
    nice -n 10 .venv/bin/python benchmarks/interleaving.py --parts extend --il-cap 102400

Writes ``benchmarks/results/interleaving.md`` (+ ``.json``); ``--render`` rewrites the ``.md`` from the ``.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"

from learning_from_clicks import Bench, log  # noqa: E402


def machine_load() -> str:
    """Load average and the five busiest processes with their command lines (what else the 2 cores were doing)."""
    import subprocess

    la = os.getloadavg()
    ps = subprocess.run(["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()[1:6]
    return f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} on {os.cpu_count()} cores; busiest: " + \
        "; ".join(f"`{p.split(None, 1)[1][:90]}` {p.split()[0]}%" for p in ps if len(p.split(None, 1)) == 2)

HASH_KEY = b"benchmark-hash-key-0123456789"
#: (training queries, seed, epochs) of the model versions; 3,000 is every training query.
VERSIONS = [(20, 0, 4), (30, 0, 4), (50, 0, 4), (50, 1, 4), (75, 0, 4), (100, 0, 4), (100, 1, 4), (150, 0, 4),
            (200, 0, 4), (200, 1, 4), (300, 0, 4), (400, 0, 4), (400, 1, 4), (600, 0, 4), (800, 0, 4), (1600, 0, 4),
            (3000, 0, 4), (3000, 0, 2)]


# -- model versions -----------------------------------------------------------------------------
class VersionBench(Bench):
    """:class:`Bench` over the prepared data, writing model directories under its own ``models_dir``."""

    def __init__(self, prepared: Path, out: Path, epochs: int, batch: int):
        super().__init__(prepared, epochs, batch)
        self.models_dir = out / "models"
        self.index_dir = out / "index"
        if not (self.index_dir / "index.json").exists():
            shutil.copytree(prepared / "index", self.index_dir)

    def model_config(self, epochs: int):
        """The experiment config the saved rankers were trained with (what ``fusionrank retrain`` starts from)."""
        from fusionrank.experiment import Block

        cfg = self.config.model_copy(deep=True)
        cfg.loss = Block(name="ips_listwise")
        cfg.training.epochs, cfg.training.batch_size, cfg.training.patience = epochs, self.batch, epochs
        return cfg

    def train_version(self, n: int, seed: int, epochs: int):
        full = self.full_information()
        idx = np.arange(min(n, len(full)))
        r = self.ranker(seed)
        r.epochs = r.patience = epochs
        return r.fit(subset(full, idx), self.groups, self.tables["title"], log=None)

    def save_version(self, r, name: str, epochs: int) -> Path:
        from fusionrank.modeldir import ModelDir, WorkspaceRecord

        d = self.models_dir / name
        ModelDir(d).write(config=self.model_config(epochs), ranker=r,
                          workspace=WorkspaceRecord(str(self.src), str(self.ws.catalog_dir), str(self.ws.store_dir), None))
        return d


def subset(sl, idx):
    """The slates of queries ``idx``."""
    return dataclasses.replace(sl, query_ids=[sl.query_ids[i] for i in idx], queries=[sl.queries[i] for i in idx],
                               rows=sl.rows[idx], x=sl.x[idx], mask=sl.mask[idx], q=None if sl.q is None else sl.q[idx],
                               y=None if sl.y is None else sl.y[idx])


def train_versions(bench: VersionBench, out: Path, only: set[str] | None = None) -> list[dict]:
    """Every version of :data:`VERSIONS`, or those named in ``only`` (trained once; ``out/versions.json`` keeps them)."""
    from fusionrank.modeldir import ModelDir

    path = out / "versions.json"
    done = {v["name"]: v for v in json.loads(path.read_text())} if path.exists() else {}
    for n, seed, epochs in VERSIONS:
        name = f"q{n}-s{seed}-e{epochs}"
        if only and name not in only:
            continue
        if name in done and (bench.models_dir / name / "ranker").exists():
            continue
        t0 = time.perf_counter()
        r = bench.train_version(n, seed, epochs)
        secs = time.perf_counter() - t0
        d = bench.save_version(r, name, epochs)
        done[name] = {"name": name, "queries": n, "seed": seed, "epochs": epochs, "dir": str(d),
                      "version": ModelDir.open(d).version(), "ndcg@10": bench.ndcg(r), "train_seconds": round(secs, 1)}
        log(f"version {name}: dev NDCG@10 {done[name]['ndcg@10']} ({secs:.0f} s)")
        path.write_text(json.dumps(list(done.values()), indent=1))
    return sorted(done.values(), key=lambda v: v["ndcg@10"]["title"])


def pick_pairs(versions: list[dict], n: int, lo: float = 0.005, hi: float = 0.05) -> list[tuple[dict, dict]]:
    """``n`` pairs with |Δ dev NDCG@10 (title)| in [lo, hi], spread evenly over the band, each version in few pairs."""
    cands = [(abs(a["ndcg@10"]["title"] - b["ndcg@10"]["title"]), a, b)
             for i, a in enumerate(versions) for b in versions[i + 1:]
             if lo <= abs(a["ndcg@10"]["title"] - b["ndcg@10"]["title"]) <= hi]
    uses: dict[str, int] = {}
    out = []
    for target in np.linspace(lo, hi, n):
        free = [c for c in cands if (c[1]["name"], c[2]["name"]) not in {(a["name"], b["name"]) for a, b in out}]
        if not free:
            break
        d, a, b = min(free, key=lambda c: (abs(c[0] - target) + 0.004 * (uses.get(c[1]["name"], 0) + uses.get(c[2]["name"], 0))))
        out.append((a, b))
        for v in (a, b):
            uses[v["name"]] = uses.get(v["name"], 0) + 1
    return out


# -- shoppers through the service ---------------------------------------------------------------
def drafted(a: list, b: list, teams: list[str]) -> list | None:
    """The list a team draft of rankings ``a`` and ``b`` shows when the teams pick in the order ``teams``;
    None if that order is not a team draft's (the team with fewer picks must pick; either on a tie; a shared
    place holds both rankings' next item, at a round's start)."""
    from fusionrank.feedback.schema import SHARED_TEAM, TEAMS

    out, seen, picks = [], set(), {TEAMS[0]: 0, TEAMS[1]: 0}
    nxt = lambda r: next((x for x in r if x not in seen), None)  # noqa: E731
    for t in teams:
        if t == SHARED_TEAM:
            x = nxt(a)
            if picks[TEAMS[0]] != picks[TEAMS[1]] or x is None or x != nxt(b):
                return None
        else:
            other = TEAMS[1] if t == TEAMS[0] else TEAMS[0]
            if picks[t] > picks[other]:
                return None
            x = nxt(a if t == TEAMS[0] else b)
            if x is None:
                return None
            picks[t] += 1
        out.append(x)
        seen.add(x)
    return out


class Traffic:
    """Simulated shoppers against one :class:`SearchService` over the benchmark index, logging into a fresh SQLite store.

    Each dev query is searched once through the service's ranking path (candidates and features); every
    version ranks those candidates with the service's :class:`Scorer`. Sessions then draft, click and log.
    """

    def __init__(self, bench: VersionBench, out: Path, versions: list[dict], click_model, seed: int = 0, fresh: bool = True,
                 zipf_s: float = 0.0):
        from fusionrank.experiment import split_frame
        from fusionrank.feedback.simulate import Shoppers
        from fusionrank.feedback.store import open_store
        from fusionrank.ranking import QueryEncoder
        from fusionrank.serving.index import SearchIndex
        from fusionrank.serving.service import SearchService, load_handle

        store_path = out / "interleaving.sqlite"
        for p in out.glob(store_path.name + "*") if fresh else ():
            p.unlink()
        self.handles = {v["name"]: load_handle(v["dir"]) for v in versions}
        self.svc = SearchService(SearchIndex.load(bench.index_dir, log=lambda m: None), next(iter(self.handles.values())),
                                 QueryEncoder(text_encoder=bench.config.text_encoder_spec),
                                 events=open_store(store_path, HASH_KEY, None), feature_logging=False, seed=seed, log=None)
        self.shoppers = Shoppers(split_frame(bench.cat, "dev"), bench.qrels, click_model, k=10, zipf_s=zipf_s, seed=seed)
        self.click_model, self.k, self.seed = click_model, 10, seed
        self.slates = None  # every query's candidates and features (Slates, one row per query)
        self.ranked: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}  # (version, query) -> (order, scores)
        self.top_grades: dict[str, np.ndarray] = {}  # version -> [queries, k] true grades of its top k

    def prepare(self) -> float:
        """Candidates and features of every query from the service's ranking path (in batches, as evaluation runs it),
        ranked by every version with the service's :class:`Scorer`; returns seconds."""
        from fusionrank.ranking.explain import Scorer

        t0 = time.perf_counter()
        svc, sh = self.svc, self.shoppers
        self.slates = svc.pipeline.slates(sh.queries["query_id"].tolist(), sh.queries["query"].tolist())
        for name, h in self.handles.items():
            sc = Scorer(h.ranker, svc.pipeline.catalog).transform(self.slates)
            g = np.zeros((len(sh.queries), self.k))
            for qi in range(len(sh.queries)):
                order = sc.order(qi)
                self.ranked[name, qi] = (order, np.asarray(sc.scores[qi], np.float32))
                top = self.ids(qi, order[:self.k])
                g[qi, :len(top)] = sh.grades_of(qi, top)
            self.top_grades[name] = g
        return time.perf_counter() - t0

    def ids(self, qi: int, positions) -> list[str]:
        rows = self.slates.rows[qi, np.asarray(positions, np.int64)]
        return [str(self.svc.index.ids[r]) for r in rows]

    def interleave(self, a: str, b: str, start: int, stop: int, base: float, rng: np.random.Generator,
                   shared: bool = True) -> None:
        """Sessions ``start..stop-1`` of pair (a, b): a team draft each (``shared``: as the service drafts, a round both
        rankings would pick the same product shows it as shared; False: the classic draft), logged at ``base + i``
        with their events."""
        from fusionrank.feedback.interleave import team_draft
        from fusionrank.feedback.logged import served_slate
        from fusionrank.feedback.schema import ACTIONS, SearchLog

        svc, sh = self.svc, self.shoppers
        ha, hb = self.handles[a], self.handles[b]
        logs, events = [], []
        for i, qi in zip(range(start, stop), sh.draw(stop - start, rng)):
            qi = int(qi)
            (oa, sa), (ob, _) = self.ranked[a, qi], self.ranked[b, qi]
            shown, teams = team_draft(oa.tolist(), ob.tolist(), self.k, random.Random(int(rng.integers(2**63))),
                                      shared=shared)
            # the service logs an interleaved list with the promoted model's scores (team a's)
            one = SimpleNamespace(rows=self.slates.rows[qi:qi + 1])
            slate, _ = served_slate(SimpleNamespace(scored=SimpleNamespace(slates=one, scores=sa[None]), order=shown),
                                    svc.index, svc.archive, None, features=False)
            acts = self.click_model.sample_actions(sh.grades_of(qi, slate.product_ids)[None, :], rng=rng)
            sid, ts = uuid.UUID(int=int(rng.integers(2**63))).hex, base + i
            client, session = f"shopper-{int(rng.integers(sh.clients))}", f"{a}:{b}:{i}"
            logs.append(SearchLog(sid, sh.queries.at[qi, "query"], ts, ha.version, slate, client_id=client, session_id=session,
                                  k=self.k, index_version=int(svc.index.version), grid_columns=svc.grid_columns,
                                  interleaved_with=hb.version, teams=teams))
            for act in ACTIONS[1:]:
                for pos in np.flatnonzero(acts[act][0]):
                    events.append({"type": act, "search_id": sid, "model_version": ha.version, "product_id": slate.product_ids[pos],
                                   "position": int(pos + 1), "timestamp": ts, "client_id": client, "session_id": session})
        svc.events.log_searches(logs)
        svc.record_events(events)

    def live_check(self, a: str, b: str, n: int) -> dict:
        """``n`` searches through ``SearchService.search`` interleaving b with a (share 1.0): is each shown list the
        draft of the cached rankings in its logged team order?"""
        from fusionrank.serving.service import load_handle

        svc, sh = self.svc, self.shoppers
        # a fresh handle of each version, loaded as the service loads one
        svc.install_model(load_handle(self.handles[a].path))
        svc.set_interleaving([load_handle(self.handles[b].path)], 1.0)
        since = time.time()
        rng = np.random.default_rng(self.seed + 99)
        qis = [int(q) for q in sh.draw(n, rng)]
        for qi in qis:
            res = svc.search(sh.queries.at[qi, "query"], k=self.k, explain=False, session_id=f"live-{qi}")
            assert res["interleaved"], "the service did not interleave at share 1.0"
        svc.set_interleaving([], 0.0)
        logged = [s for s in svc.events.interleaving_log(since=since) if s["session_id"] is not None]
        same = sum(s["product_ids"] == drafted(self.ids(qi, self.ranked[a, qi][0]), self.ids(qi, self.ranked[b, qi][0]), s["teams"])
                   for qi, s in zip(qis, logged))
        return {"searches": n, "logged": len(logged), "same_as_cached_draft": int(same)}

    def close(self) -> None:
        self.svc.close()


def two_proportion_p(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test."""
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(max(p * (1 - p) * (1 / n1 + 1 / n2), 1e-300))
    return math.erfc(abs(x2 / n2 - x1 / n1) / se / math.sqrt(2))


def welch_p(s1: float, q1: float, n1: int, s2: float, q2: float, n2: int) -> float:
    """Two-sided p-value of Welch's t-test from sums and sums of squares (normal approximation: n is large)."""
    m1, m2 = s1 / n1, s2 / n2
    v1, v2 = max(q1 / n1 - m1 * m1, 0) * n1 / (n1 - 1), max(q2 / n2 - m2 * m2, 0) * n2 / (n2 - 1)
    se = math.sqrt(max(v1 / n1 + v2 / n2, 1e-300))
    return math.erfc(abs(m2 - m1) / se / math.sqrt(2))


def checkpoints(cap: int, first: int = 200, factor: float = 2.0) -> list[int]:
    """``first``, ``factor`` ``first``, ``factor``^2 ``first``, ... (rounded to even counts) up to ``cap`` (200: the
    promotion policy's default minimum of searches)."""
    out, x = [first], float(first)
    while True:
        x *= factor
        n = 2 * round(x / 2)
        if n > cap:
            return out
        out.append(n)


def decisions(checks: list[dict], a: str, b: str) -> dict:
    """Two readings of a test checked at growing session counts (each check's ``sign``: +1 confident for b, -1 for a, 0 not).

    ``first``: the first confident check decides (stopping there). ``stable``: the test run to its cap decides by its
    last check, and needed the sessions from which every later check was confident the same way."""
    first = next((c for c in checks if c["sign"]), None)
    last = checks[-1]["sign"]
    n = None
    if last:
        n = checks[-1]["sessions"]
        for c in reversed(checks):
            if c["sign"] != last:
                break
            n = c["sessions"]
    win = {1: b, -1: a}
    return {"first": {"decided": first is not None, "sessions": first["sessions"] if first else None,
                      "winner": win[first["sign"]] if first else None},
            "stable": {"decided": bool(last), "sessions": n, "winner": win.get(last)}}


def run_interleaving(tr: Traffic, a: str, b: str, base: float, cap: int, seed: int, alpha: float = 0.05,
                     shared: bool = True, factor: float = 2.0) -> dict:
    """Interleave up to ``cap`` sessions, the report (preference, bootstrap CI) read at every checkpoint."""
    from fusionrank.feedback.interleave import interleaving_report

    rng = np.random.default_rng(seed)
    va, vb = tr.handles[a].version, tr.handles[b].version
    done, rep, checks = 0, None, []
    for n in checkpoints(cap, factor=factor):
        tr.interleave(a, b, done, n, base, rng, shared=shared)
        done = n
        rep = interleaving_report(tr.svc.events, since=base, until=base + n, confidence=1 - alpha, pairs=[(va, vb)])[0]
        checks.append({"sessions": n, "used": rep.used, "preference": rep.preference, "ci": list(rep.ci),
                       "sign": 1 if rep.ci[0] > 0 else -1 if rep.ci[1] < 0 else 0})
    return {**decisions(checks, a, b), "report": rep.as_dict(), "checks": checks}


def run_ab(tr: Traffic, a: str, b: str, cap: int, seed: int, alpha: float = 0.05, factor: float = 2.0) -> dict:
    """A/B up to ``cap`` sessions: half see a's list, half b's; both tests read at every checkpoint.

    ``ctr``: share of sessions with a click (two-proportion z-test); ``clicks``: clicks per session (Welch)."""
    rng = np.random.default_rng(seed)
    sh = tr.shoppers
    stats = {v: np.zeros(4) for v in (a, b)}  # sessions, sessions with a click, clicks, clicks^2
    checks: dict[str, list] = {"ctr": [], "clicks": []}
    done = 0
    for n in checkpoints(cap, factor=factor):
        for v in (a, b):
            m = n // 2 - done // 2
            qi = sh.draw(m, rng)
            c = tr.click_model.sample_actions(tr.top_grades[v][qi], rng=rng)["click"].sum(1)
            stats[v] += [m, (c > 0).sum(), c.sum(), (c.astype(np.float64) ** 2).sum()]
        done = n
        (na, xa, sa, qa), (nb, xb, sb, qb) = stats[a], stats[b]
        tests = {"ctr": (two_proportion_p(int(xa), int(na), int(xb), int(nb)), xb / nb - xa / na),
                 "clicks": (welch_p(sa, qa, int(na), sb, qb, int(nb)), sb / nb - sa / na)}
        for k, (p, d) in tests.items():
            checks[k].append({"sessions": n, "p": p, "delta": d, "sign": int(np.sign(d)) if p < alpha else 0})
    out = {k: {**decisions(v, a, b), "p": v[-1]["p"], "delta": v[-1]["delta"], "checks": v} for k, v in checks.items()}
    out["ctr_a"], out["ctr_b"] = stats[a][1] / stats[a][0], stats[b][1] / stats[b][0]
    out["clicks_a"], out["clicks_b"] = stats[a][2] / stats[a][0], stats[b][2] / stats[b][0]
    return out


# -- the loop -----------------------------------------------------------------------------------
def run_the_loop(bench: VersionBench, out: Path, start: dict, a) -> dict:
    """``run_loop`` from ``start`` (a version) with a fresh registry; each round's promoted version measured on dev."""
    from fusionrank.models import ModelRegistry
    from fusionrank.models.gate import PromotionPolicy
    from fusionrank.models.loop import run_loop
    from fusionrank.rankers import load_ranker

    start_dir = a.run_dir / "loop-start"
    reg_dir = a.run_dir / "loop-registry"
    for d in (start_dir, reg_dir):
        if d.exists():
            shutil.rmtree(d)
    shutil.copytree(start["dir"], start_dir)
    (start_dir / "index").symlink_to(bench.index_dir)  # the serving index; the loop's service only reads it
    policy = PromotionPolicy(mode="manual", interleave_share=a.loop_share, min_searches=200,
                             max_searches=a.loop_max_interleave, interval=a.loop_interval,
                             sequential_searches=a.loop_sequential_searches)
    t0 = time.perf_counter()
    reports = run_loop(start_dir, reg_dir, rounds=a.loop_rounds, sessions=a.loop_sessions, interleave_batch=a.loop_batch,
                       max_interleave_sessions=a.loop_max_interleave, click_model="pbm", labels=a.loop_labels,
                       propensity=a.loop_propensity, randomise_share=a.loop_randomise_share, train_on=a.loop_train_on,
                       explore_share=a.loop_explore_share, explore_depth=a.loop_explore_depth, explore_count=a.loop_explore_count,
                       dm_regressor=a.loop_dm_regressor, logging_scores=a.loop_logging_scores,
                       loss="ips_listwise", epochs=bench.epochs, policy=policy, seed=a.seed, simulate=a.loop_simulate,
                       interleave_simulate=a.loop_interleave_simulate,
                       log=lambda m: log("loop " + m))
    secs = time.perf_counter() - t0
    reg = ModelRegistry.open(reg_dir)
    idx = reg.read()
    start_ndcg = bench.ndcg(load_ranker(Path(reg.model_path(idx.find("v1"))) / "ranker"))
    rounds, total = [], 0
    for r in reports:
        d = r.as_dict()
        total += r.sessions_logged + r.sessions_interleaving
        d["sessions_total"] = total
        d["promoted_dev"] = bench.ndcg(load_ranker(Path(reg.model_path(idx.find(r.promoted))) / "ranker"))
        d["candidate_dev"] = bench.ndcg(load_ranker(Path(reg.model_path(idx.find(r.candidate))) / "ranker")) \
            if r.candidate and (Path(reg.model_path(idx.find(r.candidate))) / "ranker").exists() else None
        ev = (idx.find(r.candidate).training_data or {}).get("events") or {} if r.candidate else {}
        d["theta"], d["propensity_log"] = ev.get("theta"), ev.get("propensity_log")
        rounds.append(d)
        log(f"loop round {r.round}: {r.outcome}; serving {r.promoted} dev {d['promoted_dev']}")
    decisions = [{"version": x.version, "action": x.action, "reason": x.reason} for x in idx.decisions]
    return {"start": start["name"], "start_dev": start_ndcg, "policy": policy.model_dump(), "rounds": rounds,
            "seconds": round(secs), "decisions": decisions,
            "settings": {k: getattr(a, k) for k in ("loop_rounds", "loop_sessions", "loop_batch", "loop_max_interleave",
                                                    "loop_labels", "loop_propensity", "loop_share", "loop_randomise_share",
                                                    "loop_explore_share", "loop_explore_depth", "loop_explore_count",
                                                    "loop_train_on", "loop_dm_regressor", "loop_logging_scores",
                                                    "loop_simulate", "loop_interleave_simulate")}}


# -- the run ------------------------------------------------------------------------------------
CLICK_MODEL_TEXT = {
    "pbm": "PBM clicks (theta_k = 1/k, eps- 0.1, eps+ 1)",
    "dbn": "DBN clicks (Chapelle and Zhang 2009: examine top-down, click with eps- 0.1 .. eps+ 1 by grade, leave "
           "satisfied after a click with (2^g - 1) / 15, go on with gamma 0.9)",
    "cascade": "cascade clicks (Craswell et al. 2008: examine top-down, click with eps- 0.1 .. eps+ 1 by grade, "
               "stop at the first click)",
}


def click_model_of(name: str):
    """The shoppers' click model by its registered name, with the registry's defaults (``pbm``: theta_k = 1/k)."""
    from fusionrank.feedback.clickmodels import CLICK_MODELS

    return CLICK_MODELS.get(name)()


def sensitivity(bench: VersionBench, out: Path, versions: list[dict], a) -> dict:
    from fusionrank.metrics import ndcg_at_k_padded

    pairs = pick_pairs(versions, a.pairs)
    used = {v["name"]: v for p in pairs for v in p}
    tr = Traffic(bench, a.run_dir, list(used.values()), click_model_of(a.click_model), seed=a.seed,
                 zipf_s=a.query_zipf)
    secs = tr.prepare()
    log(f"{len(pairs)} pairs over {len(used)} versions; {len(tr.slates)} dev queries searched and ranked in {secs:.0f} s")
    # the online truth the shoppers see: NDCG@10 weighted by the queries' popularity, and expected clicks per session
    sl, ideal = bench.dev["title"]
    per_q = {}
    for name in used:
        r = tr.handles[name].ranker
        nd = ndcg_at_k_padded(r.predict(sl, bench.tables["title"]), np.where(sl.rows >= 0, sl.y, 0), 10, mask=sl.rows >= 0,
                              ideal_dcg=ideal)
        per_q[name] = dict(zip(map(str, sl.query_ids), nd))
    pop = dict(zip(tr.shoppers.queries["query_id"].astype(str), tr.shoppers.p))
    probs = {n: float((tr.click_model.click_probs(tr.top_grades[n]).sum(1) * tr.shoppers.p).sum()) for n in used}
    rng = random.Random(a.seed)
    rows = []
    for i, (lo_v, hi_v) in enumerate(pairs):
        ctl, cand = (lo_v, hi_v) if rng.random() < 0.5 else (hi_v, lo_v)  # which one is promoted: a coin, per pair
        A, B = ctl["name"], cand["name"]
        off = {"a": ctl["ndcg@10"]["title"], "b": cand["ndcg@10"]["title"]}
        zipf = {k: sum(pop[q] * v for q, v in per_q[n].items()) for k, n in (("a", A), ("b", B))}
        t0 = time.perf_counter()
        il = run_interleaving(tr, A, B, base=1e9 + i * 1e7, cap=a.il_cap, seed=a.seed * 1000 + i,
                              shared=a.draft == "shared", factor=a.grid_factor)
        t1 = time.perf_counter()
        ab = run_ab(tr, A, B, cap=a.ab_cap, seed=a.seed * 1000 + 500 + i, factor=a.grid_factor)
        t2 = time.perf_counter()
        other = None
        if a.compare_classic and a.draft == "shared":  # the same pair, other sessions, the classic draft
            other = run_interleaving(tr, A, B, base=1.3e9 + i * 1e7, cap=a.il_cap, seed=a.seed * 1000 + 300 + i,
                                     shared=False, factor=a.grid_factor)
        t3 = time.perf_counter()
        offline_winner = B if off["b"] > off["a"] else A
        row = {"a": A, "b": B, "ndcg_a": off["a"], "ndcg_b": off["b"], "delta": off["b"] - off["a"],
               "zipf_ndcg_a": zipf["a"], "zipf_ndcg_b": zipf["b"], "clicks_a": probs[A], "clicks_b": probs[B],
               "offline_winner": offline_winner, "zipf_winner": B if zipf["b"] > zipf["a"] else A,
               "interleaving": il, "ab": ab, "seconds": {"interleaving": round(t1 - t0, 1), "ab": round(t2 - t1, 1)}}
        if other is not None:
            row["interleaving_classic"] = other
            row["seconds"]["interleaving_classic"] = round(t3 - t2, 1)
        rows.append(row)
        def said(d):
            return f"{d['winner']} from {d['sessions']:,}" if d["decided"] else "undecided"

        log(f"pair {i + 1}/{len(pairs)} {A} vs {B} (Δ {row['delta']:+.4f}): interleaving {said(il['stable'])} "
            f"(first {said(il['first'])}; pref {il['report']['preference']:+.3f}); A/B ctr {said(ab['ctr']['stable'])} "
            f"(first {said(ab['ctr']['first'])}), clicks {said(ab['clicks']['stable'])} ({t1 - t0:.0f} s + {t2 - t1:.0f} s)"
            + (f"; classic draft {said(other['stable'])} ({t3 - t2:.0f} s)" if other is not None else ""))
    live = tr.live_check(pairs[0][0]["name"], pairs[0][1]["name"], a.live_searches)
    log(f"live check: {live}")
    tr.close()
    return {"pairs": rows, "live_check": live, "prepare_seconds": round(secs), "summary": summarise(rows, a)}


def extend(bench: VersionBench, out: Path, versions: list[dict], sens: dict, cap: int, seed: int) -> None:
    """Continue the interleaving of the pairs still undecided at their cap up to ``cap`` sessions (same store, same
    checkpoints), in place."""
    from fusionrank.feedback.interleave import interleaving_report

    names = {r[k] for r in sens["pairs"] for k in ("a", "b")}
    tr = Traffic(bench, out, [v for v in versions if v["name"] in names],
                 click_model_of(sens["settings"].get("click_model", "pbm")), seed=seed,
                 fresh=False, zipf_s=query_population(sens))
    shared, factor = draft_of(sens) == "shared", float(sens["settings"].get("grid_factor", 2.0))
    tr.prepare()
    t0 = time.perf_counter()
    for i, r in enumerate(sens["pairs"]):
        il = r["interleaving"]
        if il["stable"]["decided"] or checkpoints(cap, factor=factor)[-1] <= il["checks"][-1]["sessions"]:
            continue
        rng = np.random.default_rng(seed * 1000 + 700 + i)
        base, done = 1e9 + i * 1e7, il["checks"][-1]["sessions"]
        va, vb = tr.handles[r["a"]].version, tr.handles[r["b"]].version
        for n in [n for n in checkpoints(cap, factor=factor) if n > done]:
            tr.interleave(r["a"], r["b"], done, n, base, rng, shared=shared)
            done = n
            rep = interleaving_report(tr.svc.events, since=base, until=base + n, pairs=[(va, vb)])[0]
            il["checks"].append({"sessions": n, "used": rep.used, "preference": rep.preference, "ci": list(rep.ci),
                                 "sign": 1 if rep.ci[0] > 0 else -1 if rep.ci[1] < 0 else 0})
        il.update(decisions(il["checks"], r["a"], r["b"]), report=rep.as_dict(), cap=cap)
        log(f"extended pair {i + 1} {r['a']} vs {r['b']} to {cap:,}: {il['stable']} (pref {rep.preference:+.3f})")
    tr.close()
    sens["extend_seconds"] = round(time.perf_counter() - t0)
    sens["settings"]["il_cap_extended"] = cap


def recredit(bench: VersionBench, run_dir: Path, versions: list[dict], sens: dict, weights: dict[str, float], seed: int) -> None:
    """Each pair's interleaving read again from the run's store with other team credit (``weights`` per action), at the
    same checkpoints; kept in ``pair["interleaving_clicks"]``. Nothing is simulated again: the same sessions, the same
    clicks, only the credit differs."""
    from fusionrank.feedback.interleave import interleaving_report
    from fusionrank.feedback.store import open_store

    version = {v["name"]: v["version"] for v in versions}
    store = open_store(run_dir / "interleaving.sqlite", HASH_KEY, None)
    try:
        for i, r in enumerate(sens["pairs"]):
            base, checks = 1e9 + i * 1e7, []
            for c in r["interleaving"]["checks"]:
                rep = interleaving_report(store, since=base, until=base + c["sessions"], weights=weights,
                                          pairs=[(version[r["a"]], version[r["b"]])])[0]
                checks.append({"sessions": c["sessions"], "used": rep.used, "preference": rep.preference, "ci": list(rep.ci),
                               "sign": 1 if rep.ci[0] > 0 else -1 if rep.ci[1] < 0 else 0})
            r["interleaving_clicks"] = {**decisions(checks, r["a"], r["b"]), "report": rep.as_dict(), "checks": checks,
                                        "cap": r["interleaving"].get("cap", sens["settings"]["il_cap"]), "weights": weights}
            log(f"pair {i + 1} {r['a']} vs {r['b']} credited {weights}: {r['interleaving_clicks']['stable']}")
    finally:
        store.close()


def summarise(rows: list[dict], a) -> dict:
    """Agreement and sessions needed per test, rule (stable, first) and truth; an undecided test counts as its cap."""
    tests = {"interleaving": (lambda r: r["interleaving"], a.il_cap), "ab_ctr": (lambda r: r["ab"]["ctr"], a.ab_cap),
             "ab_clicks": (lambda r: r["ab"]["clicks"], a.ab_cap)}
    if rows and all("interleaving_clicks" in r for r in rows):
        tests["interleaving_clicks"] = (lambda r: r["interleaving_clicks"], a.il_cap)
    if rows and all("interleaving_classic" in r for r in rows):
        tests["interleaving_classic"] = (lambda r: r["interleaving_classic"], a.il_cap)
    out: dict = {}
    for rule in ("stable", "first"):
        for truth in ("offline_winner", "zipf_winner"):
            o = out.setdefault(rule, {}).setdefault(truth, {})
            for name, (get, cap) in tests.items():
                d = [r for r in rows if get(r)[rule]["decided"]]
                agree = sum(get(r)[rule]["winner"] == r[truth] for r in d)
                o[name] = {"pairs": len(rows), "decided": len(d), "agree": agree, "agreement": agree / len(rows) if rows else None,
                           "agreement_of_decided": agree / len(d) if d else None,
                           "median_sessions": float(np.median([get(r)[rule]["sessions"] if get(r)[rule]["decided"]
                                                               else get(r).get("cap", cap)
                                                               for r in rows])),
                           "median_sessions_decided": float(np.median([get(r)[rule]["sessions"] for r in d])) if d else None}
            for m in ("ctr", "clicks"):
                o[f"ratio_{m}"] = o[f"ab_{m}"]["median_sessions"] / o["interleaving"]["median_sessions"]
        both = [r["ab"]["ctr"][rule]["sessions"] / r["interleaving"][rule]["sessions"] for r in rows
                if r["interleaving"][rule]["decided"] and r["ab"]["ctr"][rule]["decided"]]
        out[rule]["per_pair_ratio_ctr_median"] = float(np.median(both)) if both else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from fusionrank.settings import get_settings

    home = get_settings().home
    ap.add_argument("--prepared", type=Path, default=home / "bench-clicks", help="clicks_prepare.py's output (read only)")
    ap.add_argument("--out", type=Path, default=home / "bench-interleave")
    ap.add_argument("--run-dir", type=Path, default=None, help="where this run's event store and loop registry go "
                    "(replaced on each run; default --out); the versions stay in --out")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--parts", default="versions,sensitivity,loop")
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--versions", default=None, help="the versions part trains only these (comma-separated names, "
                    "e.g. q20-s0-e4,q3000-s0-e4: the loop's start and the full-information model)")
    ap.add_argument("--il-cap", type=int, default=25_600, help="most interleaved sessions per pair")
    ap.add_argument("--ab-cap", type=int, default=3_276_800, help="most A/B sessions per pair (both arms)")
    ap.add_argument("--live-searches", type=int, default=50)
    ap.add_argument("--draft", choices=("shared", "classic"), default="shared", help="the team draft the sensitivity "
                    "part interleaves with: shared (the service's: a round both rankings would pick the same product "
                    "shows it credited to neither) or classic (the coin's winner takes it)")
    ap.add_argument("--compare-classic", action="store_true", help="with --draft shared, also interleave every pair "
                    "with the classic draft (other sessions, same cap) in the same run")
    ap.add_argument("--grid-factor", type=float, default=2.0, help="the tests are read after 200, 200 f, 200 f^2, ... "
                    "sessions")
    from fusionrank.feedback.clickmodels import CLICK_MODELS

    ap.add_argument("--click-model", default="pbm", choices=CLICK_MODELS.names(),
                    help="the sensitivity shoppers' click model, by its registered name")
    ap.add_argument("--query-zipf", type=float, default=0.0, help="sensitivity shoppers draw the dev queries with Zipf(s) "
                    "popularity; 0 (default): uniformly, the distribution dev NDCG@10 averages over")
    ap.add_argument("--loop-rounds", type=int, default=3)
    ap.add_argument("--loop-sessions", type=int, default=3000)
    ap.add_argument("--loop-batch", type=int, default=500)
    ap.add_argument("--loop-max-interleave", type=int, default=16_000)
    ap.add_argument("--loop-share", type=float, default=1.0)
    ap.add_argument("--loop-labels", default="dr")
    ap.add_argument("--loop-propensity", default="swaps", help="an estimator or a PositionBias .json")
    ap.add_argument("--loop-randomise-share", type=float, default=0.1, help="share of the logged searches randomised")
    ap.add_argument("--loop-explore-share", type=float, default=0.0, help="share of the logged searches explored "
                    "(--loop-explore-count positions show candidates ranked k+1..--loop-explore-depth)")
    ap.add_argument("--loop-explore-depth", type=int, default=50)
    ap.add_argument("--loop-explore-count", type=int, default=1, help="positions of an explored search that show "
                    "a candidate ranked k+1..--loop-explore-depth")
    ap.add_argument("--loop-train-on", default="all", help="all: every search logged so far; round: this round's")
    ap.add_argument("--loop-dm-regressor", default="ridge", help="labels dr: the direct method's regressor")
    ap.add_argument("--loop-logging-scores", action="store_true", help="labels dr: the direct method also reads the "
                    "serving version's scores")
    ap.add_argument("--loop-start", default="q20-s0-e4")
    ap.add_argument("--loop-simulate", default="http", help="sessions before each retraining: http or cached (in bulk)")
    ap.add_argument("--loop-interval", default="bootstrap", help="the gate's interval: bootstrap (valid for one look) "
                    "or sequential (a confidence sequence, valid at every look)")
    ap.add_argument("--loop-sequential-searches", type=int, default=10_000, help="--loop-interval sequential: "
                    "credited searches where the interval is tightest")
    ap.add_argument("--loop-interleave-simulate", default="http", help="sessions while a candidate interleaves: http or "
                    "cached (in bulk, with the service's team drafts; raise --loop-batch with it)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default="interleaving")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the results .json")
    a = ap.parse_args()
    if a.render:
        write_md(json.loads((RESULTS / f"{a.results}.json").read_text()), RESULTS / f"{a.results}.md")
        return
    parts = set(a.parts.split(","))
    a.out.mkdir(parents=True, exist_ok=True)
    a.run_dir = a.run_dir or a.out
    a.run_dir.mkdir(parents=True, exist_ok=True)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONPATH") if k in os.environ)
    nice = os.nice(0)
    invocation = " ".join(x for x in (env, f"nice -n {nice}" if nice else "", sys.executable, "benchmarks/interleaving.py",
                                      *sys.argv[1:]) if x)
    res: dict = {"run": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv[1:]), "invocation": invocation,
                 "load_before": machine_load(),
                 "out": str(a.out), "settings": {k: v for k, v in vars(a).items() if k not in ("prepared", "out", "run_dir")}}
    path = RESULTS / f"{a.results}.json"
    t_all = time.perf_counter()
    bench = VersionBench(a.prepared, a.out, a.epochs, a.batch)
    if "versions" in parts:
        t0 = time.perf_counter()
        train_versions(bench, a.out, set(a.versions.split(",")) if a.versions else None)
        res["versions_seconds"] = round(time.perf_counter() - t0)
    versions = sorted(json.loads((a.out / "versions.json").read_text()), key=lambda v: v["ndcg@10"]["title"])
    if "sensitivity" in parts:
        t0 = time.perf_counter()
        res["sensitivity"] = sensitivity(bench, a.out, versions, a)
        res["sensitivity"].update(seconds=round(time.perf_counter() - t0), run=res["run"], command=res["command"],
                                  settings={k: getattr(a, k) for k in ("pairs", "il_cap", "ab_cap", "live_searches", "seed",
                                                                       "query_zipf", "draft", "grid_factor", "click_model",
                                                                       "compare_classic")})
        save(res, parts, path)
    if "extend" in parts:  # the pairs interleaving left undecided, continued to --il-cap
        sens = json.loads(path.read_text())["sensitivity"]
        extend(bench, a.run_dir, versions, sens, a.il_cap, a.seed)
        sens["summary"] = summarise(sens["pairs"], SimpleNamespace(il_cap=sens["settings"]["il_cap"], ab_cap=sens["settings"]["ab_cap"]))
        sens["extend_command"] = res["command"]
        res["sensitivity"] = sens
        parts.add("sensitivity")  # written as this run's sensitivity part
    if "recredit" in parts:  # the main sensitivity part's interleaving with clicks only credited (Chapelle et al.'s credit)
        sens = json.loads(path.read_text())["sensitivity"]
        recredit(bench, a.run_dir, versions, sens, {"click": 1.0}, a.seed)
        sens["summary"] = summarise(sens["pairs"], SimpleNamespace(il_cap=sens["settings"]["il_cap"], ab_cap=sens["settings"]["ab_cap"]))
        sens["recredit_command"] = res["command"]
        res["sensitivity"] = sens
        parts.add("sensitivity")
    if "loop" in parts:
        t0 = time.perf_counter()
        start = next(v for v in versions if v["name"] == a.loop_start)
        res["loop"] = run_the_loop(bench, a.out, start, a)
        res["loop"].update(run=res["run"], command=res["command"], invocation=res["invocation"])
    res["seconds_total"] = round(time.perf_counter() - t_all)
    res["load_after"] = machine_load()
    save(res, parts, path)


def save(res: dict, parts: set[str], path: Path) -> None:
    """Write ``res`` (+ .md), keeping the parts of the results file this run does not compute (each says its run)."""
    out = dict(res)
    out["versions"] = sorted(json.loads((Path(res["out"]) / "versions.json").read_text()), key=lambda v: v["ndcg@10"]["title"])
    full = [v for v in out["versions"] if v["queries"] == 3000 and v["seed"] == 0 and v["epochs"] == res["settings"]["epochs"]]
    out["full_information"] = {"version": full[0]["name"], "ndcg@10": full[0]["ndcg@10"]} if full else None
    if path.exists():
        old = json.loads(path.read_text())
        for k, v in old.items():  # the parts this run does not compute, each with the run that did
            if (k.startswith("sensitivity") or k == "loop") and k not in out:
                out[k] = v
        prev = old.get("sensitivity")
        if "sensitivity" in res and prev and query_population(prev) != query_population(res["sensitivity"]):
            out.setdefault(f"sensitivity_zipf{query_population(prev):g}", prev)  # another query population: kept beside it
        elif "sensitivity" in res and prev and draft_of(prev) != draft_of(res["sensitivity"]):
            out[f"sensitivity_{draft_of(prev)}"] = prev  # another draft: kept beside it
        out["runs"] = [r for r in old.get("runs", []) if r["run"] != res["run"] or r["parts"] != sorted(parts)]
    out.setdefault("runs", [])
    out["runs"] = out["runs"] + [{"run": res["run"], "command": res["command"], "invocation": res.get("invocation"),
                                  "parts": sorted(parts),
                                  "seconds": res.get("seconds_total"), "load_before": res["load_before"],
                                  "load_after": res.get("load_after")}]
    path.write_text(json.dumps(out, indent=1, default=float))
    write_md(out, path.with_suffix(".md"))


def draft_of(s: dict) -> str:
    """The team draft a sensitivity part interleaved with (runs before the option: the classic draft)."""
    return s["settings"].get("draft", "classic")


def query_population(s: dict) -> float:
    """The Zipf exponent of the sensitivity shoppers' query draws (0: uniform; runs before the option drew Zipf(1))."""
    return float(s["settings"].get("query_zipf", 1.0))


def sensitivity_md(s: dict, main: bool) -> list[str]:
    """The markdown of one sensitivity part (``main``: the headline one)."""
    L: list[str] = []
    il_cap, ab_cap = s["settings"]["il_cap"], s["settings"]["ab_cap"]
    sm = s["summary"]
    zs = query_population(s)
    uniform = zs == 0
    pop = "uniformly" if uniform else f"with Zipf({zs:g}) popularity"
    shared = draft_of(s) == "shared"
    grid = checkpoints(10**9, factor=float(s["settings"].get("grid_factor", 2.0)))[:4]
    grid_txt = ", ".join(f"{n:,}" for n in grid) + ", ..."
    factor = float(s["settings"].get("grid_factor", 2.0))
    n_il = f"{len(checkpoints(il_cap, factor=factor))}" + (f" to {len(checkpoints(s['settings']['il_cap_extended'], factor=factor))}"
                                                           if s["settings"].get("il_cap_extended") else "")
    n_ab = len(checkpoints(ab_cap, factor=factor))
    L += ["## Interleaving sensitivity" + ("" if main else f": an earlier run, dev queries drawn {pop}"
                                            + ("" if shared else ", classic team draft")), "",
          f"Run {s['run']}.", ""]
    if main and shared:
        L += ["The service's team draft shows a round in which both rankings would pick the same product as **shared** "
              "and credits it to neither team (non-competitive pairs, as in Airbnb's interleaving, 2022); the classic "
              "draft (Radlinski et al. 2008) gives it to the team that won the round's coin, so every click on the "
              "common top of two similar rankings adds a random win or loss. "
              + ("Every pair was also interleaved with the classic draft in this run (other sessions, the same cap): "
                 "its row below. " if s["settings"].get("compare_classic") else "")
              + "The runs below this one used the classic draft.", ""]
    if main and uniform:
        L += ["The shoppers draw the dev queries **uniformly**, so the online traffic has the same query distribution as "
              "the offline metric the tests are scored against (dev NDCG@10 is the uniform mean over the 500 dev queries). "
              "An earlier run drew them with Zipf(1) popularity (below): there the population the online tests measure "
              "(popular queries weigh most) and the one the offline winner is defined on (every query once) differ, and a "
              "pair whose popularity-weighted Δ has the opposite sign of the uniform Δ has two right answers. That is a "
              "property of the comparison, not of interleaving or A/B, so the headline figures compare like with like. "
              "Nothing else changed: the same pairs, versions, click model, tests, caps and seeds.", ""]
    L += [f"{len(s['pairs'])} pairs of versions whose dev NDCG@10 (title) differs by 0.005 to 0.05. Shoppers: the 500 "
          f"dev queries (no version trained on them) drawn {pop}, "
          f"{CLICK_MODEL_TEXT.get(s['settings'].get('click_model', 'pbm'), s['settings'].get('click_model'))}, "
          "carts and purchases as in `Shoppers`. Which version of a pair is promoted (team a) is a coin per pair.", "",
          f"- **Interleaving**: a `SearchService` serving team a and interleaving team b on every search (share 1.0); "
          "every dev query's candidates and features once from the service's ranking path (`RankingPipeline.slates`), "
          "both versions' rankings of them kept (the service's `Scorer`), a `team_draft` per session with its own coin, "
          "every session logged as its own interleaved search with its events through the service's SQLite event store; "
          f"preference and 95% bootstrap CI from `interleaving_report` over the first n sessions, n = {grid_txt} "
          f"{il_cap:,}" + (f"; the pairs still undecided there continued to {s['settings']['il_cap_extended']:,} "
                           f"(`interleaving.py {s.get('extend_command', '')}`, {s.get('extend_seconds')} s)"
                           if s["settings"].get("il_cap_extended") else "") +
          ". The decision rule is Chapelle et al. (2012)'s: per search the team with more credit wins (clicks 1, "
          "carts 2, purchases 4: the credit the gate uses), the preference is (wins - losses) / searches with credit, "
          "and a pair is decided when its 95% interval excludes 0"
          + f". Live check: {s['live_check']['searches']} searches through `SearchService.search` itself; "
          f"{s['live_check']['same_as_cached_draft']} of {s['live_check']['logged']} logged lists equal the draft of the "
          "cached rankings in their logged team order.",
          f"- **A/B**: the same shoppers and lists, each version serving half the sessions alone (drawn in memory, not "
          f"logged); n = {grid_txt} {ab_cap:,} sessions (both arms); two-sided tests at 5%: CTR (share of "
          "sessions with a click, i.e. 1 - abandonment, two-proportion z-test; the baseline) and clicks per session "
          "(Welch): absolute click metrics of the kind Radlinski et al. (2008) and Chapelle et al. (2012) compare "
          "interleaving with. Both arms together count as the A/B test's sessions, every interleaved session (with or "
          "without a click) as interleaving's.",
          *([f"- **Clicks only credited**: the same interleaved sessions read again (`interleaving.py "
             f"{s.get('recredit_command', '')}`) with only clicks credited to the teams, as in Radlinski et al. (2008) "
             "and Chapelle et al. (2012); the pairs continued past the first cap are those the gate's credit left "
             "undecided."] if s["pairs"] and "interleaving_clicks" in s["pairs"][0] else []),
          "- Every test runs to its cap. **Stable** (the main figures): the decision is the last check's, and the sessions "
          "needed are those from which every later check was confident the same way. **First**: stopping at the first "
          f"confident check, as a gate that peeks would; with {n_il} (interleaving) or {n_ab} (A/B) looks this decides "
          "early by chance more often than 5%. An undecided pair counts as its cap (a lower bound) in the medians.", ""]
    for rule in ("stable", "first"):
        o = sm[rule]["offline_winner"]
        L += [f"**{rule.capitalize()}** decisions:", "",
              "| test | agrees with offline winner (of all pairs) | among decided | decided | median sessions "
              "(undecided: its cap) | A/B sessions / interleaving sessions |", "|---|---:|---:|---:|---:|---:|"]
        for k, name in (("interleaving", "**team-draft interleaving**" + (", shared picks credited to neither" if shared
                                                                            else "")),
                        ("interleaving_classic", "team-draft interleaving, classic draft"),
                        ("interleaving_clicks", "team-draft interleaving, clicks only credited"),
                        ("ab_ctr", "A/B, CTR (baseline)"), ("ab_clicks", "A/B, clicks per session")):
            if k not in o:
                continue
            p = o[k]
            ratio = ("-" if k == "interleaving" else f"**{o['ratio_' + k[3:]]:.1f}x**" if k == "ab_ctr" else
                     f"A/B CTR {o['ab_ctr']['median_sessions'] / p['median_sessions']:.1f}x" if k.startswith("interleaving_")
                     else f"{o['ratio_' + k[3:]]:.1f}x")
            L.append(f"| {name} | {p['agree']}/{p['pairs']} ({p['agreement']:.0%}) | "
                     f"{'-' if p['agreement_of_decided'] is None else format(p['agreement_of_decided'], '.0%')} | "
                     f"{p['decided']}/{p['pairs']} | {p['median_sessions']:,.0f} | {ratio} |")
        z = sm[rule]["zipf_winner"]
        pr = sm[rule]["per_pair_ratio_ctr_median"]
        L += [""] + ([] if uniform else [
              f"Against the winner on what the shoppers see (dev NDCG@10 weighted by the queries' popularity): "
              f"interleaving {z['interleaving']['agree']}/{z['interleaving']['pairs']}, A/B CTR "
              f"{z['ab_ctr']['agree']}/{z['ab_ctr']['pairs']}, A/B clicks {z['ab_clicks']['agree']}/{z['ab_clicks']['pairs']}. "]) + [
              "Median per-pair ratio of A/B CTR sessions to interleaving sessions, over the pairs both decided: "
              f"{'-' if pr is None else format(pr, '.1f') + 'x'}.", ""]
    L += ["Per pair (stable decisions; a/b: the winner, ✓/✗ against the offline winner; sessions from which the "
          "decision held; > the cap if undecided):", "",
          "| pair (a vs b) | NDCG@10 a | b | Δ | " + ("" if uniform else "popularity-weighted Δ | ") +
          "E[clicks] a | b | interleaving | "
          "sessions | preference [95% CI] at the cap | A/B CTR | sessions | A/B clicks | sessions |",
          "|---|---:|---:|---:|" + ("" if uniform else "---:|") + "---:|---:|---|---:|---|---|---:|---|---:|"]

    def w(r, d):
        win = d["stable"]["winner"]
        return "-" if win is None else ("b" if win == r["b"] else "a") + (" ✓" if win == r["offline_winner"] else " ✗")

    def n(d):
        return f"{d['stable']['sessions']:,}" if d["stable"]["decided"] else f"> {d.get('cap', ab_cap if 'p' in d else il_cap):,}"

    for r in s["pairs"]:
        il, ab, rep = r["interleaving"], r["ab"], r["interleaving"]["report"]
        zd = r["zipf_ndcg_b"] - r["zipf_ndcg_a"]
        L.append(f"| {r['a']} vs {r['b']} | {r['ndcg_a']:.4f} | {r['ndcg_b']:.4f} | {r['delta']:+.4f} | "
                 + ("" if uniform else f"{zd:+.4f}{' †' if zd * r['delta'] < 0 else ''} | ") +
                 f"{r['clicks_a']:.3f} | {r['clicks_b']:.3f} | {w(r, il)} | "
                 f"{n(il)} | {rep['preference']:+.3f} [{rep['ci'][0]:+.3f}, {rep['ci'][1]:+.3f}] | {w(r, ab['ctr'])} | "
                 f"{n(ab['ctr'])} | {w(r, ab['clicks'])} | {n(ab['clicks'])} |")
    if not uniform:
        missed = [r for r in s["pairs"] if r["interleaving"]["stable"]["winner"] != r["offline_winner"]]
        flipped = [r for r in missed if (r["zipf_ndcg_b"] - r["zipf_ndcg_a"]) * r["delta"] < 0]
        L += ["", f"†: the popularity-weighted Δ has the opposite sign of the uniform dev Δ ("
              f"{sum((r['zipf_ndcg_b'] - r['zipf_ndcg_a']) * r['delta'] < 0 for r in s['pairs'])} of {len(s['pairs'])} pairs). "
              f"Of the {len(missed)} pairs where interleaving did not pick the offline winner (picked the other or stayed "
              f"undecided), {len(flipped)} are such pairs: the shoppers, drawing dev queries Zipf({zs:g}), see the other "
              "version as the better one, while the offline winner is the uniform mean over the dev queries."]
    L += ["", f"E[clicks]: expected clicks per session of the version's top 10 under the click model, weighted by "
          f"the shoppers' query distribution. Sensitivity part: {s['seconds']} s (candidates of the dev queries and every version's rankings "
          f"{s['prepare_seconds']} s).", ""]
    return L


def loop_md(lp: dict, full: dict, title: str) -> list[str]:
    """The markdown of one loop part."""
    from fusionrank.feedback.interleave import INTERVAL_NAMES

    L: list[str] = []
    st = lp["settings"]
    train_on = st.get("loop_train_on", "round")
    L += [title, "", f"Run {lp['run']}: `{lp.get('invocation') or lp['command']}`.", "",
          f"`fusionrank.models.loop.run_loop` (what `fusionrank loop` runs) from `{lp['start']}` (dev NDCG@10 "
          f"{lp['start_dev']['title']:.4f} / {lp['start_dev']['title_sparse']:.4f}), a fresh registry, the service on HTTP "
          f"following it and randomising {st.get('loop_randomise_share', 0):.0%} of the searches it does not interleave "
          f"(top result swapped with one of ranks 2..10)"
          + (f" and exploring {st['loop_explore_share']:.0%} of the others ({st.get('loop_explore_count', 1)} random "
             f"position(s) of the 10 show candidates it ranked 11..{st.get('loop_explore_depth', 50)})"
             if st.get("loop_explore_share") else "")
          + f"; per round {st['loop_sessions']:,} sessions of shoppers (training "
          f"queries, Zipf(1), PBM theta_k = 1/k) "
          + ("in bulk (`Shoppers.run_cached`: one search of the service per distinct query, with the promoted version "
             "and its query understanding, every session its own search record and events through the service's "
             "store)" if st.get("loop_simulate") == "cached" else "through the HTTP API")
          + ", `retrain` on "
          + ("every non-interleaved search logged since the start" if train_on == "all" else "that round's searches only")
          + f" (labels `{st['loop_labels']}`"
          + (f" with the `{st.get('loop_dm_regressor', 'ridge')}` direct method on the features"
             + (" and the serving version's scores" if st.get("loop_logging_scores") else " alone")
             if st["loop_labels"] == "dr" else "")
          + f", propensities `{st['loop_propensity']}`"
          + (" estimated by `retrain` from every randomised search in the store" if st["loop_propensity"] == "swaps" else "")
          + f", `ips_listwise`), interleaving on {st['loop_share']:.0%} of the searches in batches of "
          f"{st['loop_batch']:,} sessions ("
          + ("in bulk, with the service's team drafts" if st.get("loop_interleave_simulate") == "cached"
             else "through the HTTP API") + f") until the gate decides (offline tolerance {lp['policy']['tolerance']}, 95% interval, at "
          f"least {lp['policy']['min_searches']} credited searches"
          + (f", a confidence sequence tightest at {lp['policy'].get('sequential_searches', 10_000):,} of them"
             if lp["policy"].get("interval") == "sequential" else ", a bootstrap interval at every check")
          + f"; undecided after {st['loop_max_interleave']:,} "
          f"sessions: retired). {lp['seconds']} s.", "",
          "Dev NDCG@10 here is measured as for every version above (the prepared dev slates, queries as typed); the gate's "
          "own offline numbers (the service's ranking path, with the query understanding `retrain` builds) are beside "
          "them.", "",
          "| round | candidate | trained on (searches) | candidate dev NDCG@10 (gate's) | outcome | serving after | its dev "
          "NDCG@10 title / title_sparse (gate's) | minus full (title) | preference ["
          + "95% " + INTERVAL_NAMES[lp["policy"].get("interval", "bootstrap")] + "] | sessions logged + "
          "interleaved | sessions so far |",
          "|---:|---|---:|---:|---|---|---:|---:|---|---:|---:|"]
    for r in lp["rounds"]:
        pd_, cd = r["promoted_dev"], r["candidate_dev"]
        def g(x):
            return "" if x is None else f" ({x:.4f})"

        tr_n = r.get("searches_trained")
        L.append(f"| {r['round']} | {r['candidate']} | {'-' if tr_n is None else format(tr_n, ',')} | "
                 f"{'-' if cd is None else format(cd['title'], '.4f')}{g(r['candidate_ndcg'])} | "
                 f"{r['outcome']} | {r['promoted']} | {pd_['title']:.4f} / {pd_['title_sparse']:.4f}{g(r['promoted_ndcg'])} | "
                 f"{pd_['title'] - full['title']:+.4f} | "
                 + ("-" if r["preference"] is None else f"{r['preference']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]")
                 + f" | {r['sessions_logged']:,} + {r['sessions_interleaving']:,} | {r['sessions_total']:,} |")
    if any(r.get("theta") for r in lp["rounds"]):
        L += ["", "Position bias each retraining estimated (theta_k / theta_1, ranks 1-10; the shoppers' truth is 1/k):", "",
              "| round | from searches (randomised) | " + " | ".join(f"k={k}" for k in range(1, 11)) + " |",
              "|---:|---:|" + "---:|" * 10,
              "| truth | - | " + " | ".join(f"{1 / k:.3f}" for k in range(1, 11)) + " |"]
        for r in lp["rounds"]:
            if r.get("theta"):
                pl = r.get("propensity_log") or {}
                L.append(f"| {r['round']} | {pl.get('searches', 0):,} ({pl.get('randomised', 0):,}) | "
                         + " | ".join(f"{t:.3f}" for t in r["theta"][:10]) + " |")
    prev, worse = lp["start_dev"]["title"], []
    for r in lp["rounds"]:
        if r["outcome"] == "promoted" and r["promoted_dev"]["title"] < prev:
            worse.append(f"round {r['round']} ({r['promoted_dev']['title'] - prev:+.4f})")
        prev = r["promoted_dev"]["title"]
    L += ["", "Promotions that lowered dev NDCG@10 (title): " + (", ".join(worse) if worse else "none") + "."]
    L += ["", "Decisions recorded in the registry:", ""]
    L += [f"- {d['version']} {d['action']}: {d['reason']}" for d in lp["decisions"]]
    L.append("")
    return L


def write_md(res: dict, path: Path) -> None:
    if res["full_information"] is None:
        return  # written once the full-information version is trained
    full = res["full_information"]["ndcg@10"]
    L = ["# Interleaving against A/B, and the closed loop (fashion44k, simulated shoppers)", "",
         "Dev NDCG@10 over the full catalogue (500 queries, gain 2^g-1, ideal DCG "
         "from all judged products), title / title_sparse. Every version is the fusion ranker of "
         "`learning_from_clicks.py` (gated fusion, MLP head, `ips_listwise`, batch 32) trained on the true relevance of the "
         "candidates of the first N training queries.", "",
         f"- full information (all 3,000 training queries, `{res['full_information']['version']}`): "
         f"title {full['title']:.4f}, title_sparse {full['title_sparse']:.4f}", "", "Runs (each part says which run computed it):", ""]
    for r in res.get("runs", []):
        cmd = r.get("invocation") or f"nice -n 10 .venv/bin/python benchmarks/interleaving.py {r['command']}"
        L.append(f"- {r['run']}, parts {', '.join(r['parts'])}: `{cmd}`, {r['seconds'] if r['seconds'] is not None else '?'} s wall. Machine before: "
                 f"{r['load_before']}. After: {r['load_after']}.")
    for snap in res.get("ps_snapshots", []):
        L.append(f"- During the runs, `ps` at {snap['time']}: {snap['text']}")
    L.append("")
    for key in sorted((k for k in res if k.startswith("sensitivity")), key=lambda k: (k != "sensitivity", k)):
        L += sensitivity_md(res[key], main=key == "sensitivity")
    if res.get("loop"):
        L += loop_md(res["loop"], full, "## The loop")
    # loop runs with other settings, each in its own results file (interleaving_loop_*.json)
    for other in sorted(path.parent.glob(path.stem + "_loop_*.json")):
        lp = json.loads(other.read_text()).get("loop")
        if lp:
            L += loop_md(lp, full, f"## The loop, {', '.join(f'{k[5:]} {v}' for k, v in lp['settings'].items() if k in ('loop_labels', 'loop_dm_regressor', 'loop_train_on'))} "
                                   f"(`{other.name}`)")
    L += ["## Versions", "", "| version | training queries | seed | epochs | NDCG@10 title | title_sparse | train s |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for v in res["versions"]:
        L.append(f"| {v['name']} | {v['queries']:,} | {v['seed']} | {v['epochs']} | {v['ndcg@10']['title']:.4f} | "
                 f"{v['ndcg@10']['title_sparse']:.4f} | {v['train_seconds']} |")
    path.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
