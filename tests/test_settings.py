"""The one Settings object reads every FUSIONRANK_ variable, and the places that use them follow it."""
from __future__ import annotations

from pathlib import Path

import pytest

from fusionrank.settings import DEFAULT_FASHION44K_SOURCE, DEFAULT_SHARED, Settings, get_settings

VARIABLES = ("FUSIONRANK_HOME", "FUSIONRANK_SHARED_DATA", "FUSIONRANK_FASHION44K", "FUSIONRANK_ADMIN_KEY",
             "FUSIONRANK_EVENTS_KEY", "FUSIONRANK_UPLOAD_ROOTS", "FUSIONRANK_EVENTS_RATE",
             "FUSIONRANK_EVENTS_BURST", "FUSIONRANK_EVENTS_URL", "FUSIONRANK_EVENTS_HASH_KEY",
             "FUSIONRANK_EVENTS_RETENTION_DAYS", "FUSIONRANK_RANDOMISE_SHARE", "FUSIONRANK_EXPLORE_SHARE", "FUSIONRANK_EXPLORE_DEPTH",
             "FUSIONRANK_EXPLORE_COUNT")


@pytest.fixture
def clean_env(monkeypatch):
    for v in VARIABLES:
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def test_defaults(clean_env):
    s = get_settings()
    assert s.home == Path.home() / ".cache" / "fusionrank" and s.models_dir == s.home / "models"
    assert s.shared_data == DEFAULT_SHARED and s.fashion44k is None and s.fashion44k_dir == DEFAULT_SHARED / "fashion44k"
    assert s.admin_key is None and s.events_key is None and s.upload_root_paths == []


def test_each_variable_is_read(clean_env, tmp_path):
    up1, up2 = tmp_path / "up1", tmp_path / "up2"
    up1.mkdir()
    up2.mkdir()
    env = {"FUSIONRANK_HOME": str(tmp_path / "home"), "FUSIONRANK_SHARED_DATA": str(tmp_path / "shared"),
           "FUSIONRANK_FASHION44K": str(tmp_path / "f44k"), "FUSIONRANK_ADMIN_KEY": "adm-secret",
           "FUSIONRANK_EVENTS_KEY": "ev-secret", "FUSIONRANK_UPLOAD_ROOTS": f"{up1}:{up2}",
           "FUSIONRANK_EVENTS_RATE": "2.5", "FUSIONRANK_EVENTS_BURST": "7", "FUSIONRANK_EVENTS_URL": "postgresql://u@h:5/db",
           "FUSIONRANK_EVENTS_HASH_KEY": "hash-secret-0123456789", "FUSIONRANK_EVENTS_RETENTION_DAYS": "30",
           "FUSIONRANK_RANDOMISE_SHARE": "0.1", "FUSIONRANK_EXPLORE_SHARE": "0.05", "FUSIONRANK_EXPLORE_DEPTH": "30",
           "FUSIONRANK_EXPLORE_COUNT": "3"}
    for k, v in env.items():
        clean_env.setenv(k, v)
    s = get_settings()  # read per call: no module reload needed
    assert s.home == tmp_path / "home" and s.models_dir == tmp_path / "home" / "models"
    assert s.shared_data == tmp_path / "shared" and s.fashion44k_dir == tmp_path / "f44k"
    assert s.admin_key.get_secret_value() == "adm-secret" and s.events_key.get_secret_value() == "ev-secret"
    assert "adm-secret" not in repr(s) and "ev-secret" not in str(s)            # keys never printed
    assert [p.name for p in s.upload_root_paths] == ["up1", "up2"]
    assert (s.events_rate, s.events_burst) == (2.5, 7)
    assert (s.events_url, s.events_retention_days, s.randomise_share) == ("postgresql://u@h:5/db", 30.0, 0.1)
    assert (s.explore_share, s.explore_depth, s.explore_count) == (0.05, 30, 3)
    assert s.events_hash_key.get_secret_value() == "hash-secret-0123456789" and "hash-secret" not in repr(s)


def test_bad_values_are_errors(clean_env):
    clean_env.setenv("FUSIONRANK_EVENTS_BURST", "0")
    with pytest.raises(ValueError, match="events_burst"):
        Settings()


def test_fashion44k_variable_replaces_the_shipped_configs_source(clean_env, tmp_path):
    from fusionrank.workspace import resolve_source

    data = tmp_path / "my-fashion44k"
    data.mkdir()
    clean_env.setenv("FUSIONRANK_FASHION44K", str(data))
    assert resolve_source(DEFAULT_FASHION44K_SOURCE) == data.resolve()
    assert resolve_source(str(data)) == data.resolve()                    # an explicit source is taken as given


def test_home_variable_places_workspaces(clean_env, tmp_path):
    from fusionrank.workspace import Workspace

    src = tmp_path / "src"
    src.mkdir()
    (src / "products.jsonl").write_text('{"product_id": "1", "title": "x"}\n')
    clean_env.setenv("FUSIONRANK_HOME", str(tmp_path / "h1"))
    assert Workspace(src, "native").root.parent == tmp_path / "h1"
    clean_env.setenv("FUSIONRANK_HOME", str(tmp_path / "h2"))
    assert Workspace(src, "native").root.parent == tmp_path / "h2"
