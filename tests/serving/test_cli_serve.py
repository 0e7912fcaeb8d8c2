"""`fusionrank serve MODEL_DIR`: builds the index on first start, prints the address, answers on loopback."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model, port, env, *args):
    return subprocess.Popen([sys.executable, "-m", "fusionrank.cli", "serve", str(model), "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_url(proc, timeout=120) -> str:
    t0 = time.time()
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if line.startswith("http://"):
            return line.strip()
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
    raise AssertionError("no address printed")


def test_serve_command(tiny_model, tmp_path, fusionrank_home):
    model = tmp_path / "model"
    shutil.copytree(tiny_model[0], model, ignore=shutil.ignore_patterns("index"))
    port = _free_port()
    env = {**os.environ, "FUSIONRANK_ADMIN_KEY": "cli-admin", "FUSIONRANK_HOME": str(fusionrank_home), "OMP_NUM_THREADS": "1"}
    # serve opens what `fusionrank train` / `fusionrank index` prepared; it never builds behind the user's back
    proc = _start(model, port, env)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 2 and "fusionrank index" in err and not (model / "index").exists()
    built = subprocess.run([sys.executable, "-m", "fusionrank.cli", "index", str(model)], env=env, capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    assert (model / "index" / "index.json").exists()
    proc = _start(model, port, env)
    try:
        url = _wait_url(proc)
        assert url == f"http://127.0.0.1:{port}/"
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("/healthz").status_code == 200  # at once: the address is printed once the socket listens
            assert c.get("/search", params={"q": "red shirt"}).status_code == 200
            assert c.get("/stats").json()["searches_at_once"] == 2  # a process alone ranks two at once
            r = c.delete(f"/products/{c.get('/search', params={'q': 'blue'}).json()['results'][0]['product_id']}",
                         headers={"X-API-Key": "cli-admin"})
            assert r.status_code == 204
            n = c.get("/healthz").json()["products"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    # second start: loads the saved index and replays the logged delete
    proc = _start(model, port, env, "--search-concurrency", "3")
    try:
        url = _wait_url(proc)
        h = httpx.get(url + "healthz", timeout=10)
        assert h.json()["products"] == n
        assert httpx.get(url + "stats", timeout=10).json()["searches_at_once"] == 3
    finally:
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=30)[1]
    err = " ".join(err.split())  # rich wraps long lines
    assert "loaded from" in err and "1 logged change(s) replayed" in err


def test_compact_index_command(service_factory, tmp_path):
    from typer.testing import CliRunner

    from fusionrank.cli import app
    from fusionrank.serving import SearchIndex

    svc = service_factory("compact")
    d = svc.index.directory
    for pid in list(svc.index.records["product_id"][:5]):
        svc.index.delete(pid)  # logged to the change log, replayed by the command's load
    r = CliRunner().invoke(app, ["compact-index", str(d)])
    assert r.exit_code == 0, r.output
    assert "120 rows -> 115" in " ".join(r.output.split())
    idx = SearchIndex.load(d, log=lambda m: None)
    assert idx.n_rows == len(idx) == 115
    r = CliRunner().invoke(app, ["compact-index", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "not a search index" in " ".join(r.output.split())


def test_serve_reports_a_busy_port(tiny_model):
    from typer.testing import CliRunner

    from fusionrank.cli import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = CliRunner().invoke(app, ["serve", str(tiny_model[0]), "--port", str(port)])
    assert r.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in " ".join(r.output.split())


def test_serve_engine_options_are_checked(tiny_model):
    from typer.testing import CliRunner

    from fusionrank.cli import app

    def out(*args):
        r = CliRunner().invoke(app, ["serve", str(tiny_model[0]), *args])
        assert r.exit_code == 2
        return " ".join(r.output.split())

    assert "unknown serve engine 'rays'; valid: local, ray" in out("--engine", "rays")
    assert "--replicas and --ray-address go with --engine ray" in out("--replicas", "2")
    assert "--engine ray takes --replicas (not --workers)" in out("--engine", "ray", "--workers", "2")
