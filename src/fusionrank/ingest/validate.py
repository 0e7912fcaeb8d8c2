"""Row-level validation of product records into the canonical product schema.

:func:`validate_product` turns one raw record (already mapped to canonical
column names by an adapter) into a clean product dict, or raises
:class:`~fusionrank.errors.RowError` naming file, row and field. Fixes that do
not lose information (type coercion, HTML stripping, whitespace) are applied and
listed so the report can count "fixed" rows.
"""
from __future__ import annotations

import json
import math
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .. import schema as S
from ..errors import RowError
from .clean import clean_text


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def id_problem(v: str) -> str | None:
    """Why ``v`` cannot be an id as it is (None when it can).

    Ids are stored exactly as given: never NFKC-normalised, entity-decoded or
    stripped. So an id that would need any of that is refused: empty, leading or
    trailing whitespace, control or format characters (zero-width, bidi), lone
    surrogates, U+FFFD (bytes of the source that were not valid UTF-8), or longer
    than ``schema.MAX_FIELD_CHARS["product_id"]``.
    """
    if v == "":
        return "is empty"
    limit = S.MAX_FIELD_CHARS[S.PRODUCT_ID]
    if len(v) > limit:
        return f"is too long: {len(v)} characters > {limit}"
    if v[0].isspace() or v[-1].isspace():
        return "has leading or trailing whitespace (ids are stored exactly as given, never stripped)"
    if v.isprintable() and "\ufffd" not in v:  # the common case, checked in C
        return None
    for i, ch in enumerate(v):
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs"):
            kind = {"Cc": "a control character", "Cf": "an invisible format character", "Cs": "a lone surrogate"}[cat]
            return f"contains {kind} (U+{ord(ch):04X}) at position {i}"
        if ch == "\ufffd":
            return f"contains U+FFFD at position {i} (bytes of the source that were not valid UTF-8)"
    return None


def _as_id(v: Any, file: str, row: int, name: str = S.PRODUCT_ID) -> str:
    """An id as text, exactly as given (integers and integral floats become their digits), or a RowError."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        raise RowError(file, row, name, f"missing {name.replace('_', ' ')}")
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise RowError(file, row, name, f"expected text, got {type(v).__name__}")
    if isinstance(v, float):
        if not math.isfinite(v):
            raise RowError(file, row, name, f"expected text, got the number {v!r}")
        v = str(int(v)) if v.is_integer() else repr(v)
    elif isinstance(v, int):
        if abs(v) >= 10 ** S.MAX_FIELD_CHARS[S.PRODUCT_ID]:
            raise RowError(file, row, name, f"{name.replace('_', ' ')} is too long: a number of more than "
                                            f"{S.MAX_FIELD_CHARS[S.PRODUCT_ID]} digits")
        v = str(v)
    if v.strip() == "":
        raise RowError(file, row, name, f"missing {name.replace('_', ' ')}")
    why = id_problem(v)
    if why:
        raise RowError(file, row, name, f"{name.replace('_', ' ')} {why}: {v!r}")
    return v


def _valid_unicode(v: str, file: str, row: int, name: str) -> str:
    """``v`` unchanged, or a RowError when it holds lone surrogates (which no file can store)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RowError(file, row, name, f"not valid Unicode: lone surrogate at position {e.start}") from None
    return v


def _as_text(v: Any, file: str, row: int, name: str, fixes: list[str]) -> str | None:
    if _is_missing(v):
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise RowError(file, row, name, f"expected text, got {type(v).__name__}")
    if not isinstance(v, str):
        fixes.append(f"{name}: coerced {type(v).__name__} to text")
        try:
            v = str(v)
        except ValueError:  # an integer of thousands of digits
            raise RowError(file, row, name, "number too long to be text") from None
    out, changed = clean_text(v)
    if changed:
        fixes.append(f"{name}: cleaned")
    limit = S.MAX_FIELD_CHARS.get(name)
    if limit is not None and len(out) > limit:
        raise RowError(file, row, name, f"too long: {len(out)} characters > {limit}")
    return out or None


def _as_list(v: Any, file: str, row: int, name: str, fixes: list[str]) -> list[str]:
    if _is_missing(v):
        return []
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("["):
            try:
                v = json.loads(s)
            except (ValueError, RecursionError):  # text that merely starts with "[": one item per line
                v = [p for p in s.splitlines() if p.strip()]
        else:
            v = [p for p in s.splitlines() if p.strip()]
        fixes.append(f"{name}: split text into a list")
    if hasattr(v, "tolist"):
        v = v.tolist()
    if not isinstance(v, (list, tuple)):
        raise RowError(file, row, name, f"expected a list of text, got {type(v).__name__}")
    if len(v) > S.MAX_LIST_ITEMS:
        raise RowError(file, row, name, f"too many items: {len(v)} > {S.MAX_LIST_ITEMS}")
    out = []
    for i, item in enumerate(v):
        t = _as_text(item, file, row, f"{name}[{i}]", fixes)
        if t is not None:
            if len(t) > S.MAX_LIST_ITEM_CHARS:
                raise RowError(file, row, name, f"item {i} too long: {len(t)} characters > {S.MAX_LIST_ITEM_CHARS}")
            out.append(t)
    return out


def _as_attributes(v: Any, file: str, row: int, fixes: list[str]) -> dict[str, str]:
    if _is_missing(v):
        return {}
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except (ValueError, RecursionError):
            raise RowError(file, row, S.ATTRIBUTES, "expected a JSON object of attributes") from None
        fixes.append("attributes: parsed JSON text")
    if isinstance(v, list):  # pyarrow map columns arrive as a list of pairs
        try:
            v = dict(v)
        except (TypeError, ValueError):
            raise RowError(file, row, S.ATTRIBUTES, "expected a mapping or a list of (key, value) pairs") from None
    if not isinstance(v, dict):
        raise RowError(file, row, S.ATTRIBUTES, f"expected a mapping, got {type(v).__name__}")
    out = {}
    for k, val in v.items():
        if _is_missing(val):
            continue
        t = _as_text(val if isinstance(val, (str, int, float)) else _json_text(val), file, row, f"attributes.{k}", fixes)
        if t is not None:
            out[_valid_unicode(str(k), file, row, S.ATTRIBUTES)] = t
    return out


def _json_text(v: Any) -> str:
    """A nested value as JSON text (values JSON cannot hold, e.g. bytes, as their str())."""
    return json.dumps(v, default=str)


def validate_product(raw: dict[str, Any], file: str, row: int) -> tuple[dict[str, Any], list[str]]:
    """Validate and clean one product record. Returns ``(product, fixes)``."""
    fixes: list[str] = []
    unknown = set(raw) - set(S.PRODUCT_COLUMNS)
    pid = _as_id(raw.get(S.PRODUCT_ID), file, row)
    title = _as_text(raw.get(S.TITLE), file, row, S.TITLE, fixes)
    if title is None:
        raise RowError(file, row, S.TITLE, "missing title")
    out: dict[str, Any] = {S.PRODUCT_ID: pid, S.TITLE: title}
    for name in (S.DESCRIPTION, S.BRAND, S.COLOR, S.CATEGORY):
        out[name] = _as_text(raw.get(name), file, row, name, fixes)
    for name in S.LIST_COLUMNS:
        out[name] = _as_list(raw.get(name), file, row, name, fixes)
    attrs = _as_attributes(raw.get(S.ATTRIBUTES), file, row, fixes)
    for k in sorted(unknown):  # unknown columns are kept as attributes, never dropped
        if not _is_missing(raw[k]):
            v = raw[k]
            attrs[_valid_unicode(str(k), file, row, S.ATTRIBUTES)] = _as_text(
                v if isinstance(v, (str, int, float)) else _json_text(v), file, row, f"attributes.{k}", fixes) or ""
    out[S.ATTRIBUTES] = attrs
    for name in (S.IMAGE, S.AUDIO):
        v = raw.get(name)
        if _is_missing(v):
            out[name] = None
        elif not isinstance(v, str):
            raise RowError(file, row, name, f"expected a path or URL, got {type(v).__name__}")
        else:
            out[name] = _valid_unicode(v.strip(), file, row, name)
    return out, fixes


def content_signature(p: dict[str, Any]) -> str:
    """A canonical JSON form of a product, used to tell exact duplicates apart."""
    return json.dumps(p, sort_keys=True, ensure_ascii=False, default=str)


@dataclass
class ValidationReport:
    """Counts of what happened to every row read. Nothing is silently dropped:
    ``read == kept + rejected + merged + skipped``. A fault that stops the reading of
    a file (e.g. a truncated gzip) is one rejected row. ``utf8_replaced`` counts rows
    (of any outcome) read with invalid UTF-8 replaced by U+FFFD; each is listed in
    ``rejects.jsonl`` with kind "encoding"."""

    read: int = 0
    kept: int = 0
    fixed: int = 0
    rejected: int = 0
    merged: int = 0
    media_dropped: int = 0
    skipped: int = 0
    utf8_replaced: int = 0
    skip_reasons: Counter = field(default_factory=Counter)
    reject_reasons: Counter = field(default_factory=Counter)
    fix_reasons: Counter = field(default_factory=Counter)
    media_reasons: Counter = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files, "read": self.read, "kept": self.kept, "fixed": self.fixed,
            "rejected": self.rejected, "merged_duplicates": self.merged, "media_dropped": self.media_dropped,
            "skipped": self.skipped, "utf8_replaced_rows": self.utf8_replaced, "skip_reasons": dict(self.skip_reasons.most_common()),
            "reject_reasons": dict(self.reject_reasons.most_common()),
            "fix_reasons": dict(self.fix_reasons.most_common()),
            "media_reasons": dict(self.media_reasons.most_common()),
        }

    def check(self) -> None:
        assert self.read == self.kept + self.rejected + self.merged + self.skipped, self.as_dict()
