"""Format readers: Parquet, CSV, TSV and JSONL files (each optionally ``.gz``) as records.

A reader never lets bad input abort a batch. Everything it cannot read becomes a
:class:`~fusionrank.errors.RowError` in the record stream (counted as a reject by
ingestion), naming the file, the row and, for faults in the byte stream, the byte
offset:

* a row that does not parse (invalid JSON, more or fewer cells than the header,
  duplicate JSON keys, a CSV field over :data:`MAX_CSV_FIELD_CHARS`) is one reject
  and reading goes on with the next row;
* a fault of the file itself (empty file, a ``.gz`` that is not gzip, a truncated or
  corrupt gzip stream, a Parquet file without its footer or with an unreadable row
  group, a UTF-16/32 byte-order mark) is one reject for the rows from there on; the
  rows read before it are kept, and the next row group (Parquet) or the next file
  and table are read as usual.

Text is UTF-8 (a UTF-8 byte-order mark is skipped). Bytes that are not valid UTF-8
are replaced by U+FFFD, and every replacement is reported: within
:func:`collect_notes` each row with replaced bytes adds a :class:`ReadNote` (file,
row, byte offset) that ingestion counts and writes to ``rejects.jsonl``.
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import json
import zlib
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import FusionrankError, RowError

FORMATS = ("parquet", "csv", "tsv", "jsonl")

#: Longest CSV/TSV field read (characters). The csv module's default (131,072) is
#: raised to this; a longer field stops reading of its file with a reject (what
#: follows cannot be told apart from the over-long field, e.g. an unclosed quote).
MAX_CSV_FIELD_CHARS = 16 * 1024 * 1024
#: JSONL lines sampled by :func:`read_columns` to learn a file's columns.
JSONL_HEADER_SAMPLE = 1000

_CHUNK = 1 << 16
_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16"))

if csv.field_size_limit() < MAX_CSV_FIELD_CHARS:
    csv.field_size_limit(MAX_CSV_FIELD_CHARS)


# --- notes on repaired input --------------------------------------------------

@dataclass
class ReadNote:
    """A row read with a repair: ``reason`` says what was done (e.g. invalid UTF-8 replaced)."""

    file: str
    row: int | None
    offset: int
    reason: str


_NOTES: ContextVar[list[ReadNote] | None] = ContextVar("fusionrank_read_notes", default=None)


@contextlib.contextmanager
def collect_notes() -> Iterator[list[ReadNote]]:
    """Collect the :class:`ReadNote` of every row read (in this context) while the block runs."""
    notes: list[ReadNote] = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


def _note(n: ReadNote) -> None:
    sink = _NOTES.get()
    if sink is not None:
        sink.append(n)


class ReadFault(Exception):
    """The byte stream of a file cannot be read on from ``offset``."""

    def __init__(self, reason: str, offset: int):
        self.reason, self.offset = reason, offset
        super().__init__(reason)


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


def _is_gz(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _gzip_fault(e: BaseException, offset: int) -> ReadFault:
    if isinstance(e, EOFError):
        why = "gzip stream truncated (it ends before its end-of-stream marker)"
    elif isinstance(e, gzip.BadGzipFile) and "Not a gzipped file" in str(e):
        why = "not a gzip file" if offset == 0 else "trailing bytes after the gzip data are not gzip"
    elif isinstance(e, gzip.BadGzipFile):
        why = f"corrupt gzip data ({e})"
    else:
        why = f"corrupt gzip data ({type(e).__name__}: {e})"
    return ReadFault(f"{why}, at byte offset {offset} of the uncompressed data", offset)


def _chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes in chunks (gunzipped for ``.gz``); a fault raises :class:`ReadFault`."""
    offset = 0
    try:
        if _is_gz(path) and path.stat().st_size == 0:
            raise ReadFault("the file is empty (0 bytes), not a gzip file", 0)
        f = gzip.open(path, "rb") if _is_gz(path) else open(path, "rb")
    except OSError as e:
        raise ReadFault(f"cannot open the file ({e.strerror or e})", 0) from None
    with f:
        while True:
            try:
                b = f.read1(_CHUNK)  # read1: a fault loses no data decoded before it
            except (EOFError, gzip.BadGzipFile, zlib.error) as e:
                raise _gzip_fault(e, offset) from None
            except OSError as e:
                raise ReadFault(f"read error ({e.strerror or e}) at byte offset {offset}", offset) from None
            if not b:
                return
            offset += len(b)
            yield b


class _Lines:
    """Decoded lines of a text file (universal newlines, line ends kept), with UTF-8 repair notes.

    ``offset`` is the byte offset of the next line; ``replaced`` lists ``(line_offset,
    bad_bytes)`` of the lines read since it was last cleared. A stream fault raises
    :class:`ReadFault`; a partial last line before a fault is not returned (it is part
    of the fault).
    """

    def __init__(self, path: Path, keep_recent: bool = False):
        self.path = path
        self.offset = 0
        self.replaced: list[tuple[int, int]] = []
        self.keep_recent = keep_recent
        self.recent: list[str] = []  # with keep_recent: the lines returned since the caller last cleared it
        self._it = self._lines()

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self._it)
        if self.keep_recent:
            self.recent.append(line)
        return line

    def _decode(self, raw: bytes) -> str:
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            s = raw.decode("utf-8", errors="replace")
            self.replaced.append((self.offset + e.start, len(raw) - len(raw.decode("utf-8", errors="ignore").encode())))
        self.offset += len(raw)
        return s

    def _lines(self) -> Iterator[str]:
        carry = b""
        first = True
        try:
            for chunk in _chunks(self.path):
                data = carry + chunk
                if first:
                    for bom, name in _BOMS:
                        if data.startswith(bom):
                            raise ReadFault(f"the file starts with a {name} byte-order mark; only UTF-8 is read "
                                            "(save the file as UTF-8)", 0)
                    if data.startswith(codecs.BOM_UTF8):
                        data = data[len(codecs.BOM_UTF8):]
                        self.offset = len(codecs.BOM_UTF8)
                    first = False
                parts = data.splitlines(keepends=True)
                # the last part may be incomplete (no line end yet, or "\r" that a "\n" may follow)
                carry = parts.pop() if parts and (not parts[-1].endswith((b"\n", b"\r")) or parts[-1].endswith(b"\r")) else b""
                for raw in parts:
                    yield self._decode(raw)
        except ReadFault as f:
            if carry:
                f.reason += f" (a partial line of {len(carry)} bytes before it is not read)"
            raise
        if carry:
            yield self._decode(carry)


def _first_line(path: Path) -> str | None:
    """The first line of a text file, or None when the file is empty or unreadable there."""
    try:
        return next(iter(_Lines(path)), None)
    except ReadFault:
        return None


def _sniff_delimiter(path: Path, fmt: str) -> str:
    if fmt == "tsv":
        return "\t"
    head = _first_line(path) or ""
    return "\t" if head.count("\t") > head.count(",") else ","


def _fault(path: Path, row: int, reason: str) -> RowError:
    return RowError(str(path), row, None, reason)


# --- parquet ------------------------------------------------------------------

def _parquet_source(path: Path) -> Any:
    """What :class:`pyarrow.parquet.ParquetFile` opens: the path, or the gunzipped bytes of a ``.gz``."""
    if not _is_gz(path):
        return str(path)
    return pa.BufferReader(b"".join(_chunks(path)))


def _parquet_file(path: Path) -> pq.ParquetFile:
    """Open a Parquet file; :class:`ReadFault` when it cannot be opened at all."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ReadFault(f"cannot open the file ({e.strerror or e})", 0) from None
    if size == 0:
        raise ReadFault("the file is empty (0 bytes), not a Parquet file", 0)
    src = _parquet_source(path)
    try:
        return pq.ParquetFile(src, page_checksum_verification=True)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged footer
        raise ReadFault(f"not a readable Parquet file (footer or metadata damaged: {type(e).__name__}: {e})", 0) from None


def _parquet_records(path: Path, batch_size: int) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    try:
        pf = _parquet_file(path)
        names = list(pf.schema_arrow.names)
        groups = pf.metadata.num_row_groups
    except ReadFault as f:
        yield 0, _fault(path, 0, f.reason)
        return
    except Exception as e:
        yield 0, _fault(path, 0, f"not a readable Parquet file ({type(e).__name__}: {e})")
        return
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        yield 0, _fault(path, 0, f"duplicate column name(s) {dup}: cannot tell which one to read")
        return
    row = 0
    for g in range(groups):
        try:
            expected = pf.metadata.row_group(g).num_rows
        except Exception:
            expected = None
        done = 0
        start = row
        try:
            for batch in pf.iter_batches(batch_size=batch_size, row_groups=[g]):
                try:
                    recs = batch.to_pylist()
                except Exception:  # one bad value (e.g. invalid UTF-8 in a string column): find the rows
                    recs = []
                    for i in range(batch.num_rows):
                        try:
                            recs.append(batch.slice(i, 1).to_pylist()[0])
                        except Exception as e:
                            recs.append(_fault(path, row + i, f"row cannot be decoded ({type(e).__name__}: {e})"))
                for rec in recs:
                    yield row, rec
                    row += 1
                    done += 1
        except Exception as e:
            lost = f"{expected - done} row(s)" if expected is not None and expected >= done else "its remaining rows"
            yield row, _fault(path, row, f"Parquet row group {g} unreadable from row {row} on ({lost} lost): "
                                         f"{type(e).__name__}: {e}")
            # the next group's rows keep their numbers in the file
            row = start + expected if expected is not None and start + expected > row else row + 1


# --- text formats ---------------------------------------------------------------

def _utf8_notes(path: Path, lines: _Lines, row: int | None) -> None:
    where = "" if row is not None else " of the header line"
    for off, n in lines.replaced:
        _note(ReadNote(str(path), row, off, f"{n} invalid UTF-8 byte(s){where}, the first at byte offset {off}, replaced by U+FFFD"))
    lines.replaced.clear()


def _csv_records(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    delim = _sniff_delimiter(path, fmt)
    lines = _Lines(path, keep_recent=True)
    reader = csv.reader(lines, delimiter=delim)
    row = 0
    try:
        try:
            header = next(reader, None)
        except csv.Error as e:
            yield 0, _fault(path, 0, f"unreadable header line at byte offset 0: {e}")
            return
        if header is None:
            yield 0, _fault(path, 0, "the file is empty: no header line")
            return
        _utf8_notes(path, lines, None)
        dup = sorted({c for c in header if c != "" and header.count(c) > 1})
        if dup:
            yield 0, _fault(path, 0, f"duplicate column name(s) {dup} in the header: cannot tell which one to read")
            return
        n = len(header)
        # several unnamed columns (e.g. trailing delimiters): read as one column "", as long as at most one has a value
        unnamed = [i for i, c in enumerate(header) if c == ""] if header.count("") > 1 else []
        while True:
            start, first_line = lines.offset, reader.line_num
            lines.recent.clear()
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                if "field larger than field limit" in str(e):
                    yield row, _fault(path, row, f"a field longer than {MAX_CSV_FIELD_CHARS} characters (row starts at byte "
                                                 f"offset {start}); reading of this file stopped here")
                    return
                _utf8_notes(path, lines, row)
                yield row, _fault(path, row, f"malformed row at byte offset {start}: {e}")
                row += 1
                continue
            if not cells:  # a blank line
                lines.replaced.clear()
                continue
            _utf8_notes(path, lines, row)
            spans = reader.line_num - first_line
            if spans > 1 and _unclosed_quote(lines.recent, delim):
                yield row, RowError(str(path), row, None, f"unclosed quote: the row starting at byte offset {start} runs "
                                                          f"over {spans} lines to the end of the file")
                row += 1
                continue
            if len(cells) > n:
                yield row, RowError(str(path), row, None, f"{len(cells) - n} more cell(s) than the header has columns")
            elif len(cells) < n:
                yield row, RowError(str(path), row, None, f"{n - len(cells)} fewer cell(s) than the header has columns "
                                                          f"(row starts at byte offset {start})")
            elif unnamed:
                vals = [cells[i] for i in unnamed if cells[i].strip()]
                if len(vals) > 1:
                    yield row, RowError(str(path), row, None, f"values in {len(vals)} unnamed columns (empty header cells): "
                                                              "cannot tell them apart")
                else:
                    rec = {c: v for c, v in zip(header, cells) if c != ""}
                    rec[""] = vals[0] if vals else ""
                    yield row, rec
            else:
                yield row, dict(zip(header, cells))
            row += 1
    except ReadFault as f:
        yield row, _fault(path, row, f"{f.reason}; rows from {row} on are not read")


def _unclosed_quote(lines: list[str], delim: str) -> bool:
    """Whether the raw lines of one (multi-line) CSV row end inside a quoted field."""
    try:
        for _ in csv.reader(lines, delimiter=delim, strict=True):
            pass
    except csv.Error as e:
        return "unexpected end of data" in str(e)
    return False


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup!r}")
    return d


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    lines = _Lines(path)
    row = 0
    try:
        for line in lines:
            if not line.strip():
                lines.replaced.clear()
                continue
            _utf8_notes(path, lines, row)
            try:
                rec = json.loads(line, object_pairs_hook=_no_duplicate_keys)
            except json.JSONDecodeError as e:
                yield row, RowError(str(path), row, None, f"invalid JSON: {e.msg} at column {e.colno}")
            except (ValueError, RecursionError) as e:
                yield row, RowError(str(path), row, None, f"invalid JSON: {type(e).__name__}: {e}"[:500])
            else:
                if isinstance(rec, dict):
                    yield row, rec
                else:
                    yield row, RowError(str(path), row, None, f"expected a JSON object, got {type(rec).__name__}")
            row += 1
    except ReadFault as f:
        yield row, _fault(path, row, f"{f.reason}; rows from {row} on are not read")


def iter_records(path: str | Path, fmt: str | None = None, batch_size: int = 8192) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """Yield ``(row, record_or_error)`` for every data row of ``path`` (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FusionrankError(f"{path}: file not found")
    fmt = fmt or detect_format(path)
    if fmt == "parquet":
        yield from _parquet_records(path, batch_size)
    elif fmt in ("csv", "tsv"):
        yield from _csv_records(path, fmt)
    elif fmt == "jsonl":
        yield from _jsonl_records(path)
    else:
        raise FusionrankError(f"{path}: unsupported format {fmt!r}; expected one of {', '.join(FORMATS)}")


def probe_columns(path: str | Path) -> list[str] | None:
    """Column names of a table file, or None when the file cannot be read far enough to tell.

    JSONL has no header: its columns are the union of the keys of the first
    :data:`JSONL_HEADER_SAMPLE` object lines, so a line that lacks a column does not
    hide it. An unreadable file gives None: :func:`iter_records` then reports why.
    """
    path = Path(path)
    fmt = detect_format(path)
    try:
        if fmt == "parquet":
            return list(_parquet_file(path).schema_arrow.names)
        if fmt in ("csv", "tsv"):
            head = _first_line(path)
            if head is None:
                return None
            try:
                return next(csv.reader([head], delimiter=_sniff_delimiter(path, fmt)), [])
            except csv.Error:
                return None
        cols: dict[str, None] = {}
        seen = objects = 0
        for line in _Lines(path):
            if not line.strip():
                continue
            seen += 1
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                rec = None
            if isinstance(rec, dict):
                cols.update(dict.fromkeys(rec))
                objects += 1
            if seen >= JSONL_HEADER_SAMPLE:
                break
        return list(cols) if objects else None  # no object line: nothing to check, the rows say why
    except ReadFault:
        return None
    except OSError:
        return None


def read_columns(path: str | Path) -> list[str]:
    """Column names of a table file (for schema checks before reading rows); [] when unreadable."""
    return probe_columns(path) or []
