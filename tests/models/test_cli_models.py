"""`fusionrank models ...` on model directories laid out as training writes them (no ranker is loaded)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fusionrank.cli import app, parse_time
from fusionrank.errors import FusionrankError


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    return " ".join(text.split())


def test_policy_from_options_and_a_file(tmp_path):
    reg = tmp_path / "reg"
    assert run("models", "init", reg, "--tolerance", "0.01").exit_code == 0
    pol = json.loads(run("models", "policy", reg, "--mode", "auto").stdout)
    assert (pol["mode"], pol["tolerance"], pol["min_searches"]) == ("auto", 0.01, 200)  # the rest kept
    (tmp_path / "p.toml").write_text("[policy]\nmin_searches = 77\nconfidence = 0.9\n")
    pol = json.loads(run("models", "policy", reg, "--policy", tmp_path / "p.toml", "--interleave-share", "0.3").stdout)
    assert (pol["mode"], pol["min_searches"], pol["confidence"], pol["interleave_share"]) == ("auto", 77, 0.9, 0.3)
    r = run("models", "policy", reg, "--mode", "sometimes")
    assert r.exit_code == 2 and "Input should be 'auto' or 'manual'" in flat(r.stderr)
    assert json.loads(run("models", "policy", reg).stdout)["mode"] == "auto"  # unchanged by the refused change


def test_states_through_the_cli(tmp_path, fake_model):
    reg = tmp_path / "reg"
    run("models", "init", reg)
    assert run("models", "add", reg, fake_model(tmp_path / "a", b"a")).exit_code == 0
    assert run("models", "add", reg, fake_model(tmp_path / "b", b"b"), "--note", "second").exit_code == 0
    r = run("models", "interleave", reg, "v2", "--reason", "try it")
    assert r.exit_code == 0 and "v2: candidate -> interleaving" in flat(r.stderr)
    r = run("models", "retire", reg, "v1")
    assert r.exit_code == 2 and "v1 is promoted; promote another version to replace it" in flat(r.stderr)
    r = run("models", "promote", reg, "v2")  # no offline comparison, no store: refused, recorded
    assert r.exit_code == 1 and "no ndcg@10 comparison" in flat(r.stderr) and "not promoted" in flat(r.stderr)
    r = run("models", "promote", reg, "v2", "--force", "--reason", "hotfix")
    assert r.exit_code == 0 and "promoted v2 (forced)" in flat(r.stderr)
    shown = json.loads(run("models", "show", reg, "v2").stdout)
    assert shown["state"] == "promoted" and shown["note"] == "second"
    assert [(d["action"], d["actor"], d["reason"]) for d in shown["decisions"]] == [
        ("register", "cli", "new candidate"), ("interleave", "cli", "try it"), ("refuse", "cli", "not enough evidence yet"),
        ("promote", "cli", "hotfix")]
    assert shown["decisions"][-1]["evidence"]["verdict"] == "wait"
    assert json.loads(run("models", "show", reg, "v1").stdout)["state"] == "retired"


def test_times():
    assert parse_time("90s", now=1000.0) == 910.0 and parse_time("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_time("1767225600") == 1767225600.0
    assert parse_time("2026-01-01T00:00:00+00:00") == 1767225600.0
    with pytest.raises(FusionrankError, match="use unix seconds, an ISO date"):
        parse_time("yesterday")
