"""``minilm_adapter``: MiniLM plus a residual linear map trained on pairs of MiniLM vectors.

The untrained adapter is MiniLM; a fit on pairs whose queries carry noise in a subspace learns
to look past it; a saved adapter loads to the same outputs and signature; the query path
(MiniLM's ONNX graph, then the adapter) gives the vectors of the batch path.
"""
from __future__ import annotations

import numpy as np
import pytest

from fusionrank.encoders import ENCODERS, Encoder, MiniLMAdapter, MiniLMEncoder, PairSet, encoder_from_spec
from fusionrank.encoders.adapter import RetrievalCheck, l2_normalise, recall_at_k
from fusionrank.errors import FusionrankError, NotFittedError, UnknownNameError

TEXTS = ["red cotton t-shirt for men", "black leather handbag", "running shoes", "silver wrist watch"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def noisy_pairs(n: int, seed: int, dim: int = 384, noisy: int = 96, noise: float = 0.1, spread: float = 0.1):
    """Targets are unit vectors close to one centre (as a catalogue's titles are); each query is its target plus
    noise on the first ``noisy`` axes, which a map that damps those axes looks past."""
    rng = np.random.default_rng(seed)
    centre = l2_normalise(np.random.default_rng(0).normal(size=(1, dim)))
    t = l2_normalise(centre + spread * l2_normalise(rng.normal(size=(n, dim))))
    q = t.copy()
    q[:, :noisy] += noise * rng.normal(size=(n, noisy))
    return l2_normalise(q), t


def test_untrained_adapter_is_minilm():
    a = MiniLMAdapter().initialise()
    np.testing.assert_allclose(a.encode(TEXTS), MiniLMEncoder().encode(TEXTS), atol=1e-6)
    v = l2_normalise(np.random.default_rng(0).normal(size=(5, 384)))
    np.testing.assert_allclose(a.adapt(v), v, atol=1e-6)


def test_unfitted_adapter_refuses_to_encode():
    with pytest.raises(NotFittedError):
        MiniLMAdapter().adapt(np.zeros((1, 384), np.float32))
    with pytest.raises(NotFittedError):
        MiniLMAdapter().save("/nonexistent-is-never-written")


def test_fit_improves_held_out_pair_retrieval():
    q, t = noisy_pairs(3000, seed=1)
    vq, vt = noisy_pairs(500, seed=2)
    check = RetrievalCheck(vq, np.arange(len(vt)), vt)
    a = MiniLMAdapter(epochs=10, lr=3e-3, penalty=1e-4, batch_size=256)
    a.fit([PairSet("synthetic", q, t)], valid=check)
    base, tuned = a.history_[0]["valid_recall@10"], a.history_[-1]["valid_recall@10"]
    assert a.history_[0]["epoch"] == -1
    assert base == pytest.approx(recall_at_k(vq, np.arange(len(vt)), vt))  # the untrained adapter is the identity
    assert tuned > base + 0.05, (base, tuned)
    # the noisy axes are damped; the others keep their weight
    gain = np.linalg.norm(np.eye(384) + a.weight_, axis=0)
    assert gain[:96].mean() < 0.8 * gain[96:].mean()


def test_penalty_keeps_the_map_near_identity():
    q, t = noisy_pairs(1000, seed=3)
    free = MiniLMAdapter(epochs=3, lr=3e-3, penalty=0.0).fit([PairSet("s", q, t)])
    held = MiniLMAdapter(epochs=3, lr=3e-3, penalty=10.0).fit([PairSet("s", q, t)])
    assert np.linalg.norm(held.weight_) < 0.5 * np.linalg.norm(free.weight_)


def test_hard_negatives_and_groups_are_used():
    rng = np.random.default_rng(4)
    q, t = noisy_pairs(300, seed=5)
    pool = l2_normalise(rng.normal(size=(50, 384)))
    ps = PairSet("judgments", q, t, negatives=rng.integers(0, 50, size=(300, 4)), pool=pool, groups=np.repeat(np.arange(100), 3))
    a = MiniLMAdapter(epochs=1, batch_size=64).fit([ps])
    assert a.history_[-1]["loss/judgments"] > 0 and np.isfinite(a.weight_).all()
    sub = ps.subset(np.arange(10))
    assert len(sub) == 10 and sub.negatives.shape == (10, 4) and sub.pool is pool


def test_pair_set_errors_name_what_is_wrong():
    v = np.zeros((3, 384), np.float32)
    with pytest.raises(FusionrankError, match="left and right"):
        PairSet("x", v, np.zeros((2, 384)))
    with pytest.raises(FusionrankError, match="negatives and pool"):
        PairSet("x", v, v, negatives=np.zeros((3, 2), int))
    with pytest.raises(FusionrankError, match="rows of pool"):
        PairSet("x", v, v, negatives=np.full((3, 2), 7), pool=np.zeros((5, 384)))
    with pytest.raises(FusionrankError, match="unknown pair source 'clicks'"):
        MiniLMAdapter(sources=["clicks"])
    with pytest.raises(FusionrankError, match="no pairs"):
        MiniLMAdapter().fit([PairSet("x", v[:1], v[:1])])


def test_save_load_round_trip_and_signature(tmp_path):
    q, t = noisy_pairs(400, seed=6)
    a = MiniLMAdapter(epochs=1, penalty=0.1).fit([PairSet("s", q, t)])
    a.save(tmp_path / "a")
    b = Encoder.load(tmp_path / "a")
    assert isinstance(b, MiniLMAdapter) and b.config() == a.config()
    assert b.signature() == a.signature()
    np.testing.assert_array_equal(b.adapt(q[:20]), a.adapt(q[:20]))
    # the signature follows the weights
    before = b.signature()
    b.weight_ = b.weight_.copy()
    b.weight_[0, 0] += 1e-3
    assert b.signature() != before
    assert MiniLMAdapter().initialise().signature() != a.signature()
    # a spec with state loads the saved adapter, and refuses one that is not what the spec asks for
    c = encoder_from_spec({"name": "minilm_adapter", "args": a.config(), "state": str(tmp_path / "a")})
    assert c.signature() == a.signature()
    with pytest.raises(FusionrankError, match="config asks for"):
        encoder_from_spec({"name": "minilm_adapter", "args": {"epochs": 99}, "state": str(tmp_path / "a")})


def test_unknown_encoder_name_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as e:
        ENCODERS.get("minilm_adaptr")
    assert "minilm_adapter" in str(e.value) and "minilm" in str(e.value)


def test_query_path_equals_batch_path(tmp_path):
    """QueryEncoder runs MiniLM's ONNX graph, then the adapter: the vectors of ``MiniLMAdapter.encode``."""
    from fusionrank.ranking.query import QueryEncoder

    q, t = noisy_pairs(400, seed=7)
    a = MiniLMAdapter(epochs=2, lr=1e-2, penalty=0.0).fit([PairSet("s", q, t)])
    assert np.linalg.norm(a.weight_) > 0.1  # a map that moves vectors, so equality means something
    a.save(tmp_path / "adapter")
    spec = {"name": "minilm_adapter", "args": a.config(), "state": str(tmp_path / "adapter")}
    qe = QueryEncoder(cache_dir=tmp_path, text_encoder=spec)
    assert qe.backend == "onnx" and qe.dim == 384
    ref = a.encode(TEXTS)
    assert np.abs(ref - MiniLMEncoder().encode(TEXTS)).max() > 1e-2
    for text, r in zip(TEXTS, ref):
        np.testing.assert_allclose(qe.encode(text)[0], r, atol=1e-5)
    # query understanding compares words before the adapter: MiniLM's own vectors
    np.testing.assert_allclose(np.stack([qe.encode_base(t)[0] for t in TEXTS]), MiniLMEncoder().encode(TEXTS), atol=1e-5)
    assert qe.encode_base(TEXTS[0])[1] and qe.encode(TEXTS[0])[1]  # one cache serves both
    with pytest.raises(NotFittedError):  # a spec without the trained state
        QueryEncoder(cache_dir=tmp_path, text_encoder={"name": "minilm_adapter", "args": {}})
