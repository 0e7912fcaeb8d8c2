"""Batch engines that run an encoder over many items.

``LocalEngine`` (default) runs in-process. ``RayEngine`` runs the same encoder as a
Ray Data ``map_batches`` transform on a Ray cluster: a local one by default, an
existing one by ``address``. Both take an encoder *directory* (written by
``Encoder.save``) so the exact same encoder state runs everywhere, and both
isolate failing items with :func:`~fusionrank.encoders.encode_safely`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .encoders import Encoder, EncodeOutcome, encode_safely
from .errors import MissingExtraError
from .registry import Registry

ENGINES: Registry[type["Engine"]] = Registry("engine")


def ray_runtime(address: str | None = None, num_cpus: int | None = None, env_vars: dict[str, str] | None = None,
                log_to_driver: bool = False) -> tuple[Any, bool]:
    """``(ray, owns)``: the Ray runtime this process already joined, the cluster at ``address``, or a local one
    (``num_cpus``, default every core) started here (``owns``: the caller may shut it down). ``env_vars``: set in
    every Ray worker process this job starts; ``log_to_driver``: their output printed here."""
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the install
        raise MissingExtraError("ray", "ray") from e
    if ray.is_initialized():
        return ray, False
    kw: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": log_to_driver, "include_dashboard": False}
    if env_vars:
        kw["runtime_env"] = {"env_vars": dict(env_vars)}
    if address:
        kw["address"] = address
    elif num_cpus:
        kw["num_cpus"] = num_cpus
    ray.init(**kw)
    return ray, True


class Engine:
    name = ""

    @staticmethod
    def encoder_dir(encoder: Encoder, tmp: tempfile.TemporaryDirectory) -> Path:
        """Save ``encoder`` once under ``tmp`` so worker processes / Ray actors load the same state."""
        d = Path(tmp.name) / f"{encoder.name}-{encoder.signature()}"
        if not d.exists():
            encoder.save(d)
        return d

    def map(self, encoder: Encoder, items: Sequence[Any], batch_size: int, desc: str = "",
            progress: bool = True) -> Iterator[tuple[int, EncodeOutcome]]:
        """Yield ``(start, outcome)`` for consecutive batches of ``items``."""
        raise NotImplementedError

    def close(self) -> None:
        pass


_WORKER_ENCODER: Encoder | None = None


def _worker_init(encoder_dir: str, threads: int) -> None:
    global _WORKER_ENCODER
    import torch

    torch.set_num_threads(threads)
    _WORKER_ENCODER = Encoder.load(encoder_dir)
    if hasattr(_WORKER_ENCODER, "threads"):
        _WORKER_ENCODER.threads = threads


def _worker_encode(args: tuple[int, Sequence[Any]]) -> tuple[int, EncodeOutcome]:
    start, batch = args
    return start, encode_safely(_WORKER_ENCODER, batch)


@ENGINES.register("local")
class LocalEngine(Engine):
    """In-process engine. With ``processes > 1``, batches go to a pool of worker processes,
    each holding its own copy of the encoder (loaded from the encoder's saved directory):
    useful for encoders that use about one core each, such as Whisper's greedy decoding."""

    name = "local"
    processes, threads_per_process = 1, 1
    _tmp: tempfile.TemporaryDirectory | None = None

    def __init__(self, processes: int = 1, threads_per_process: int = 1):
        self.processes, self.threads_per_process = max(1, processes), threads_per_process
        self._tmp: tempfile.TemporaryDirectory | None = None

    def map(self, encoder, items, batch_size, desc="", progress=True):
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc=desc or encoder.name, unit="item", mininterval=1.0, leave=False)
        try:
            # a pool only pays for its start-up (each worker loads the model) on long inputs
            if self.processes == 1 or len(items) < 4 * batch_size * self.processes or encoder.trainable:
                for start in range(0, len(items), batch_size):
                    batch = items[start:start + batch_size]
                    out = encode_safely(encoder, batch)
                    if bar is not None:
                        bar.update(len(batch))
                    yield start, out
                return
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="fusionrank-local-")
            enc_dir = self.encoder_dir(encoder, self._tmp)
            jobs = ((start, items[start:start + batch_size]) for start in range(0, len(items), batch_size))
            with ProcessPoolExecutor(self.processes, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                     initargs=(str(enc_dir), self.threads_per_process)) as ex:
                for start, out in ex.map(_worker_encode, jobs):
                    if bar is not None:
                        bar.update(len(out.ok))
                    yield start, out
        finally:
            if bar is not None:
                bar.close()

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class _RayEncodeFn:
    """Ray Data callable class: loads the encoder once per actor, encodes pandas batches."""

    def __init__(self, encoder_dir: str):
        from .encoders import Encoder as _E

        self.encoder = _E.load(encoder_dir)

    def __call__(self, batch):
        import pandas as pd

        items = list(batch["item"])
        out = encode_safely(self.encoder, items)
        n = len(items)
        # Failed rows get a placeholder of the right type ("ok" marks them): a None among
        # vectors makes Ray's tensor column fail to build and the whole job with it.
        text = self.encoder.output == "text"
        values: list[Any] = ["" if text else np.zeros(self.encoder.dim, np.float32) for _ in range(n)]
        good = np.flatnonzero(out.ok)
        for j, i in enumerate(good):
            values[i] = out.values[j] if self.encoder.output == "text" else np.asarray(out.values[j], np.float32)
        return pd.DataFrame({"idx": batch["idx"], "ok": out.ok, "error": [out.errors.get(i) for i in range(n)], "value": values})


@ENGINES.register("ray")
class RayEngine(Engine):
    """Ray Data engine. ``address=None`` starts a local Ray runtime with ``num_cpus``."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, concurrency: int = 1):
        self.ray, self._owns = ray_runtime(address, num_cpus)
        self.concurrency = concurrency
        ray = self.ray
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        self._tmp = tempfile.TemporaryDirectory(prefix="fusionrank-ray-")

    def map(self, encoder, items, batch_size, desc="", progress=True):
        import pandas as pd

        if not len(items):
            return
        enc_dir = self.encoder_dir(encoder, self._tmp)
        df = pd.DataFrame({"idx": np.arange(len(items)), "item": list(items)})
        ds = self.ray.data.from_pandas(df).repartition(max(1, int(np.ceil(len(items) / batch_size))))
        res = ds.map_batches(_RayEncodeFn, fn_constructor_kwargs={"encoder_dir": str(enc_dir)}, batch_size=batch_size,
                             batch_format="pandas", concurrency=self.concurrency, num_cpus=1)
        out = res.to_pandas().sort_values("idx")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc=f"{desc or encoder.name} (ray)", unit="item", leave=False)
        for start in range(0, len(out), batch_size):
            chunk = out.iloc[start:start + batch_size]
            ok = chunk["ok"].to_numpy(bool)
            vals = [v for v, o in zip(chunk["value"], ok) if o]
            if encoder.output != "text":
                vals = np.stack(vals).astype(np.float32) if vals else np.zeros((0, encoder.dim), np.float32)
            errs = {i: e for i, (e, o) in enumerate(zip(chunk["error"], ok)) if not o}
            if bar is not None:
                bar.update(len(chunk))
            yield start, EncodeOutcome(vals, ok, errs)
        if bar is not None:
            bar.close()

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
        self._tmp.cleanup()


def get_engine(name: str = "local", **kwargs: Any) -> Engine:
    return ENGINES.get(name)(**kwargs)
