"""Where a ranker trains: in this process (``local``) or data-parallel on Ray Train (``ray``).

The ``ray`` engine runs :meth:`NeuralRanker.fit_loop` (the same loop as ``fit``) in ``workers``
Ray Train workers (:class:`ray.train.torch.TorchTrainer`, DistributedDataParallel over gloo
on CPU). The training slates are sharded by query (:func:`query_shards`): every slate of a
query goes to one worker, so a listwise loss always sees a query's whole slate. Each step
averages the workers' gradients, so one step over ``workers`` local batches of
``ceil(batch_size / workers)`` slates is one step over a global batch of about ``batch_size``
slates, as in one process. The driver computes the feature standardisation over all training
slates; every worker builds the same seeded network from it. Rank 0 scores the full
validation set after each epoch and broadcasts the early-stopping decision.

Checkpoints (Ray Train ``Checkpoint``) go to ``storage / ray_train``: ``epoch-NNN/ranker``
holds that epoch's weights, ``final/`` the fitted ranker (best validation epoch restored),
``fit.json`` and one ``shard-R.json`` per worker naming the queries it trained on. The
fitted ranker is a plain :class:`NeuralRanker`, saved and loaded as with the local engine.

LightGBM lambdarank (and the feature rankers) train only with the ``local`` engine, where
each query group stays whole in one process; asking for ``ray`` with them is an error.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import FusionrankError, MissingExtraError
from ..registry import Registry
from .base import FeatureGroup
from .trainer import NeuralRanker, Replica, epoch_line, query_dim

RUN_NAME = "ray_train"
# Each ray.train.report waits until the Ray Train controller has taken the previous one, which it does once per
# health-check poll (2 s by default): with a checkpoint per epoch, short epochs would wait on the poll.
POLL_ENV, POLL_SECONDS = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"
FIT_INFO = "fit.json"

TRAINING_ENGINES: Registry[Callable[..., Any]] = Registry("training engine")


@dataclass(frozen=True)
class TrainingEngine:
    """How ``fusionrank train`` fits the ranker: ``name`` in :data:`TRAINING_ENGINES`, ``workers`` processes,
    ``address`` of an existing Ray cluster (None: a local Ray runtime for the run)."""

    name: str = "local"
    workers: int = 1
    address: str | None = None

    def __post_init__(self):
        TRAINING_ENGINES.get(self.name)  # an unknown name lists the valid ones
        if self.workers < 1:
            raise FusionrankError(f"workers must be at least 1; got {self.workers}")
        if self.name == "local" and (self.workers != 1 or self.address):
            raise FusionrankError("the local engine trains in this one process; --workers and --ray-address need --engine ray")

    def check(self, ranker) -> None:
        """Raise if this engine cannot train ``ranker``."""
        if self.name == "ray" and not isinstance(ranker, NeuralRanker):
            raise FusionrankError(f"the ray training engine trains neural rankers only; a {ranker.kind!r} ranker trains "
                                  f"with --engine local, where each query group stays whole in one process")

    def fit(self, ranker, train, groups: Sequence[FeatureGroup], tables=None, valid=None, valid_ideal_dcg=None,
            storage: str | Path | None = None, log=print):
        """Fit ``ranker`` in place (and return it); ``storage`` is the model directory checkpoints go to."""
        return TRAINING_ENGINES.get(self.name)(ranker, train, groups, tables, valid, valid_ideal_dcg, engine=self,
                                               storage=storage, log=log)


@TRAINING_ENGINES.register("local")
def fit_local(ranker, train, groups, tables=None, valid=None, valid_ideal_dcg=None, engine: TrainingEngine | None = None,
              storage=None, log=print):
    return ranker.fit(train, groups, tables, valid=valid, valid_ideal_dcg=valid_ideal_dcg, log=log)


def query_shards(query_ids: Sequence[str], workers: int) -> list[np.ndarray]:
    """Slate indices per worker: the distinct queries dealt round-robin in order of first appearance, and every
    slate of a query (one per catalogue variant, say) to that query's worker. Raises if a worker would get none."""
    ids = np.asarray(query_ids, dtype=object).astype(str)
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    if workers > len(uniq):
        raise FusionrankError(f"{workers} workers but only {len(uniq)} training queries with a non-zero label; "
                              f"use at most {len(uniq)} workers")
    appearance = np.empty(len(uniq), np.int64)
    appearance[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    worker = appearance[inverse] % workers
    return [np.flatnonzero(worker == r) for r in range(workers)]


class RayReplica(Replica):
    """One Ray Train worker of a data-parallel :meth:`NeuralRanker.fit_loop` (see the module docstring)."""

    def __init__(self, rank: int, world: int, steps: int, query_ids: Sequence[str]):
        self.rank, self.world, self._steps, self.query_ids = rank, world, steps, list(query_ids)

    def wrap(self, net):
        from ray.train.torch import prepare_model

        return prepare_model(net)  # DistributedDataParallel when world > 1; rank 0's initial weights everywhere

    def batch_size(self, batch_size: int) -> int:
        return -(-batch_size // self.world)

    def steps(self, n_slates: int, batch_size: int) -> int:
        return self._steps  # the longest shard's: every worker must take part in every gradient all-reduce

    def agree(self, loss: float, stop: bool) -> tuple[float, bool]:
        import torch
        import torch.distributed as dist

        if self.world == 1:
            return loss, stop
        mean = torch.tensor([loss / self.world], dtype=torch.float64)
        dist.all_reduce(mean)
        flag = torch.tensor([float(stop)])
        dist.broadcast(flag, src=0)  # rank 0 holds the validation set and the clock that decide
        return float(mean), bool(flag.item())

    def epoch_done(self, ranker: NeuralRanker, rec: dict) -> None:
        self._report(rec, f"epoch-{rec['epoch']:03d}", lambda d: ranker.save(d / "ranker") if self.rank == 0 else None)

    def finished(self, ranker: NeuralRanker) -> None:
        def write(d: Path) -> None:
            (d / f"shard-{self.rank}.json").write_text(json.dumps({"rank": self.rank, "queries": sorted(set(self.query_ids))}))
            if self.rank == 0:
                ranker.save(d / "ranker")
                (d / FIT_INFO).write_text(json.dumps({"workers": self.world, "steps_per_epoch": self._steps,
                                                      "best_valid_ndcg@10": ranker.best_valid_ndcg_}))

        last = ranker.history_[-1] if ranker.history_ else {}
        self._report({**last, "final": True}, "final", write)

    @staticmethod
    def _report(metrics: dict, name: str, write: Callable[[Path], None]) -> None:
        """Every worker calls ``ray.train.report`` (it is a barrier); the files each writes are merged into one checkpoint."""
        import ray.train

        with tempfile.TemporaryDirectory(prefix="fusionrank-ckpt-") as d:
            write(Path(d))
            ckpt = ray.train.Checkpoint.from_directory(d) if any(Path(d).iterdir()) else None
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)


def _worker(config: dict) -> None:
    """The Ray Train worker loop: this worker's shard, the shared tables, then the shared training loop."""
    import ray
    import ray.train
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    ranker: NeuralRanker = config["ranker"]
    shard = ray.get(config["shards"][rank])
    tables = ray.get(config["tables"]) if config["tables"] is not None else None
    valid = ray.get(config["valid"]) if rank == 0 and config["valid"] is not None else None
    keep = ranker.prepare(shard, config["groups"], tables)
    net = ranker.init_net(tables, config["query_dim"], config["stats"])
    if rank:  # dropout draws of their own; rank 0 goes on with the single process's stream
        torch.manual_seed(ranker.seed + rank)
    replica = RayReplica(rank, world, config["steps"], [shard.query_ids[i] for i in keep])
    ranker.fit_loop(net, shard, keep, tables, valid, config["valid_ideal_dcg"], log=None, replica=replica)


def _ray_runtime(address: str | None, workers: int):
    """``(ray, owns)``: the running Ray runtime, one at ``address``, or a local one started for this fit."""
    try:
        import ray.train.torch  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise MissingExtraError("ray[train]", "ray") from e
    from ..engine import ray_runtime

    return ray_runtime(address, None if address else max(workers, os.cpu_count() or 1))


@TRAINING_ENGINES.register("ray")
def fit_ray(ranker, train, groups, tables=None, valid=None, valid_ideal_dcg=None, engine: TrainingEngine | None = None,
            storage: str | Path | None = None, log=print):
    """Fit ``ranker`` (a :class:`NeuralRanker`) data-parallel on Ray Train; checkpoints under ``storage / ray_train``."""
    engine = engine or TrainingEngine("ray", 2)
    engine.check(ranker)
    if storage is None:
        raise FusionrankError("the ray training engine needs a directory for its checkpoints (the model directory)")
    keep = ranker.prepare(train, groups, tables)  # the labels are checked here, before any worker starts
    shards = [keep[s] for s in query_shards([train.query_ids[i] for i in keep], engine.workers)]
    local_batch = -(-ranker.batch_size // engine.workers)
    steps = max(-(-len(s) // local_batch) for s in shards)
    run_dir = Path(storage).resolve() / RUN_NAME
    shutil.rmtree(run_dir, ignore_errors=True)  # a new fit: Ray Train would otherwise resume the earlier run's state
    ray, owns = _ray_runtime(engine.address, engine.workers)
    try:
        from ray.train import CheckpointConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < engine.workers:
            raise FusionrankError(f"{engine.workers} workers need {engine.workers} CPUs; the Ray cluster has {cpus:g}")
        if log:
            log(f"  ray train: {engine.workers} workers, {[len(s) for s in shards]} slates, {steps} steps of "
                f"{local_batch} slates per worker per epoch")
        config = {"ranker": ranker, "groups": list(groups), "stats": ranker.standardisation(train), "query_dim": query_dim(train),
                  "shards": [ray.put(train.subset(s)) for s in shards], "tables": ray.put(tables) if tables is not None else None,
                  "valid": ray.put(valid) if valid is not None and valid.y is not None else None,
                  "valid_ideal_dcg": valid_ideal_dcg, "steps": steps, "threads": 1}
        trainer = TorchTrainer(_worker, train_loop_config=config, torch_config=TorchConfig(backend="gloo"),
                               scaling_config=ScalingConfig(num_workers=engine.workers, use_gpu=False),
                               run_config=RunConfig(name=RUN_NAME, storage_path=str(run_dir.parent),
                                                    checkpoint_config=CheckpointConfig(num_to_keep=None)))
        with _env_default(POLL_ENV, POLL_SECONDS):  # the controller reads it when it starts
            result = trainer.fit()
    finally:
        if owns:
            ray.shutdown()
    _adopt(ranker, Path(result.checkpoint.path))
    if log:
        for rec in ranker.history_:
            log(epoch_line(rec))
        log(f"  ray train checkpoints in {run_dir}")
    return ranker


@contextlib.contextmanager
def _env_default(name: str, value: str) -> Iterator[None]:
    """``name=value`` in the environment for the block, unless the user set it."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _adopt(ranker: NeuralRanker, final: Path) -> None:
    """Give ``ranker`` the fitted state saved in the ``final`` checkpoint."""
    fitted = NeuralRanker.load(final / "ranker")
    ranker.groups_, ranker.n_features_, ranker.net_, ranker.history_ = fitted.groups_, fitted.n_features_, fitted.net_, fitted.history_
    ranker.best_valid_ndcg_ = json.loads((final / FIT_INFO).read_text())["best_valid_ndcg@10"]
    ranker.checkpoint_ = final
