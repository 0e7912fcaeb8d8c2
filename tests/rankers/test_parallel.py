"""Training engines: query sharding, the engines' errors, and Ray Train data-parallel fits on the synthetic problem.

The Ray tests share one local Ray runtime (module-scoped fixture, 2 CPUs, shut down at the end),
as ``tests/test_engine.py`` does.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from fusionrank.errors import FusionrankError, UnknownNameError
from fusionrank.rankers import GBDTRanker, NeuralRanker, load_ranker
from fusionrank.rankers.parallel import POLL_ENV, RUN_NAME, TRAINING_ENGINES, TrainingEngine, query_shards
from fusionrank.rankers.trainer import batches, trainable_slates

FAST = {"epochs": 8, "batch_size": 8, "lr": 1e-2, "hidden": 16, "patience": 8}


# --- sharding and batches ------------------------------------------------------------------


def test_query_shards_keep_every_query_on_one_worker():
    ids = ["a", "b", "a", "c", "b", "d", "e", "c", "a"]  # a query has one slate per catalogue variant
    shards = query_shards(ids, 2)
    assert sorted(np.concatenate(shards).tolist()) == list(range(len(ids)))           # disjoint and covering
    owner = {}
    for r, s in enumerate(shards):
        for i in s:
            assert owner.setdefault(ids[i], r) == r                                    # no query split
    assert [sorted({ids[i] for i in s}) for s in shards] == [["a", "c", "e"], ["b", "d"]]  # round-robin by first appearance


def test_more_workers_than_queries_is_an_error():
    with pytest.raises(FusionrankError, match="3 workers but only 2 training queries with a non-zero label; use at most 2"):
        query_shards(["a", "b", "a"], 3)


def test_batches_wrap_a_short_shard_to_the_longest_ones_steps():
    got = list(batches(np.array([7, 8, 9, 10, 11]), 2, 4))
    assert [b.tolist() for b in got] == [[7, 8], [9, 10], [11], [8, 9]]
    assert [b.tolist() for b in batches(np.arange(5), 2, 3)] == [[0, 1], [2, 3], [4]]  # one process: every slate once


# --- errors ------------------------------------------------------------------------------------


def test_unknown_engine_lists_the_valid_names():
    assert TRAINING_ENGINES.names() == ["local", "ray"]
    with pytest.raises(UnknownNameError, match="unknown training engine 'spark'; valid names: local, ray"):
        TrainingEngine("spark")


def test_the_configs_training_block_names_the_engine_and_the_command_line_overrides_it():
    from fusionrank.experiment import ExperimentConfig

    cfg = ExperimentConfig.model_validate({"training": {"engine": "ray", "workers": 3, "ray_address": "ray://head:10001"}})
    assert cfg.training.training_engine() == TrainingEngine("ray", 3, "ray://head:10001")
    assert cfg.training.training_engine(workers=2) == TrainingEngine("ray", 2, "ray://head:10001")
    # --engine local: this process, whatever the config says about Ray workers
    assert cfg.training.training_engine("local") == TrainingEngine("local", 1, None)
    assert ExperimentConfig().training.training_engine() == TrainingEngine("local", 1, None)
    assert ExperimentConfig().training.training_engine("ray") == TrainingEngine("ray", 2, None)
    with pytest.raises(UnknownNameError, match="local"):  # an unknown name lists the valid ones
        ExperimentConfig.model_validate({"training": {"engine": "spark"}}).training.training_engine()
    with pytest.raises(FusionrankError, match="need --engine ray"):
        ExperimentConfig().training.training_engine(workers=2)


def test_local_engine_is_one_process():
    with pytest.raises(FusionrankError, match="--workers and --ray-address need --engine ray"):
        TrainingEngine("local", workers=2)
    with pytest.raises(FusionrankError, match="workers must be at least 1; got 0"):
        TrainingEngine("ray", workers=0)


def test_ray_engine_errors_come_before_ray_starts(problem, tmp_path):
    ray = pytest.importorskip("ray")
    engine = TrainingEngine("ray", workers=2)
    with pytest.raises(FusionrankError, match="trains neural rankers only; a .lightgbm. ranker trains with --engine local"):
        engine.fit(GBDTRanker(), problem.train, problem.groups, problem.tables, storage=tmp_path)
    n = len(trainable_slates(problem.train))
    with pytest.raises(FusionrankError, match=f"{n + 1} workers but only {n} training queries"):
        TrainingEngine("ray", workers=n + 1).fit(NeuralRanker(**FAST), problem.train, problem.groups, problem.tables,
                                                 storage=tmp_path)
    assert not ray.is_initialized()


def test_local_engine_is_fit(problem, tmp_path):
    a = TrainingEngine().fit(NeuralRanker(**{**FAST, "epochs": 2}), problem.train, problem.groups, problem.tables, log=None)
    b = NeuralRanker(**{**FAST, "epochs": 2}).fit(problem.train, problem.groups, problem.tables, log=None)
    np.testing.assert_array_equal(a.predict(problem.valid, problem.tables), b.predict(problem.valid, problem.tables))


# --- Ray Train ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.train.torch")
    if ray.is_initialized():  # pragma: no cover - someone else's runtime
        pytest.skip("a Ray runtime is already running in this process")
    mp = pytest.MonkeyPatch()
    mp.setenv(POLL_ENV, "0.2")  # tiny epochs: do not wait on the controller's poll between reports
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()
    mp.undo()


def fit_both(problem, tmp_path, workers: int, **kw):
    """The same ranker fitted in this process and on Ray Train with ``workers`` workers."""
    params = {**FAST, **kw}
    local = NeuralRanker(**params).fit(problem.train, problem.groups, problem.tables, valid=problem.valid, log=None)
    ray_fit = TrainingEngine("ray", workers).fit(NeuralRanker(**params), problem.train, problem.groups, problem.tables,
                                                valid=problem.valid, storage=tmp_path / "model", log=None)
    return local, ray_fit


@pytest.mark.ray
def test_ray_train_two_workers(ray_runtime, problem, tmp_path, random_ndcg, ndcg_of):
    local, r = fit_both(problem, tmp_path, 2)
    assert type(r) is NeuralRanker and ray_runtime.is_initialized()  # the engine did not stop a runtime it does not own

    # each worker trained on its own queries: disjoint shards covering every training query with a label
    final = tmp_path / "model" / RUN_NAME / "final"
    shards = [set(json.loads((final / f"shard-{k}.json").read_text())["queries"]) for k in range(2)]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert shards[0] | shards[1] == {problem.train.query_ids[i] for i in trainable_slates(problem.train)}

    # a checkpoint per epoch and the final ranker, in the model directory
    epochs = sorted(p.name for p in (tmp_path / "model" / RUN_NAME).glob("epoch-*"))
    assert epochs == [f"epoch-{e:03d}" for e in range(len(r.history_))] and len(r.history_) == FAST["epochs"]
    assert (final / "ranker" / "weights.pt").is_file() and r.checkpoint_ == final

    # it predicts, restored its best validation epoch, and is as good as the one-process fit
    s = r.predict(problem.valid, problem.tables)
    real = problem.valid.rows >= 0
    assert np.isfinite(s[real]).all() and np.all(s[~real] == -np.inf)
    nd, nd_local = ndcg_of(s, problem.valid), ndcg_of(local.predict(problem.valid, problem.tables), problem.valid)
    assert nd == pytest.approx(r.best_valid_ndcg_, abs=1e-6)
    assert nd > random_ndcg + 0.15, (nd, random_ndcg)
    assert abs(nd - nd_local) < 0.02, (nd, nd_local)

    # saved and loaded as any NeuralRanker
    r.save(tmp_path / "saved")
    np.testing.assert_allclose(load_ranker(tmp_path / "saved").predict(problem.valid, problem.tables)[real], s[real], rtol=1e-6)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_one_worker_is_the_one_process_fit(ray_runtime, problem, tmp_path):
    """One worker runs the very same loop on the same data with the same seeds: the same weights, exactly."""
    local, r = fit_both(problem, tmp_path, 1, epochs=4)
    assert r.history_ == [{**h, "seconds": r.history_[i]["seconds"]} for i, h in enumerate(local.history_)]
    np.testing.assert_array_equal(r.predict(problem.valid, problem.tables), local.predict(problem.valid, problem.tables))
