"""The query encoder (every caller encodes queries with it): ONNX export gives MiniLM's own vectors; the cache returns them again."""
from __future__ import annotations

import numpy as np

from fusionrank.encoders import MiniLMEncoder
from fusionrank.ranking.query import QueryEncoder


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


def test_a_batch_is_encoded_one_text_at_a_time(tmp_path):
    """A query's vector depends on its text alone: the same in a batch as on its own, on either backend."""
    from fusionrank.ranking import Queries

    qe = QueryEncoder(cache_dir=tmp_path)
    texts = ["red shirt", "black leather handbag for women with long strap", "RED Shirt", "watch"]
    batch = qe.transform(Queries.of(texts)).q
    assert batch.shape == (4, 384) and batch.dtype == np.float32
    fresh = QueryEncoder(cache_dir=tmp_path)
    for t, v in reversed(list(zip(texts, batch))):  # alone, in another order, on an encoder with an empty cache
        np.testing.assert_array_equal(v, fresh.encode(t)[0])
    assert fresh.misses == 3
    np.testing.assert_array_equal(batch[0], batch[2])  # up to case, the same query
    assert qe.encode_many([]).shape == (0, 384)
    torch_qe = QueryEncoder(backend="torch")
    assert torch_qe.backend == "torch"
    np.testing.assert_allclose(torch_qe.encode_many(texts), batch, atol=1e-5)
