"""Team-draft interleaving: construction and credit on hand-made cases, and the report over a real event store."""
from __future__ import annotations

import random

import numpy as np
import pytest

from fusionrank.feedback.interleave import compare_outcomes, interleaving_report, outcome, team_credit, team_draft
from fusionrank.feedback.schema import Event, SearchLog, ServedSlate


class Coins:
    """A fixed sequence of coin flips: True = team a picks first in a round where both have picked as many."""

    def __init__(self, *flips: bool):
        self.flips = list(flips)

    def random(self) -> float:
        return 0.0 if self.flips.pop(0) else 0.9


def test_team_draft_alternates_in_pairs_and_skips_items_already_picked():
    a = ["d1", "d2", "d3", "d4"]
    b = ["d2", "d3", "d1", "d4"]
    # round 1: a wins the coin, picks d1; b picks d2.  round 2: b wins, picks d3; a's next unpicked is d4.
    items, teams = team_draft(a, b, 4, Coins(True, False), shared=False)
    assert items == ["d1", "d2", "d3", "d4"]
    assert teams == ["a", "b", "b", "a"]


def test_classic_team_draft_when_both_rankings_agree_each_team_gets_half():
    a = b = list(range(10))
    items, teams = team_draft(a, b, 10, random.Random(3), shared=False)
    assert items == a  # identical rankings: the interleaved list is that ranking
    assert teams.count("a") == teams.count("b") == 5
    for i in range(0, 10, 2):  # every pair of places holds one pick of each team
        assert sorted(teams[i:i + 2]) == ["a", "b"]


def test_team_draft_fills_from_the_other_ranking_and_stops_at_k():
    items, teams = team_draft(["x"], ["x", "y", "z"], 5, Coins(True), shared=False)
    assert items == ["x", "y", "z"] and teams == ["a", "b", "b"]
    items, teams = team_draft(["x"], ["x", "y", "z"], 5, Coins())  # x is both teams' pick: shared, then b fills
    assert items == ["x", "y", "z"] and teams == ["ab", "b", "b"]
    items, teams = team_draft(list("abcdef"), list("fedcba"), 3, Coins(False, True))
    assert items == ["f", "a", "b"] and teams == ["b", "a", "a"]
    assert team_draft([], [], 3, Coins()) == ([], [])


def test_team_draft_is_fair_to_both_teams_over_coins():
    """Over many coins, each ranking's top item is shown first half of the time (the draft favours neither)."""
    rng = random.Random(0)
    firsts = [team_draft([1, 2, 3], [3, 2, 1], 3, rng)[1][0] for _ in range(4000)]
    assert abs(firsts.count("a") / 4000 - 0.5) < 0.03


def test_team_draft_shows_a_round_both_teams_would_pick_the_same_item_as_shared():
    # round 1: both rankings start with d1 -> shared, no coin drawn.  round 2: a's next d2, b's next d3 differ:
    # the coin says b first (d3), then a takes d2.  round 3: both have d4 next -> shared.
    a = ["d1", "d2", "d3", "d4", "d5"]
    b = ["d1", "d3", "d2", "d4", "d6"]
    items, teams = team_draft(a, b, 5, Coins(False, True))
    assert items == ["d1", "d3", "d2", "d4", "d5"]
    assert teams == ["ab", "b", "a", "ab", "a"]
    # the same item is shared only at a round's start: mid-round the second team takes its own next item
    items, teams = team_draft([1, 2, 3], [2, 1, 3], 3, Coins(True))
    assert items == [1, 2, 3] and teams == ["a", "b", "ab"]
    # identical rankings: every place is shared, so no click can favour either team
    items, teams = team_draft(list(range(10)), list(range(10)), 10, Coins())
    assert items == list(range(10)) and set(teams) == {"ab"}
    assert outcome(team_credit(items, teams, [(0, "click"), (3, "purchase")])) is None


def test_shared_team_draft_is_fair_under_clicks_that_ignore_the_teams():
    """Clicks that depend only on the position (not on which ranking placed an item) favour neither team."""
    rng, clicks = random.Random(1), np.random.default_rng(1)
    a, b = list(range(20)), [0, 2, 1, 3, 5, 4, 6, 8, 7, 9] + list(range(10, 20))
    outs = []
    for _ in range(6000):
        items, teams = team_draft(a, b, 10, rng)
        hit = [(x, "click") for r, x in enumerate(items) if clicks.random() < 1 / (r + 1)]
        o = outcome(team_credit(items, teams, hit))
        if o is not None:
            outs.append(o)
    assert abs(np.mean(outs)) < 0.03 and len(outs) > 3000


def test_team_credit_counts_each_action_once_with_its_weight():
    shown, teams = ["p1", "p2", "p3", "p4"], ["a", "b", "b", "a"]
    actions = [("p1", "click"), ("p1", "click"), ("p2", "click"), ("p2", "add_to_cart"), ("p3", "purchase"),
               ("p9", "click"), ("p4", "impression")]
    c = team_credit(shown, teams, actions)
    assert c == {"a": 1.0, "b": 1.0 + 2.0 + 4.0}
    assert outcome(c) == 1
    assert team_credit(shown, teams, actions, weights={"click": 1.0}) == {"a": 1.0, "b": 1.0}
    assert outcome({"a": 2.0, "b": 1.0}) == -1 and outcome({"a": 1.0, "b": 1.0}) == 0
    assert outcome({"a": 0.0, "b": 0.0}) is None  # no action: the search says nothing


def test_preference_and_its_interval():
    pref, ci, p = compare_outcomes([1] * 60 + [-1] * 20 + [0] * 20, n_resamples=2000)
    assert pref == pytest.approx(0.4)  # (60 - 20) / 100
    assert 0 < ci[0] < 0.4 < ci[1] and p < 0.01
    pref, ci, _ = compare_outcomes([1, -1] * 50)
    assert pref == 0 and ci[0] < 0 < ci[1]
    assert compare_outcomes([]) == (None, None, None)


def _slate(ids):
    n = len(ids)
    return ServedSlate(list(ids), np.arange(n, 0, -1, dtype=np.float32), np.zeros((n, 2), np.float32), np.ones((n, 1), bool),
                       np.zeros(3, np.float32), [f"v-{i}" for i in ids], list(range(1, n + 1)))


def test_report_credits_teams_from_the_store_and_training_leaves_interleaved_searches_out(store_url):
    from fusionrank.feedback.store import open_store

    st = open_store(store_url, b"k" * 32)
    ids = ["p1", "p2", "p3", "p4"]
    logs, events = [], []
    # 30 searches where the candidate's product is clicked, 10 where the promoted one's is, 5 ties, 5 without clicks
    for i in range(50):
        sid = f"s{i}"
        logs.append(SearchLog(sid, "red shoes", 1000.0 + i, "A", _slate(ids), session_id=f"sess{i % 40}",
                              interleaved_with="B", teams=["a", "b", "a", "b"]))
        clicked = ["p2"] if i < 30 else ["p1"] if i < 40 else ["p1", "p4"] if i < 45 else []
        events += [Event("click", sid, p, position=ids.index(p) + 1, model_version="A") for p in clicked]
        events.append(Event("impression", sid, "p1", position=1, model_version="A"))
    logs.append(SearchLog("plain", "red shoes", 2000.0, "A", _slate(ids)))  # a normal search
    events.append(Event("click", "plain", "p3", position=3, model_version="A"))
    st.log_searches(logs)
    st.record_events(events)

    (r,) = interleaving_report(st, n_resamples=1000)
    assert (r.control, r.candidate) == ("A", "B")
    assert (r.searches, r.used, r.wins, r.losses, r.ties) == (50, 45, 30, 10, 5)
    assert r.preference == pytest.approx(20 / 45) and r.ci[0] > 0
    assert r.sessions == 40  # searches 40..44 share sessions 0..4 with searches 0..4
    assert r.credit["b"]["click"] == 35 and r.credit["a"]["click"] == 10 + 5
    (late,) = interleaving_report(st, since=1045.0)  # the last five searches: shown, never clicked
    assert (late.searches, late.used, late.preference, late.ci) == (5, 0, None, None)
    # click training sees the normal search only (interleaved lists mix two rankers)
    log = st.click_log()
    assert set(log["query_id"]) == {"plain"} and int(log["click"].sum()) == 1
    assert len(st.click_log(interleaved=None)) == 51 * 4
    # a UBI export says which searches were interleaved, and the teams
    from fusionrank.feedback.ubi import query_document

    docs = {q["query_id"]: query_document(q) for q in st.iter_queries()}
    assert docs["s0"]["query_attributes"]["interleaved_with"] == "B" and docs["s0"]["query_attributes"]["teams"] == ["a", "b", "a", "b"]
    assert "teams" not in docs["plain"]["query_attributes"]
    st.close()


def test_a_version_1_store_is_upgraded_in_place(store_url):
    """A store written before interleaving existed gains the two columns; its searches stay and read as not interleaved."""
    from fusionrank.feedback.store import SCHEMA_VERSION, open_store

    st = open_store(store_url, b"k" * 32)
    st.log_search(SearchLog("old", "blue jeans", 1000.0, "A", _slate(["p1", "p2"])))
    with st._tx() as cur:  # make it exactly what version 1 wrote
        for stmt in ("ALTER TABLE queries DROP COLUMN teams", "ALTER TABLE queries DROP COLUMN interleaved_with",
                     "UPDATE meta SET value = '1' WHERE key = 'schema_version'"):
            st._x(cur, stmt)
    st.close()
    st = open_store(store_url, b"k" * 32)
    assert len(st.click_log()) == 2 and st.interleaving_log() == []
    st.log_search(SearchLog("new", "blue jeans", 1001.0, "A", _slate(["p1", "p2"]), interleaved_with="B", teams=["b", "a"]))
    assert [s["query_id"] for s in st.interleaving_log()] == ["new"]
    with st._tx(write=False) as cur:
        assert st._x(cur, "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    st.close()
    open_store(store_url, b"k" * 32).close()  # opening an upgraded store again changes nothing


def test_compare_outcomes_sequential_is_wider_than_one_look_and_names_the_intervals():
    from fusionrank.errors import UnknownNameError
    from fusionrank.feedback.interleave import compare_outcomes

    rng = np.random.default_rng(0)
    out = rng.choice([-1, 0, 1], size=5000, p=[0.4, 0.15, 0.45])
    m1, (lo1, hi1), p1 = compare_outcomes(out, interval="bootstrap")
    m2, (lo2, hi2), p2 = compare_outcomes(out, interval="sequential", optimal_n=5000)
    assert m1 == m2 and p1 is not None and p2 is None
    assert 1.3 < (hi2 - lo2) / (hi1 - lo1) < 1.8  # about 1.5x at the size it is tuned for
    with pytest.raises(UnknownNameError, match="valid names: bootstrap, sequential"):
        compare_outcomes(out, interval="bonferroni")


def test_interleaving_log_reads_only_the_pairs_asked_for(store_url):
    """The gate's report reads one comparison's searches from the store, not every interleaved search ever logged."""
    from fusionrank.feedback.store import open_store

    st = open_store(store_url, b"k" * 32)
    teams = ["a", "b"]
    slate = _slate(["p1", "p2"])
    logs = [SearchLog(f"s{i}", "q", 100.0 + i, control, slate, interleaved_with=cand, teams=teams)
            for i, (control, cand) in enumerate([("m1", "m2"), ("m1", "m3"), ("m2", "m3"), ("m1", "m2")])]
    st.log_searches(logs)
    st.record_events([Event("click", "s0", "p2", position=2, model_version="m1")])
    got = st.interleaving_log(model_versions=["m1"], candidates=["m2"])
    assert [s["query_id"] for s in got] == ["s0", "s3"] and got[0]["actions"] == [("p2", "click")]
    assert len(st.interleaving_log()) == 4 and st.interleaving_log(candidates=[]) == []
    (r,) = interleaving_report(st, pairs=[("m1", "m3")])
    assert (r.control, r.candidate, r.searches) == ("m1", "m3", 1)
    st.close()
