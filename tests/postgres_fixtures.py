"""Fixtures of the event-store tests (a plugin of tests/conftest.py): a throwaway PostgreSQL server, and the store URLs to run against.

:class:`TempPostgres` runs Debian's ``postgresql`` binaries (``/usr/lib/postgresql/*/bin``):
``initdb`` into a fresh temporary folder (as the ``postgres`` OS user when the tests run as
root, since PostgreSQL refuses to run as root), trust authentication, listening on
127.0.0.1 on a free port only. Without PostgreSQL installed its tests are skipped, unless
``FUSIONRANK_REQUIRE_POSTGRES=1`` (``make test`` sets it), in which case they fail.
"""
from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def pg_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempPostgres:
    """A PostgreSQL server in a temporary folder; :meth:`create_db` gives a URL of a new empty database."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="fusionrank-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        self._n = itertools.count()
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> "TempPostgres":
        self._run(self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale")
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c max_connections=60"
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-o", opts, "-w", "-t", "60", "start")
        return self

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def create_db(self, name: str | None = None) -> str:
        import psycopg

        name = name or f"t{next(self._n)}"
        with psycopg.connect(self.admin_url, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        msg = "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl; `make postgres` installs it)"
        if os.environ.get("FUSIONRANK_REQUIRE_POSTGRES") == "1":
            pytest.fail(msg + " and FUSIONRANK_REQUIRE_POSTGRES=1")
        pytest.skip(msg)
    pytest.importorskip("psycopg")
    server = TempPostgres(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """A URL of a new, empty event store on each engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'events.sqlite'}"
    return request.getfixturevalue("postgres_server").create_db()

