"""Dataset adapters map a source layout to canonical records.

An adapter yields ``(file, row, record)`` triples whose records use the column
names of :mod:`fusionrank.schema` (or a :class:`RowError` for rows that cannot
even be read). Validation and cleaning happen afterwards, in one place.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ...errors import RowError, SchemaError
from ...registry import Registry
from ..readers import iter_records, read_columns

Record = tuple[str, int, "dict[str, Any] | RowError"]

ADAPTERS: Registry[type["Adapter"]] = Registry("dataset adapter")


class Adapter:
    """Base class. Subclasses set ``name`` and implement the three iterators."""

    name: str = ""

    def __init__(self, root: str | Path, **options: Any):
        self.root = Path(root)
        self.options = options

    def products(self) -> Iterator[Record]:
        raise NotImplementedError

    def queries(self) -> Iterator[Record]:
        return iter(())

    def qrels(self) -> Iterator[Record]:
        return iter(())

    # helpers ---------------------------------------------------------------
    @staticmethod
    def require_columns(path: Path, required: list[str], hint: str = "") -> list[str]:
        cols = read_columns(path)
        missing = [c for c in required if c not in cols]
        if missing:
            raise SchemaError(str(path), missing, cols, hint)
        return cols

    @staticmethod
    def rows(path: Path, fmt: str | None = None) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
        return iter_records(path, fmt)


def get_adapter(name: str, root: str | Path, **options: Any) -> Adapter:
    return ADAPTERS.get(name)(root, **options)
