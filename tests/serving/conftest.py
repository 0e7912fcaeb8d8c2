"""Serving fixtures: a search service over the tiny model (tests/conftest.py trains it)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model):
    from fusionrank.experiment import open_pipeline

    p, cat = open_pipeline(tiny_model[0], log=lambda m: None, progress=False)
    return p, cat


def serving_index(pidx, codec: str = "flat"):
    """The SearchIndex of a training-time ProductIndex (same title field and candidate settings)."""
    from fusionrank.serving import SearchIndex, ServingConfig

    cfg = ServingConfig(title_field=pidx.config.title_field, candidates=pidx.config.candidates)
    cfg.ann.update({"codec": codec})
    return SearchIndex.from_product_index(pidx, cfg, log=lambda m: None)


def make_service(model_dir, pipe, directory, ann: dict | None = None):
    """A SearchService over the tiny model with its own saved index copy and data folder."""
    import json

    from fusionrank.experiment import ExperimentConfig
    from fusionrank.serving import SearchService, load_handle
    from fusionrank.serving.products import ProductEncoder

    idx = serving_index(pipe.index, (ann or {}).get("codec", "flat"))
    idx.save(directory / "index")
    config = ExperimentConfig.model_validate(json.loads((model_dir / "config.json").read_text()))
    ws = json.loads((model_dir / "workspace.json").read_text())
    enc = ProductEncoder(idx.config.title_field, config.encode_settings(), ws["store"])
    return SearchService(idx, load_handle(model_dir), data_dir=directory / "data", product_encoder=enc)


@pytest.fixture
def service_factory(tiny_model, tiny_pipe, tmp_path):
    """Make a fresh SearchService (its own index copy, own data dir) over the tiny model."""
    def make(name: str = "svc", ann: dict | None = None):
        return make_service(tiny_model[0], tiny_pipe[0], tmp_path / name, ann)

    return make


class LiveServer:
    """A real uvicorn server on a free loopback port, in a background thread."""

    def __init__(self, app):
        import socket
        import threading

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        import time

        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > 20:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server():
    return LiveServer
