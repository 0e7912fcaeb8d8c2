"""Team-draft interleaving (Radlinski, Kurup and Joachims 2008): two rankers compared on one result list.

For a share of searches the service shows one list built from the promoted ranking ``A`` and a
candidate ranking ``B`` by :func:`team_draft`, and logs which team (:data:`~fusionrank.feedback.schema.TEAMS`:
``a`` or ``b``) contributed each product shown, or :data:`~fusionrank.feedback.schema.SHARED_TEAM` for a
product both rankings would have placed there. A shopper's clicks, carts and purchases are then
credited to the teams of the products they hit (:func:`team_credit`); the team with more credit
wins the search (:func:`outcome`).

Shared products are the draft's *non-competitive pairs* (Airbnb's interleaving, 2022): when both
teams' next pick in a round is the same product, it is shown once and credited to neither, since a
click on it says nothing about which ranking is better. Classic team draft gives such a product to
the team that won the round's coin, so every click on the common top of two similar rankings adds
a random win or loss; leaving them out keeps the comparison fair (it is still symmetric in ``a``
and ``b``) and makes it far more sensitive when the rankings share their top results. Over many searches, the candidate's *preference* is

    Δ = (wins - losses) / (wins + losses + ties)      in [-1, 1]

counted over the searches with any credited action (those without one say nothing), with a
percentile-bootstrap confidence interval over those searches
(:func:`fusionrank.metrics.significance.mean_ci` of the outcomes in {-1, 0, +1}). Δ > 0 means
shoppers preferred the candidate (Chapelle et al. 2012, "Large-scale validation and analysis of
interleaved search evaluation", Δ_AB with ties counted in the denominator).

:func:`interleaving_report` reads the interleaved searches of an event store and gives one
:class:`ComparisonReport` per (promoted, candidate) pair.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Hashable, Iterable, Literal, Mapping, Sequence, get_args

import numpy as np

from .schema import DEFAULT_ACTION_WEIGHTS, SHARED_TEAM, TEAMS

__all__ = ["draw_interleaving", "team_draft", "team_credit", "outcome", "ComparisonReport", "compare_outcomes", "interleaving_report",
           "Interval", "INTERVALS", "INTERVAL_NAMES"]

A, B = TEAMS


def draw_interleaving(rng, share: float, n_candidates: int) -> tuple[int, random.Random] | None:
    """The interleaving decision for one search while ``n_candidates`` candidates interleave on ``share`` of them.

    None (the promoted model's list), or ``(candidate index, coin)``: the candidate drawn uniformly, and
    the coin (a fresh :class:`random.Random`) for :func:`team_draft`. ``rng`` is a :class:`random.Random`;
    the service and the bulk shoppers both draw through here.
    """
    if n_candidates <= 0 or share <= 0 or rng.random() >= share:
        return None
    return rng.randrange(n_candidates), random.Random(rng.getrandbits(64))


def team_draft(a: Sequence[Hashable], b: Sequence[Hashable], k: int, rng, *,
               shared: bool = True) -> tuple[list, list[str]]:
    """Interleave rankings ``a`` and ``b`` into at most ``k`` items; returns ``(items, teams)``.

    Team draft: in each round the team that has picked fewer items picks next (a coin,
    ``rng.random() < 0.5`` meaning ``a``, decides when both have picked as many); the picking team
    takes its ranking's highest item not yet in the list. When one ranking has nothing left to
    contribute the other fills the remaining places. ``rng`` is anything with ``random()``
    (a :class:`random.Random`). Both rankings usually order the same candidates.

    With ``shared`` (the default), a round whose two picks would be the same item shows it once as
    :data:`~fusionrank.feedback.schema.SHARED_TEAM` (no coin is drawn and neither team's count
    grows); ``shared=False`` is Radlinski et al.'s draft, where the coin's winner takes it.
    """
    items: list = []
    teams: list[str] = []
    seen: set = set()
    ia = ib = na = nb = 0
    while len(items) < k:
        while ia < len(a) and a[ia] in seen:
            ia += 1
        while ib < len(b) and b[ib] in seen:
            ib += 1
        a_left, b_left = ia < len(a), ib < len(b)
        if not (a_left or b_left):
            break
        if shared and na == nb and a_left and b_left and a[ia] == b[ib]:
            x = a[ia]
            teams.append(SHARED_TEAM)
        else:
            pick_a = a_left and (not b_left or na < nb or (na == nb and rng.random() < 0.5))
            if pick_a:
                x, na = a[ia], na + 1
                teams.append(A)
            else:
                x, nb = b[ib], nb + 1
                teams.append(B)
        items.append(x)
        seen.add(x)
    return items, teams


def team_credit(shown: Sequence[Hashable], teams: Sequence[str], actions: Iterable[tuple[Hashable, str]],
                weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Credit per team: each distinct ``(product, action)`` on a shown product adds its action weight to the product's team.

    ``actions`` are ``(product_id, action_name)`` pairs (repeats of the same action on the same product count
    once; impressions, actions of products not shown and actions on shared products count nothing). ``weights`` default to
    :data:`~fusionrank.feedback.schema.DEFAULT_ACTION_WEIGHTS` (click 1, add_to_cart 2, purchase 4).
    """
    w = DEFAULT_ACTION_WEIGHTS if weights is None else weights
    credit = {A: 0.0, B: 0.0}
    for t, action in _team_actions(shown, teams, actions):
        if action in w:
            credit[t] += float(w[action])
    return credit


def _team_actions(shown: Sequence[Hashable], teams: Sequence[str], actions: Iterable[tuple[Hashable, str]]):
    """``(team, action)`` of each distinct ``(product, action)`` on a product of team ``a`` or ``b`` (not on a shared
    product, nor on one not shown)."""
    team_of = dict(zip(shown, teams))
    for pid, action in set(actions):
        t = team_of.get(pid)
        if t in TEAMS:
            yield t, action


def outcome(credit: Mapping[str, float]) -> int | None:
    """+1 if team ``b`` (the candidate) has more credit, -1 if ``a`` has, 0 for a tie, None when neither has any."""
    ca, cb = credit[A], credit[B]
    if ca == 0 and cb == 0:
        return None
    return int(np.sign(cb - ca))


@dataclass
class ComparisonReport:
    """Interleaving evidence for one candidate against one promoted model (their model versions)."""

    control: str                      # team a: the promoted model version
    candidate: str                    # team b
    searches: int                     # interleaved searches logged
    used: int                         # those with credited actions (wins + losses + ties)
    sessions: int                     # distinct shopper sessions among the used searches
    wins: int                         # the candidate had more credit
    losses: int
    ties: int
    preference: float | None          # (wins - losses) / used; None with no used search
    ci: tuple[float, float] | None
    confidence: float
    p_value: float | None
    credit: dict[str, dict[str, int]] = field(default_factory=dict)  # team -> action -> count
    interval: str = "bootstrap"       # how ``ci`` was computed (:data:`INTERVALS`)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = list(self.ci) if self.ci is not None else None
        return d


#: How the preference's interval is computed: a percentile bootstrap (valid when looked at once), or a confidence
#: sequence (valid however often the gate looks while the searches keep coming).
Interval = Literal["bootstrap", "sequential"]
INTERVALS: tuple[str, ...] = get_args(Interval)
#: What each interval is called in reports.
INTERVAL_NAMES = {"bootstrap": "CI", "sequential": "confidence sequence"}


def compare_outcomes(outcomes: Sequence[int], *, confidence: float = 0.95, n_resamples: int = 2000,
                     seed: int | None = 0, interval: str = "bootstrap",
                     optimal_n: int = 10_000) -> tuple[float | None, tuple[float, float] | None, float | None]:
    """``(preference, ci, p)`` of per-search outcomes in {-1, 0, +1} (None for all three with no outcome).

    ``interval``: ``bootstrap`` (:func:`~fusionrank.metrics.significance.mean_ci`, with its p-value) or
    ``sequential`` (:func:`~fusionrank.metrics.significance.confidence_sequence`, tightest at ``optimal_n``
    outcomes; no p-value).
    """
    from ..errors import UnknownNameError
    from ..metrics.significance import confidence_sequence, mean_ci

    if interval not in INTERVALS:
        raise UnknownNameError("interval", interval, INTERVALS)
    if not len(outcomes):
        return None, None, None
    d = np.asarray(outcomes, np.float64)
    if interval == "sequential":
        mean, ci = confidence_sequence(d, confidence=confidence, optimal_n=optimal_n)
        return mean, ci, None
    mean, ci, p = mean_ci(d, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return mean, ci, p


def interleaving_report(store, *, since: float | None = None, until: float | None = None,
                        weights: Mapping[str, float] | None = None, confidence: float = 0.95, n_resamples: int = 2000,
                        seed: int | None = 0, pairs: Iterable[tuple[str, str]] | None = None, interval: str = "bootstrap",
                        optimal_n: int = 10_000) -> list[ComparisonReport]:
    """One :class:`ComparisonReport` per (promoted, candidate) pair interleaved in ``store`` (only ``pairs`` if given).

    ``interval`` and ``optimal_n``: the preference's interval, see :func:`compare_outcomes`."""
    wanted = None if pairs is None else set(map(tuple, pairs))
    groups: dict[tuple[str, str], list[dict]] = {}
    searches = store.interleaving_log(since=since, until=until) if wanted is None else store.interleaving_log(
        since=since, until=until, model_versions=sorted({a for a, _ in wanted}), candidates=sorted({b for _, b in wanted}))
    for s in searches:
        key = (s["model_version"], s["interleaved_with"])
        if wanted is None or key in wanted:
            groups.setdefault(key, []).append(s)
    out = []
    for (control, cand), searches in sorted(groups.items()):
        outs, sessions = [], set()
        credit = {t: {} for t in TEAMS}
        for s in searches:
            c = team_credit(s["product_ids"], s["teams"], s["actions"], weights)
            o = outcome(c)
            if o is None:
                continue
            outs.append(o)
            sessions.add(s["session_id"] or s["query_id"])
            for t, action in _team_actions(s["product_ids"], s["teams"], s["actions"]):
                credit[t][action] = credit[t].get(action, 0) + 1
        pref, ci, p = compare_outcomes(outs, confidence=confidence, n_resamples=n_resamples, seed=seed, interval=interval,
                                       optimal_n=optimal_n)
        o = np.asarray(outs, np.int64)
        out.append(ComparisonReport(control, cand, len(searches), len(outs), len(sessions), int((o > 0).sum()),
                                    int((o < 0).sum()), int((o == 0).sum()), pref, ci, confidence, p, credit, interval))
    return out
