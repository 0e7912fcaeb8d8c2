"""The promotion gate: offline metrics within the tolerance AND an interleaving preference above zero, recorded with evidence."""
from __future__ import annotations

import numpy as np
import pytest

from fusionrank.feedback.schema import Event, SearchLog, ServedSlate
from fusionrank.models import ModelRegistry, PromotionPolicy, decide, gate, start_interleaving


def _slate(ids):
    n = len(ids)
    return ServedSlate(list(ids), np.zeros(n, np.float32), np.zeros((n, 1), np.float32), np.ones((n, 1), bool),
                       np.zeros(2, np.float32), ["k"] * n, list(range(1, n + 1)))


def log_interleaved(store, control: str, candidate: str, wins: int, losses: int, ties: int = 0, start: float = 1000.0):
    """Interleaved searches where the candidate's product (team b) or the promoted one's (team a) is clicked."""
    ids, teams = ["p1", "p2", "p3", "p4"], ["a", "b", "b", "a"]
    logs, events = [], []
    for i, kind in enumerate(["win"] * wins + ["loss"] * losses + ["tie"] * ties):
        sid = f"{candidate}-{start + i:.0f}"
        logs.append(SearchLog(sid, "q", start + i, control, _slate(ids), session_id=sid, interleaved_with=candidate,
                              teams=teams))
        clicked = {"win": ["p2"], "loss": ["p1"], "tie": ["p1", "p3"]}[kind]
        events += [Event("click", sid, p, position=ids.index(p) + 1, model_version=control) for p in clicked]
    store.log_searches(logs)
    store.record_events(events)


@pytest.fixture
def registry(tmp_path, fake_model):
    """v1 promoted; v2 a candidate 0.02 NDCG@10 worse offline; v3 a candidate 0.01 better."""
    reg = ModelRegistry.create(tmp_path / "reg", PromotionPolicy(tolerance=0.005, min_searches=100))
    v1 = reg.register(fake_model(tmp_path / "m1", b"1"))
    for name, ndcg in (("m2", 0.58), ("m3", 0.61)):
        off = {"split": "dev", "queries": 500, "metrics": {"ndcg@10": ndcg}, "baseline": "v1",
               "baseline_model_version": v1.model_version, "baseline_metrics": {"ndcg@10": 0.60}}
        reg.register(fake_model(tmp_path / name, name.encode()), parent="v1", offline=off)
    return reg


@pytest.fixture
def store(tmp_path):
    from fusionrank.feedback.store import open_store

    st = open_store(tmp_path / "events.sqlite", b"k" * 32)
    yield st
    st.close()


def test_gate_refuses_a_candidate_that_regresses_offline_even_when_shoppers_prefer_it(registry, store):
    idx = registry.read()
    v1, v2 = idx.find("v1"), idx.find("v2")
    log_interleaved(store, v1.model_version, v2.model_version, wins=300, losses=100)
    res = decide(registry, "v2", store, actor="test")
    assert res.verdict == "refuse"
    assert "beyond the tolerance 0.005" in res.reasons[0] and "-0.0200" in res.reasons[0]
    assert "above zero" in res.reasons[1]  # online alone would have passed
    idx = registry.read()
    assert idx.promoted().id == "v1" and idx.find("v2").state == "candidate"  # manual policy: refused, kept as it was
    d = idx.decisions[-1]
    assert (d.version, d.action, d.actor) == ("v2", "refuse", "test")
    assert d.evidence["offline"]["delta"] == pytest.approx(-0.02)
    assert d.evidence["interleaving"]["wins"] == 300 and d.evidence["interleaving"]["ci"][0] > 0
    # the auto policy retires what the gate refuses; a forced promotion is recorded as forced
    decide(registry, "v2", store, actor="auto", retire_refused=True)
    assert registry.read().find("v2").state == "retired"
    decide(registry, "v2", store, actor="test", force=True)
    d = registry.read().decisions[-1]
    assert (d.action, d.version, d.evidence["verdict"]) == ("promote", "v2", "refuse") and d.reason.startswith("forced")


def test_gate_promotes_only_with_an_interval_above_zero(registry, store):
    idx = registry.read()
    v1, v3 = idx.find("v1"), idx.find("v3")
    # too few searches: wait (recorded only when asked for explicitly)
    log_interleaved(store, v1.model_version, v3.model_version, wins=40, losses=20)
    res = decide(registry, "v3", store)
    assert res.verdict == "wait" and "fewer than the 100 searches" in res.reasons[1]
    assert registry.read().decisions[-1].action == "register"
    # a preference whose interval still includes zero: wait
    log_interleaved(store, v1.model_version, v3.model_version, wins=60, losses=70, start=2000.0)
    res = gate(v3, v1, None, idx.policy)
    assert res.verdict == "wait" and "no credited interleaved searches" in res.reasons[1]
    res = decide(registry, "v3", store)
    assert res.verdict == "wait" and "includes zero" in res.reasons[1]
    # clearly preferred: promoted, v1 retired, both recorded with the evidence
    log_interleaved(store, v1.model_version, v3.model_version, wins=150, losses=20, start=3000.0)
    res = decide(registry, "v3", store, actor="test")
    assert res.verdict == "promote", res.reasons
    idx = registry.read()
    assert idx.promoted().id == "v3" and idx.find("v1").state == "retired"
    d = idx.decisions[-1]
    assert (d.version, d.action, d.to_state) == ("v3", "promote", "promoted")
    assert d.evidence["interleaving"]["used"] == 360 and d.evidence["offline"]["delta"] == pytest.approx(0.01)


def test_an_interval_below_zero_is_refused(registry, store):
    idx = registry.read()
    log_interleaved(store, idx.find("v1").model_version, idx.find("v3").model_version, wins=30, losses=120)
    res = decide(registry, "v3", store)
    assert res.verdict == "refuse" and "below zero: shoppers prefer v1" in res.reasons[1]


def test_a_candidate_that_regresses_offline_is_never_shown_to_shoppers(registry):
    assert start_interleaving(registry, "v2", actor="test", log=lambda m: None) is False
    assert start_interleaving(registry, "v3", actor="test", log=lambda m: None) is True
    idx = registry.read()
    assert idx.find("v2").state == "retired" and idx.find("v3").state == "interleaving"
    assert idx.decisions[-2].reason == "regresses offline; not shown to shoppers"


def test_offline_comparison_measures_both_models_on_the_same_queries(tiny_model, tiny_lgbm_model):
    from fusionrank.models import offline_comparison

    off = offline_comparison(tiny_lgbm_model[0], tiny_model[0], baseline_id="v1", log=lambda m: None)
    assert off["split"] == "dev" and off["queries"] == 8 and off["baseline"] == "v1"
    # each model's own training run measured the same queries the same way (exact search)
    assert off["metrics"]["ndcg@10"] == pytest.approx(tiny_lgbm_model[1]["dev/title"]["ndcg@10"], abs=1e-9)
    assert off["baseline_metrics"]["ndcg@10"] == pytest.approx(tiny_model[1]["dev/title"]["ndcg@10"], abs=1e-9)
    assert off["paired"]["ndcg@10"]["delta"] == pytest.approx(off["metrics"]["ndcg@10"] - off["baseline_metrics"]["ndcg@10"])


def test_interleave_report_cli_names_versions_by_registry_id(registry, store, tmp_path):
    import json

    from typer.testing import CliRunner

    from fusionrank.cli import app

    idx = registry.read()
    log_interleaved(store, idx.find("v1").model_version, idx.find("v3").model_version, wins=50, losses=10, ties=5)
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    args = ["interleave", "report", "--store", str(tmp_path / "events.sqlite"), "--key-file", str(key),
            "--registry", str(registry.root)]
    (rep,) = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    assert (rep["control_id"], rep["candidate_id"], rep["wins"], rep["losses"], rep["ties"], rep["used"]) == \
        ("v1", "v3", 50, 10, 5, 65)
    assert rep["preference"] == pytest.approx(40 / 65) and rep["ci"][0] > 0 and rep["sessions"] == 65
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and "+0.615" in r.stderr


def test_a_sequential_policy_waits_where_a_one_look_interval_would_already_promote(registry, store):
    """With ``interval = "sequential"`` the gate reads a confidence sequence: a margin the bootstrap interval calls
    above zero is not enough yet; more of the same evidence is."""
    idx = registry.read()
    v1, v3 = idx.find("v1"), idx.find("v3")
    log_interleaved(store, v1.model_version, v3.model_version, wins=140, losses=100)  # +0.17, bootstrap lo ~ +0.04
    registry.set_policy(idx.policy.model_copy(update={"interval": "bootstrap"}))
    assert gate(v3, v1, _report(store), registry.read().policy).verdict == "promote"
    registry.set_policy(idx.policy.model_copy(update={"interval": "sequential", "sequential_searches": 1000}))
    res = decide(registry, "v3", store)
    assert res.verdict == "wait" and "confidence sequence" in res.reasons[1] and "includes zero" in res.reasons[1]
    log_interleaved(store, v1.model_version, v3.model_version, wins=560, losses=400, start=5000.0)  # the same rate, 5x
    res = decide(registry, "v3", store, actor="test")
    assert res.verdict == "promote", res.reasons
    ev = registry.read().decisions[-1].evidence["interleaving"]
    assert ev["interval"] == "sequential" and ev["used"] == 1200 and ev["p_value"] is None


def _report(store):
    from fusionrank.feedback.interleave import interleaving_report

    (rep,) = interleaving_report(store)
    return rep
