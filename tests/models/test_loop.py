"""`fusionrank loop` on the tiny model: every step through the real service over HTTP, decisions in the registry."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from fusionrank.cli import app


def test_two_rounds_of_the_loop(tiny_model, tmp_path):
    from fusionrank.feedback.interleave import interleaving_report
    from fusionrank.feedback.store import open_existing
    from fusionrank.models import ModelRegistry

    reg_dir = tmp_path / "reg"
    r = CliRunner().invoke(app, ["loop", "--model", str(tiny_model[0]), "--registry", str(reg_dir), "--rounds", "2",
                                 "--sessions", "300", "--interleave-batch", "200", "--max-interleave-sessions", "600",
                                 "--interleave-share", "0.5", "--min-searches", "40", "--tolerance", "0.5", "--epochs", "2",
                                 "--json"])
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    rounds = json.loads(r.stdout)
    progress = " ".join(r.stderr.split())
    for step in ("simulate", "retrain", "interleave", "promote"):
        assert f"[round 1/2] {step}" in progress and f"[round 2/2] {step}" in progress

    idx = ModelRegistry.open(reg_dir).read()
    assert [v.id for v in idx.versions] == ["v1", "v2", "v3"]
    assert [x["candidate"] for x in rounds] == ["v2", "v3"]
    for x in rounds:  # on this small a log the candidates may lose to the (strong) judged model: either outcome is fine
        assert x["outcome"] in ("promoted", "refused online", "undecided") and x["sessions_logged"] == 300
        assert 0 < x["sessions_interleaving"] <= 600 and x["promoted_ndcg"] > 0
    # round 2 trained on top of what round 1 left promoted, and each decision is in the history with its evidence
    assert idx.find("v3").parent == rounds[0]["promoted"]
    for vid, x in (("v2", rounds[0]), ("v3", rounds[1])):
        last = [d for d in idx.decisions if d.version == vid][-1]
        assert last.actor == "loop" and last.to_state == ("promoted" if x["outcome"] == "promoted" else "retired")
        assert "interleaving" in last.evidence and "offline" in last.evidence
    assert idx.promoted().id == rounds[-1]["promoted"]
    # the interleaved searches are in the store: one comparison per candidate
    with open_existing(reg_dir / "service-data" / "events.sqlite") as st:
        reps = interleaving_report(st)
        assert {x.candidate for x in reps} == {idx.find("v2").model_version, idx.find("v3").model_version}
        assert all(x.used >= 1 for x in reps)
