"""A small synthetic multi-modality ranking problem for the ranker tests.

Three modalities (text, image, audio). Each item has a latent relevance ``u``; every
*present* modality carries one informative feature (``u`` plus noise) and one noise
feature; an absent modality has zeros and mask 0. Text is always present, image and
audio are missing at random. Grades 0..2 come from ``u``. Slates have 6..10 items,
padded to 10 (rows -1, y -1). The image modality also has a small embedding table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from fusionrank.ranking import Slates
from fusionrank.rankers import FeatureGroup

N_ITEMS = 10
EMB_DIM = 8
GROUPS = [
    FeatureGroup("text", [0, 1, 6], 0),
    FeatureGroup("image", [2, 3], 1, table="img"),
    FeatureGroup("audio", [4, 5], 2),
]
N_FEATURES = 7


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models: with two intra-op threads on a busy 2-core machine torch runs ~30x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Problem:
    train: Slates
    valid: Slates
    groups: list[FeatureGroup]
    tables: dict[str, np.ndarray]


def make_slates(n_queries: int, rng: np.random.Generator, row0: int = 0) -> Slates:
    B, N = n_queries, N_ITEMS
    lengths = rng.integers(6, N + 1, B)
    real = np.arange(N)[None, :] < lengths[:, None]
    rows = np.where(real, row0 + np.arange(B * N).reshape(B, N), -1)
    u = rng.normal(size=(B, N))
    mask = np.stack([np.ones((B, N), bool), rng.random((B, N)) < 0.6, rng.random((B, N)) < 0.5], -1) & real[..., None]
    x = np.zeros((B, N, N_FEATURES), np.float32)
    for k, g in enumerate(GROUPS):
        signal = u + 0.6 * rng.normal(size=(B, N))
        x[..., g.columns[0]] = np.where(mask[..., k], signal, 0.0)
        for c in g.columns[1:]:
            x[..., c] = np.where(mask[..., k], rng.normal(size=(B, N)), 0.0)
    grades = np.where(u > 1.0, 2.0, np.where(u > 0.3, 1.0, 0.0))
    y = np.where(real, grades, -1.0).astype(np.float32)
    q = rng.normal(size=(B, EMB_DIM)).astype(np.float32)
    ids = [f"q{row0 + i}" for i in range(B)]
    return Slates(ids, ids, rows.astype(np.int64), x, mask, q, y)


@pytest.fixture(scope="session")
def problem() -> Problem:
    rng = np.random.default_rng(0)
    train = make_slates(80, rng, row0=0)
    valid = make_slates(30, rng, row0=80 * N_ITEMS)
    n_rows = (80 + 30) * N_ITEMS
    tables = {"img": rng.normal(size=(n_rows, EMB_DIM)).astype(np.float32)}
    return Problem(train, valid, GROUPS, tables)


@pytest.fixture(scope="session")
def random_ndcg(problem) -> float:
    """Mean validation NDCG@10 of random scores (the baseline a trained ranker must beat)."""
    from fusionrank.metrics import ndcg_at_k_padded

    v = problem.valid
    real = v.rows >= 0
    rng = np.random.default_rng(1)
    vals = [ndcg_at_k_padded(rng.random(v.rows.shape), np.where(real, v.y, 0), 10, mask=real).mean() for _ in range(50)]
    return float(np.mean(vals))


def valid_ndcg(scores: np.ndarray, slates: Slates) -> float:
    from fusionrank.metrics import ndcg_at_k_padded

    real = slates.rows >= 0
    return float(ndcg_at_k_padded(np.where(real, scores, 0.0), np.where(real, slates.y, 0), 10, mask=real).mean())


@pytest.fixture
def ndcg_of():
    """ndcg_of(scores, slates) -> mean NDCG@10 over the slates."""
    return valid_ndcg
