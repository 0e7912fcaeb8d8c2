"""Config files (TOML or YAML) -> plain dicts, with a clear error for unknown formats."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import FusionrankError


def load_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise FusionrankError(f"{p}: config file not found")
    if p.suffix == ".toml":
        import tomllib

        with open(p, "rb") as f:
            try:
                return tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise FusionrankError(f"{p}: invalid TOML: {e}") from None
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise FusionrankError(f"{p}: invalid YAML: {e}") from None
    raise FusionrankError(f"{p}: config must be .toml, .yaml or .yml")
