"""Fixtures of the model registry tests: model directories laid out as `fusionrank train` writes them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


def write_fake_model(d: Path, weights: bytes) -> Path:
    """A model directory (config + ranker files) for registry bookkeeping; no ranker is loaded from it."""
    from fusionrank.experiment import ExperimentConfig

    (d / "ranker").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(ExperimentConfig(name=d.name).model_dump(mode="json")))
    (d / "ranker" / "ranker.json").write_text('{"kind": "neural"}')
    (d / "ranker" / "weights.bin").write_bytes(weights)
    return d


@pytest.fixture
def fake_model():
    """fake_model(dir, weights: bytes) -> dir, a model directory whose version hash follows ``weights``."""
    return write_fake_model
