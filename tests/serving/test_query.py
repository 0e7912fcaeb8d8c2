"""The serving query encoder: ONNX export gives MiniLM's own vectors; the cache returns them again."""
from __future__ import annotations

import numpy as np

from fusionrank.encoders import MiniLMEncoder
from fusionrank.serving.query import QueryEncoder


def test_onnx_matches_torch_and_caches(tmp_path):
    qe = QueryEncoder(cache_dir=tmp_path, cache_size=2)
    assert qe.backend == "onnx"
    assert list(tmp_path.glob("minilm-query-*.onnx"))
    queries = ["red shirt", "black leather handbag for women with long strap", "watch", "t-shirt 100% cotton (men's)"]
    ref = MiniLMEncoder().encode(queries)
    for q, r in zip(queries, ref):
        v, cached = qe.encode(q)
        assert not cached
        np.testing.assert_allclose(v, r, atol=1e-5)
    v, cached = qe.encode("  T-SHIRT 100% cotton (men's) ")  # same text up to case and outer spaces
    assert cached and np.allclose(v, ref[3], atol=1e-5)
    assert qe.encode("red shirt")[1] is False  # evicted: the cache holds 2
    assert (qe.hits, qe.misses) == (1, 5)
