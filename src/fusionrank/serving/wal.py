"""Append-only record logs that survive a crash at any byte: ``changes.jsonl``, ``searches.jsonl``, ``events.jsonl``.

Each record is one line, still one JSON object (any JSON-lines reader can read it)::

    {"_crc":"<crc32, 8 hex digits>",<the record's JSON without its opening brace>\\n

The checksum covers the record's compact JSON ``{...}`` exactly as written after the
``_crc`` member (so it covers the length too). Lines are written with one ``write`` and
``fsync``-ed before :meth:`RecordLog.append` returns, so an acknowledged record is on
disk. JSON never contains a raw newline, so a line is a record. Lines without ``_crc``
are records of the older plain-JSON format and are still read.

Opening a log scans it (:func:`scan`):

- every complete record whose checksum and length match is kept, in order;
- a tail without its final newline (a write cut short by a crash) is cut off; the
  dropped bytes are first copied to ``<name>.torn-<timestamp>`` next to the log;
- a complete line in the middle that fails its checksum (or is not JSON) is *reported*
  (log line, counter) and left in the file; the records after it are still replayed.

What was repaired is returned as a :class:`Repair` and logged; the service shows the
counts under ``/stats`` (``logs``). Files are created with mode 0600. A log given a
``max_bytes`` is rotated by size: the full file is renamed ``<name>.<n>`` (1, 2, ...;
nothing is deleted) and :func:`read_all` reads the rotated files then the current one.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["RecordLog", "Repair", "scan", "read_from", "encode_record", "read_all", "fsync_dir", "write_atomic", "FILE_MODE"]

FILE_MODE = 0o600
_PREFIX = b'{"_crc":"'
_HEAD = len(_PREFIX) + 8  # prefix + 8 hex digits + closing quote at _HEAD


def encode_record(rec: dict[str, Any]) -> bytes:
    """One record as a checksummed line; ValueError for NaN/Infinity (they are not JSON)."""
    body = json.dumps(rec, allow_nan=False, separators=(",", ":"), default=str).encode()
    rest = b'"}' if body == b"{}" else b'",' + body[1:]
    return b"%s%08x%s\n" % (_PREFIX, zlib.crc32(body), rest)


def _decode_line(line: bytes) -> dict | None:
    """The record of one complete line (without its newline), or None if it is damaged."""
    if line.startswith(_PREFIX):
        crc, sep = line[len(_PREFIX):_HEAD], line[_HEAD:_HEAD + 2]
        if sep == b'",':
            body = b"{" + line[_HEAD + 2:]
        elif line[_HEAD:] == b'"}':
            body = b"{}"
        else:
            return None
        try:
            if int(crc, 16) != zlib.crc32(body):
                return None
            rec = json.loads(body)
        except ValueError:
            return None
        return rec if isinstance(rec, dict) else None
    if line.startswith(b"{"):  # the older plain-JSON line format
        try:
            rec = json.loads(line)
        except ValueError:
            return None
        return rec if isinstance(rec, dict) else None
    return None


@dataclass
class Repair:
    """What opening one log found: records kept, damaged lines (reported, left in place), torn tail cut off."""

    path: str
    records: int = 0
    legacy: int = 0
    corrupt: list[int] = field(default_factory=list)  # byte offsets of damaged complete lines
    torn_bytes: int = 0
    torn_copy: str | None = None
    end: int = 0  # byte offset just after the last complete line read: where the next reader continues

    @property
    def repaired(self) -> bool:
        return bool(self.corrupt or self.torn_bytes)

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "legacy_records": self.legacy, "corrupt_lines": len(self.corrupt),
                "corrupt_offsets": self.corrupt[:20], "torn_bytes": self.torn_bytes,
                "torn_copy": Path(self.torn_copy).name if self.torn_copy else None}

    def message(self) -> str:
        name = Path(self.path).name
        out = []
        if self.torn_bytes:
            out.append(f"{name}: cut off a torn last record of {self.torn_bytes} byte(s) (a write interrupted by a crash; "
                       f"never acknowledged); copy kept in {Path(self.torn_copy).name if self.torn_copy else '-'}")
        if self.corrupt:
            out.append(f"{name}: {len(self.corrupt)} damaged record line(s) failed their checksum and were skipped, at byte "
                       f"offset(s) {', '.join(map(str, self.corrupt[:10]))}; the {self.records} record(s) around them were kept")
        return "; ".join(out)


def _complete_lines(data: bytes, offset: int = 0) -> tuple[list[dict], int, list[int], int]:
    """The records of ``data``'s complete lines: ``(records, end of the last complete line, damaged line offsets
    (plus ``offset``), lines without a checksum)``; bytes after the last newline are not read."""
    end = data.rfind(b"\n") + 1
    records: list[dict] = []
    bad: list[int] = []
    legacy, pos = 0, 0
    while pos < end:
        nl = data.index(b"\n", pos)
        line = data[pos:nl].rstrip(b"\r")
        if line.strip():
            rec = _decode_line(line)
            if rec is None:
                bad.append(offset + pos)
            else:
                records.append(rec)
                legacy += not line.startswith(_PREFIX)
        pos = nl + 1
    return records, end, bad, legacy


def scan(path: str | Path, repair: bool = True, log: Callable[[str], None] | None = print) -> tuple[list[dict], Repair]:
    """All valid records of ``path`` in order, and what was wrong; with ``repair``, a torn tail is cut off (copy kept)."""
    p = Path(path)
    rep = Repair(str(p))
    if not p.exists():
        return [], rep
    data = p.read_bytes()
    records, end, rep.corrupt, rep.legacy = _complete_lines(data)  # everything after the last newline is a torn write
    rep.records = len(records)
    rep.end = end
    tail = data[end:]
    if tail:
        rep.torn_bytes = len(tail)
        if repair:
            copy = p.with_name(f"{p.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 1_000_000_000:09d}")
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            try:
                os.write(fd, tail)
                os.fsync(fd)
            finally:
                os.close(fd)
            rep.torn_copy = str(copy)
            with open(p, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(p.parent)
    if rep.repaired and log is not None:
        log(rep.message())
    return records, rep


def read_from(path: str | Path, offset: int) -> tuple[list[dict], int, list[int]]:
    """The complete records written to ``path`` after byte ``offset``: ``(records, new offset, damaged line offsets)``.

    What another process is still writing (a line without its newline yet) is left for the next
    call; a damaged complete line is skipped and its offset returned (as :func:`scan` reports it).
    """
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    records, end, bad, _ = _complete_lines(data, offset)
    return records, offset + end, bad


def fsync_dir(d: Path) -> None:
    """Make a rename or a new file in ``d`` durable (best effort where the file system cannot)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rotated(path: Path) -> list[Path]:
    pat = re.compile(re.escape(path.name) + r"\.(\d+)$")
    found = [(int(m.group(1)), q) for q in path.parent.glob(path.name + ".*") if (m := pat.match(q.name))]
    return [q for _, q in sorted(found)]


def read_all(path: str | Path) -> Iterator[dict]:
    """Every valid record of a log and its rotated files, oldest first (read-only: nothing is repaired)."""
    p = Path(path)
    for q in _rotated(p) + [p]:
        yield from scan(q, repair=False, log=None)[0]


class RecordLog:
    """One append-only log file: :meth:`append` returns once the records are on disk.

    ``open`` scans and repairs the file first (see :func:`scan`); the records found are in
    :attr:`records` until :meth:`release_records` (callers replay them, then let them go).
    """

    def __init__(self, path: str | Path, sync: bool = True, max_bytes: int | None = None, log: Callable[[str], None] | None = print,
                 repair: bool = True):
        """``repair=False``: read what is there without cutting a torn tail (a process that shares the log with
        others, which may be writing that tail right now; the process that opened it first repaired it)."""
        self.path = Path(path)
        self.sync = sync
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._written = self._synced = 0
        self.fsyncs = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records, self.repair = scan(self.path, repair=repair, log=log)
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size
        self.appended = 0

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # files of older versions were created world-readable
        except OSError:
            pass
        return fd

    def release_records(self) -> None:
        self.records = []

    def append(self, *records: dict[str, Any]) -> None:
        """Write ``records`` (all or, if the process dies meanwhile, a prefix of whole records); return once on disk.

        Group commit: the write happens under the log's lock, the ``fsync`` after it, and one
        ``fsync`` covers every write that finished before it started, so concurrent callers
        share them instead of queueing one ``fsync`` each.
        """
        data = b"".join(encode_record(r) for r in records)  # ValueError before anything is written
        with self._lock:
            if self.max_bytes and self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            view = memoryview(data)
            try:
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
            except OSError:  # e.g. a full disk: take back the part written, so the next record starts a line
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    pass
                raise
            self._size += len(data)
            self.appended += len(records)
            self._written += 1
            mine = self._written
        if self.sync:
            with self._sync_lock:
                if self._synced < mine:
                    target = self._written  # every write counted here finished before this fsync starts
                    os.fsync(self._fd)
                    self._synced = target
                    self.fsyncs += 1

    def _rotate(self) -> None:  # under self._lock
        existing = _rotated(self.path)
        n = int(existing[-1].name.rsplit(".", 1)[1]) + 1 if existing else 1
        with self._sync_lock:
            os.fsync(self._fd)
            self._synced = self._written
            os.close(self._fd)
            os.rename(self.path, self.path.with_name(f"{self.path.name}.{n}"))
            fsync_dir(self.path.parent)
            self._fd = self._open()
        self._size = 0

    def truncate(self) -> None:
        """Empty the log (after a snapshot made its records redundant)."""
        with self._lock, self._sync_lock:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
            self._size = 0

    def close(self) -> None:
        with self._lock, self._sync_lock:
            if self._fd >= 0:
                if self.sync and self._synced < self._written:
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` by ``data`` so that a crash at any point leaves the old or the new content, whole.

    Written to a temporary file in the same folder, fsync-ed, renamed over ``path``, then the folder fsync-ed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
