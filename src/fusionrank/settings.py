"""Every environment variable fusionrank reads, in one typed object.

======================================  ==============================================================
variable                                meaning
======================================  ==============================================================
``FUSIONRANK_HOME``                     cache root: workspaces (ingested catalogues), the embedding
                                        store, demo models, the exported ONNX query encoder
                                        (default ``~/.cache/fusionrank``)
``FUSIONRANK_FASHION44K``               the fashion44k folder; used where a config's data source is the
                                        default ``../shared/data/fashion44k`` (``make demo``, the
                                        shipped configs), and by ``fusionrank demo --data``'s default
``FUSIONRANK_SHARED_DATA``              the shared data folder (``fashion44k/``, ``ltr/``,
                                        ``esci-sample/``) for tests and benchmarks
``FUSIONRANK_ADMIN_KEY``                the service's admin key (PUT/DELETE products, model swap,
                                        snapshot); generated and printed at start when unset
``FUSIONRANK_EVENTS_KEY``               the events-only key the search page embeds; generated when unset
``FUSIONRANK_UPLOAD_ROOTS``             folders (``:``-separated, or a JSON list) from which ``PUT
                                        /products`` may take a photo or clip, besides the catalogue's
                                        own media folders (default: none)
``FUSIONRANK_EVENTS_RATE``              events-key requests per second per client before 429
                                        (token bucket; default 20, burst ``FUSIONRANK_EVENTS_BURST`` 40)
``FUSIONRANK_EVENTS_URL``               the event store: a file path or ``sqlite:///PATH`` (SQLite, WAL,
                                        ``synchronous=FULL``) or ``postgresql://USER@HOST:PORT/DB``
                                        (default: ``<service data dir>/events.sqlite``)
``FUSIONRANK_EVENTS_HASH_KEY``          key (any string of 16 bytes or more) of the HMAC-SHA256 that replaces
                                        client and session ids before they are stored; a store refuses a
                                        key other than the one it was created with (default: 32 random
                                        bytes generated once into
                                        ``<service data dir>/events.key``, mode 0600; see
                                        :func:`fusionrank.feedback.store.hash_key_for`)
``FUSIONRANK_EVENTS_RETENTION_DAYS``    days searches and events are kept before ``purge`` deletes
                                        them (default 90; 0 keeps everything)
``FUSIONRANK_RANDOMISE_SHARE``          share of searches whose top result the service swaps with one at
                                        a random rank 2..k, so position bias can be estimated from
                                        clicks (default 0: off)
``FUSIONRANK_EXPLORE_SHARE``            share of searches that show, at random positions, candidates
                                        the ranker put at random ranks k+1..depth, so retraining sees
                                        clicks on what the served ranker keeps below the page (default 0)
``FUSIONRANK_EXPLORE_DEPTH``            the deepest rank an explored search draws from (default 50)
``FUSIONRANK_EXPLORE_COUNT``            how many positions of an explored search show such a candidate
                                        (default 1)
======================================  ==============================================================

:func:`get_settings` reads the environment on each call (cheap), so a test that sets a
variable with ``monkeypatch.setenv`` sees it without reloading modules. No other module
reads ``os.environ`` for these.
"""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SHARED = REPO_ROOT.parent / "shared" / "data"
DEFAULT_FASHION44K_SOURCE = "../shared/data/fashion44k"  # the shipped configs' data source, as written in them


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FUSIONRANK_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".cache" / "fusionrank")
    shared_data: Path = DEFAULT_SHARED
    fashion44k: Path | None = None
    admin_key: SecretStr | None = None
    events_key: SecretStr | None = None
    upload_roots: str = ""
    events_rate: float = Field(20.0, gt=0)
    events_burst: int = Field(40, ge=1)
    events_url: str | None = None
    events_hash_key: SecretStr | None = None
    events_retention_days: float = Field(90.0, ge=0)
    randomise_share: float = Field(0.0, ge=0, le=1)
    explore_share: float = Field(0.0, ge=0, le=1)
    explore_depth: int = Field(50, ge=2)
    explore_count: int = Field(1, ge=1)
    search_concurrency: int | None = Field(None, ge=1)  # searches one serving process ranks at once (default: see
    # fusionrank.serving.http.app.searches_at_once)

    @property
    def upload_root_paths(self) -> list[Path]:
        """``FUSIONRANK_UPLOAD_ROOTS`` as resolved folders (a JSON list, or ``:``-separated)."""
        raw = (self.upload_roots or "").strip()
        if not raw:
            return []
        if raw.startswith("["):
            import json

            items = [str(x) for x in json.loads(raw)]
        else:
            items = raw.split(os.pathsep)
        return [Path(x).expanduser().resolve() for x in items if x.strip()]

    @property
    def fashion44k_dir(self) -> Path:
        """The fashion44k folder: ``FUSIONRANK_FASHION44K``, else ``<shared data>/fashion44k``."""
        return Path(self.fashion44k) if self.fashion44k else Path(self.shared_data) / "fashion44k"

    @property
    def models_dir(self) -> Path:
        return Path(self.home) / "models"


def get_settings() -> Settings:
    return Settings()
