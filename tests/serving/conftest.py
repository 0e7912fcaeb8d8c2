"""Serving fixtures: a search service over the tiny model (tests/conftest.py trains it)."""
from __future__ import annotations

import pytest

from serving_fixtures import make_service


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model):
    """(pipeline over the frozen catalogue tables, catalogue) of the tiny model: the evaluation path."""
    from fusionrank.ingest import Catalog
    from fusionrank.modeldir import ModelDir

    md = ModelDir.open(tiny_model[0])
    return md.pipeline(md.catalog_tables(log=lambda m: None)), Catalog.load(md.catalog_location()[0])


@pytest.fixture
def service_factory(tiny_model, tmp_path):
    """Make a fresh SearchService (its own index copy, own data dir) over the tiny model."""
    def make(name: str = "svc", ann: dict | None = None):
        return make_service(tiny_model[0], tmp_path / name, ann)

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
