"""kill -9 of the real `fusionrank serve` under PUT/DELETE/events load: nothing acknowledged is lost across restarts.

The quick variant (default suite) kills it twice; ``pytest -m slow`` runs ten kills.
``benchmarks/crash_runs.py`` runs twenty and writes the counts to ``benchmarks/results/crash_runs.md``.
"""
from __future__ import annotations

import random

import pytest

from crash_harness import Ledger, Server, check, load_then_kill, prepare_model, serve_env


def _run(tiny_model, tmp_path, fusionrank_home, kills: int, seed: int, args: tuple = ()):
    env = serve_env(FUSIONRANK_HOME=str(fusionrank_home))
    model = prepare_model(tiny_model[0], tmp_path / "model", env)
    server = Server(model, env, args=args)
    ledger = Ledger()
    rng = random.Random(seed)
    server.start()
    try:
        for cycle in range(kills):
            load_then_kill(server, ledger, rng.uniform(1.0, 3.0), rng, cycle=cycle)
            server.start()  # the same port at once: SO_REUSEADDR
            res = check(server, ledger, model / "service-data")
            assert not res.writes_lost, res.writes_lost[:5]
            assert res.writes_found == res.writes_acked
            assert res.events_found == res.events_acked and res.searches_found == res.searches_acked, res
        assert ledger.writes_acked > 0 and ledger.events_acked > 0, ledger.errors[:5]
        assert not ledger.errors, ledger.errors[:5]
    finally:
        server.stop()
    err = server.stderr_path.read_text()
    assert "Traceback" not in err, err[-3000:]
    return ledger


def test_kill9_under_load_loses_nothing_acknowledged(tiny_model, tmp_path, fusionrank_home):
    _run(tiny_model, tmp_path, fusionrank_home, kills=2, seed=1)


def test_kill9_of_every_worker_under_load_loses_nothing_acknowledged(tiny_model, tmp_path, fusionrank_home):
    """``serve --workers 2``: writes go to the shared change log under its lock, events to the one store; SIGKILL to
    the supervisor and both workers at once, restart, and every acknowledged write, search and event is there."""
    _run(tiny_model, tmp_path, fusionrank_home, kills=2, seed=3, args=("--workers", "2"))


def test_kill9_of_a_sharded_service_under_load_loses_nothing_acknowledged(tiny_model, tmp_path, fusionrank_home):
    """``serve --shards 2``: a write is acknowledged once its shard logged its row and its product; SIGKILL between or
    inside those appends, restart over the same shards, and every acknowledged write, search and event is there."""
    _run(tiny_model, tmp_path, fusionrank_home, kills=2, seed=5, args=("--shards", "2", "--shard-engine", "local"))


@pytest.mark.slow
def test_kill9_of_a_sharded_service_ten_times(tiny_model, tmp_path, fusionrank_home):
    _run(tiny_model, tmp_path, fusionrank_home, kills=10, seed=7, args=("--shards", "2", "--shard-engine", "local"))


@pytest.mark.ray
def test_kill9_of_a_service_over_ray_shards_under_load_loses_nothing_acknowledged(tiny_model, tmp_path, fusionrank_home):
    """The same with each shard in a Ray actor: the actors die with the server's session and load their logs again."""
    _run(tiny_model, tmp_path, fusionrank_home, kills=2, seed=6, args=("--shards", "2"))


@pytest.mark.slow
def test_kill9_under_load_ten_times(tiny_model, tmp_path, fusionrank_home):
    _run(tiny_model, tmp_path, fusionrank_home, kills=10, seed=2)
