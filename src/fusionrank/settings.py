"""Every environment variable fusionrank reads, in one typed object.

================================  ==============================================================
variable                          meaning
================================  ==============================================================
``FUSIONRANK_HOME``               cache root: workspaces (ingested catalogues), the embedding
                                  store, demo models, the exported ONNX query encoder
                                  (default ``~/.cache/fusionrank``)
``FUSIONRANK_FASHION44K``         the fashion44k folder; used where a config's data source is the
                                  default ``../shared/data/fashion44k`` (``make demo``, the
                                  shipped configs), and by ``fusionrank demo --data``'s default
``FUSIONRANK_SHARED_DATA``        the shared data folder (``fashion44k/``, ``ltr/``,
                                  ``esci-sample/``) for tests and benchmarks
``FUSIONRANK_ADMIN_KEY``          the service's admin key (PUT/DELETE products, model swap,
                                  snapshot); generated and printed at start when unset
``FUSIONRANK_EVENTS_KEY``         the events-only key the search page embeds; generated when unset
================================  ==============================================================

:func:`get_settings` reads the environment on each call (cheap), so a test that sets a
variable with ``monkeypatch.setenv`` sees it without reloading modules. No other module
reads ``os.environ`` for these.
"""
from __future__ import annotations

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

    @property
    def fashion44k_dir(self) -> Path:
        """The fashion44k folder: ``FUSIONRANK_FASHION44K``, else ``<shared data>/fashion44k``."""
        return Path(self.fashion44k) if self.fashion44k else Path(self.shared_data) / "fashion44k"

    @property
    def models_dir(self) -> Path:
        return Path(self.home) / "models"


def get_settings() -> Settings:
    return Settings()
