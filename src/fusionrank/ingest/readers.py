"""Read Parquet, CSV/TSV and JSONL (optionally gzip-compressed) as rows of dicts.

Readers yield ``(row_number, record)`` with 0-based data row numbers (the header
is not counted), so validation errors can name the file and row. A JSONL line
that is not valid JSON is yielded as a :class:`~fusionrank.errors.RowError`
instead of a record: one bad line never aborts the batch.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq

from ..errors import FusionrankError, RowError

FORMATS = ("parquet", "csv", "tsv", "jsonl")


def detect_format(path: str | Path) -> str:
    """Infer the format from the file name (``.gz`` is looked through)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext, fmt in ((".parquet", "parquet"), (".pq", "parquet"), (".csv", "csv"), (".tsv", "tsv"),
                     (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl")):
        if name.endswith(ext):
            return fmt
    raise FusionrankError(f"{path}: cannot tell the format from the file name; expected one of {', '.join(FORMATS)} (optionally .gz)")


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def _sniff_delimiter(path: Path, fmt: str) -> str:
    if fmt == "tsv":
        return "\t"
    with _open_text(path) as f:
        head = f.readline()
    return "\t" if head.count("\t") > head.count(",") else ","


def iter_records(path: str | Path, fmt: str | None = None, batch_size: int = 8192) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """Yield ``(row, record_or_error)`` for every data row of ``path``."""
    path = Path(path)
    if not path.exists():
        raise FusionrankError(f"{path}: file not found")
    fmt = fmt or detect_format(path)
    if fmt == "parquet":
        pf = pq.ParquetFile(path)
        row = 0
        for batch in pf.iter_batches(batch_size=batch_size):
            for rec in batch.to_pylist():
                yield row, rec
                row += 1
    elif fmt in ("csv", "tsv"):
        delim = _sniff_delimiter(path, fmt)
        with _open_text(path) as f:
            reader = csv.DictReader(f, delimiter=delim)
            for row, rec in enumerate(reader):
                if None in rec:  # more cells than header columns
                    extra = rec.pop(None)
                    yield row, RowError(str(path), row, None, f"{len(extra)} more cell(s) than the header has columns")
                    continue
                yield row, rec
    elif fmt == "jsonl":
        with _open_text(path) as f:
            row = 0
            for line in f:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    yield row, RowError(str(path), row, None, f"invalid JSON: {e.msg} at column {e.colno}")
                else:
                    if isinstance(rec, dict):
                        yield row, rec
                    else:
                        yield row, RowError(str(path), row, None, f"expected a JSON object, got {type(rec).__name__}")
                row += 1
    else:
        raise FusionrankError(f"{path}: unsupported format {fmt!r}; expected one of {', '.join(FORMATS)}")


def read_columns(path: str | Path) -> list[str]:
    """Column names of a table file (for schema checks before reading rows)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "parquet":
        return list(pq.ParquetFile(path).schema_arrow.names)
    if fmt in ("csv", "tsv"):
        delim = _sniff_delimiter(path, fmt)
        with _open_text(path) as f:
            return next(csv.reader(f, delimiter=delim), [])
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                try:
                    return list(json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    return []
    return []
