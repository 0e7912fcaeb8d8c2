"""The model registry: a round trip through its index, state rules, and an index that survives kill -9 at any point."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from fusionrank.models import ModelRegistry, PromotionPolicy, RegistryError, STATES


def test_round_trip(tmp_path, fake_model):
    policy = PromotionPolicy(mode="auto", tolerance=0.01, interleave_share=0.3, min_searches=50)
    reg = ModelRegistry.create(tmp_path / "reg", policy)
    v1 = reg.register(fake_model(tmp_path / "base", b"1"), training_data={"judgments": {"queries": 20}}, note="weak start")
    vid, d = reg.allocate()
    assert (vid, d) == ("v2", tmp_path / "reg" / "versions" / "v2")
    offline = {"split": "dev", "queries": 8, "metrics": {"ndcg@10": 0.61}, "baseline": "v1",
               "baseline_model_version": v1.model_version, "baseline_metrics": {"ndcg@10": 0.60}}
    data = {"events": {"store": "events.sqlite", "since": 100.0, "until": 200.0, "searches": 4000}}
    v2 = reg.register(fake_model(d, b"2"), vid=vid, parent="v1", training_data=data, offline=offline, actor="test")
    reg.set_state("v2", "interleaving", actor="test", reason="looks fine")
    reg.set_state("v2", "promoted", actor="test", reason="won", evidence={"preference": 0.2})

    again = ModelRegistry.open(tmp_path / "reg").read()  # everything back from the file
    assert again.policy == policy
    a1, a2 = again.find("v1"), again.find("v2")
    assert (a1.state, a1.parent, a1.note, a1.training_data) == ("retired", None, "weak start", {"judgments": {"queries": 20}})
    assert (a2.state, a2.parent, a2.training_data, a2.offline) == ("promoted", "v1", data, offline)
    assert a2.path == "versions/v2" and ModelRegistry(tmp_path / "reg").model_path(a2) == d  # inside: relative
    assert a1.path == str((tmp_path / "base").resolve())  # outside: absolute
    assert a2.model_version == v2.model_version and a2.model_version.startswith("v2-")
    assert a2.config["name"] == "v2"
    assert [(x.version, x.action, x.from_state, x.to_state) for x in again.decisions] == [
        ("v1", "register", None, "promoted"), ("v2", "register", None, "candidate"),
        ("v2", "interleave", "candidate", "interleaving"), ("v1", "retire", "promoted", "retired"),
        ("v2", "promote", "interleaving", "promoted")]
    assert again.decisions[-1].evidence == {"preference": 0.2} and again.decisions[-1].reason == "won"
    assert again.generation == 5  # create + 2 registrations + 2 state changes (allocate writes nothing)
    assert again.promoted().id == "v2" and [v.id for v in again.in_state("retired")] == ["v1"]


def test_rules_and_errors_name_what_is_valid(tmp_path, fake_model):
    reg = ModelRegistry.create(tmp_path / "reg")
    with pytest.raises(RegistryError, match="exists here already"):
        ModelRegistry.create(tmp_path / "reg")
    with pytest.raises(RegistryError, match="fusionrank models init"):
        ModelRegistry.open(tmp_path / "nothing")
    reg.register(fake_model(tmp_path / "a", b"a"))
    reg.register(fake_model(tmp_path / "b", b"b"))
    with pytest.raises(RegistryError, match="registered already, as version v1"):
        reg.register(tmp_path / "a")
    with pytest.raises(RegistryError, match=r"no model version 'v9'.*versions: v1, v2"):
        reg.set_state("v9", "promoted")
    with pytest.raises(RegistryError, match="valid states: " + ", ".join(STATES)):
        reg.set_state("v2", "shipped")
    with pytest.raises(RegistryError, match="v1 is promoted; promote another version to replace it"):
        reg.set_state("v1", "retired")
    reg.set_state("v2", "retired")
    with pytest.raises(RegistryError, match="v2 is retired; it can move to candidate, interleaving, promoted, not retired"):
        reg.set_state("v2", "retired")
    assert [v.state for v in reg.read().versions] == ["promoted", "retired"]
    with pytest.raises(Exception, match="valid names: .*ndcg"):
        PromotionPolicy(metric="ndgc@10")


def test_a_damaged_index_is_an_error_naming_it(tmp_path):
    reg = ModelRegistry.create(tmp_path / "reg")
    (tmp_path / "reg" / "registry.json").write_text('{"format": 1, "versions": [')
    with pytest.raises(RegistryError, match="registry.json: not a readable registry index"):
        reg.read()


def test_a_write_cut_at_any_byte_leaves_the_old_index(tmp_path, fake_model):
    """Until the rename, a write exists only as a temporary file: cut at every byte, the index reads as before."""
    import json

    reg = ModelRegistry.create(tmp_path / "reg")
    reg.register(fake_model(tmp_path / "a", b"a"))
    old = reg.read()
    new = old.model_copy(deep=True)
    new.generation += 1
    new.policy.tolerance = 0.02
    data = json.dumps(new.model_dump(mode="json"), indent=1).encode()
    tmp = tmp_path / "reg" / ".registry.json.tmp-1-1"
    for n in range(len(data) + 1):
        tmp.write_bytes(data[:n])
        assert reg.read() == old
    reg.set_policy(new.policy)  # the next write replaces the index and removes the cut-off one
    assert not tmp.exists() and reg.read().policy.tolerance == 0.02


WRITER = """
import sys
from fusionrank.models import ModelRegistry
reg = ModelRegistry(sys.argv[1])
i = 0
while True:
    i += 1
    to = "candidate" if reg.read().find("v2").state == "interleaving" else "interleaving"
    reg.set_state("v2", to, actor="writer", reason="x" * (i % 5000),
                  evidence={"i": i, "pad": "y" * (i * 37 % 20000)})
    if i == 1:
        print("ready", flush=True)  # imports done and one write made: from here on the kill lands mid-loop
"""


def test_kill_9_while_writing_leaves_a_readable_index(tmp_path, fake_model):
    """A writer changing the index as fast as it can is killed 8 times at random moments: the index always reads whole."""
    import random

    reg = ModelRegistry.create(tmp_path / "reg")
    reg.register(fake_model(tmp_path / "a", b"a"))
    reg.register(fake_model(tmp_path / "b", b"b"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = random.Random(0)
    last = reg.read().generation
    for _ in range(8):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "reg")], stdout=subprocess.PIPE, env=env)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.4))
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        idx = reg.read()  # never torn
        assert idx.generation > last and idx.find("v2").state in ("candidate", "interleaving")
        assert len(idx.decisions) == idx.generation - 1  # one decision per write, none lost or half-written
        last = idx.generation
    def leftovers():
        return [p.name for p in (tmp_path / "reg").iterdir() if p.name.startswith(".registry.json.tmp")]

    assert len(leftovers()) <= 1  # at most the last kill's temporary file: each writer removes the ones before
    reg.set_state("v2", "retired")
    assert leftovers() == [] and reg.read().find("v2").state == "retired"
