"""Wayfair WANDS (Wayfair ANnotation DataSet) adapter.

Layout (``root`` or ``root/dataset``), three tab-separated files despite the
``.csv`` names (``.gz`` variants are read too)::

    product.csv  product_id, product_name, product_class, category hierarchy,
                 product_description, product_features, rating_count,
                 average_rating, review_count
    query.csv    query_id, query, query_class
    label.csv    id, query_id, product_id, label

Mapping
    ``product_name`` -> title, ``product_description`` -> description.
    ``category`` is the top level of ``category hierarchy`` (levels separated by
    ``/``, e.g. "Furniture / Bedroom Furniture / Beds" -> "Furniture"); a product
    without a hierarchy takes the first of its ``product_class`` values (which are
    ``|``-separated). Attributes keep ``product_class``, ``category_hierarchy``
    (normalised to "A / B / C"), ``rating_count``, ``review_count`` (as integers
    when they are whole numbers) and ``average_rating``, plus every
    ``product_features`` pair: the features are ``|``-separated ``key:value`` (or
    ``key : value``) items; values of a repeated key are joined with " | ", items
    without a key are joined into ``other_features``, and a feature key equal to one
    of the attributes above is stored as ``feature_<key>``.

Grades
    ``label``: Exact = 2, Partial = 1, Irrelevant = 0 (:data:`WANDS_GRADES`, matched
    case-insensitively; ``grades={...}`` overrides). Any other label rejects the row
    (a :class:`RowError` naming file, row and ``label``).

Options (:class:`WandsOptions`): ``grades``, ``limit`` (read at most this many product rows).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Iterator

from pydantic import Field, StrictInt

from ... import schema as S
from ...errors import FusionrankError, RowError
from .base import ADAPTERS, Adapter, LimitedOptions, Record

#: Default WANDS label -> grade map.
WANDS_GRADES: dict[str, int] = {"Exact": 2, "Partial": 1, "Irrelevant": 0}

_HIERARCHY_COLUMNS = ("category hierarchy", "category_hierarchy")
_RESERVED = ("product_class", "category_hierarchy", "rating_count", "average_rating", "review_count")


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _id_text(v: Any) -> Any:
    if _missing(v):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v) if isinstance(v, (int, str)) and not isinstance(v, bool) else v  # never stripped: see validate.id_problem


def _number_text(v: Any, whole: bool) -> str | None:
    """``"15.0"`` -> ``"15"`` for counts; text that is not a number is kept as it is."""
    if _missing(v):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v).strip()
    if math.isnan(x):
        return None
    if whole and x.is_integer():
        return str(int(x))
    return f"{x:g}"


def parse_features(text: Any) -> dict[str, str]:
    """``"a:1|b : two| : x"`` -> ``{"a": "1", "b": "two", "other_features": "x"}``."""
    if _missing(text) or not isinstance(text, str):
        return {}
    out: dict[str, list[str]] = {}
    for item in text.split("|"):
        key, sep, val = item.partition(":")
        key, val = (key.strip(), val.strip()) if sep else ("", key.strip())
        if not val:
            continue
        key = key or "other_features"
        if key in _RESERVED:
            key = f"feature_{key}"
        vals = out.setdefault(key, [])
        if val not in vals:
            vals.append(val)
    return {k: " | ".join(v) for k, v in out.items()}


class WandsOptions(LimitedOptions):
    grades: dict[str, Annotated[StrictInt, Field(ge=0)]] = Field(
        default_factory=lambda: dict(WANDS_GRADES), min_length=1,
        description="label -> grade (integers >= 0; labels matched case-insensitively)")


@ADAPTERS.register("wands")
class WandsAdapter(Adapter):
    name = "wands"
    Options = WandsOptions
    options: WandsOptions

    def __init__(self, root: str | Path, options: WandsOptions | dict[str, Any] | None = None, /, **kwargs: Any):
        super().__init__(root, options, **kwargs)
        grades = self.options.grades
        self.grades = {str(k).strip().lower(): int(g) for k, g in grades.items()}
        self._labels = ", ".join(str(k) for k in grades)
        self.limit = self.options.limit

    def _path(self, name: str, required: bool = True) -> Path | None:
        base = self.root.parent if self.root.is_file() else self.root
        for d in (base, base / "dataset"):
            for n in (name, name + ".gz"):
                if (d / n).is_file():
                    return d / n
        if required:
            raise FusionrankError(f"{base}: WANDS file {name} not found (looked here and in dataset/)")
        return None

    def products(self) -> Iterator[Record]:
        path = self._path("product.csv")
        cols = self.require_columns(path, ["product_id", "product_name"], "expected the WANDS product.csv layout (tab-separated)")
        hcol = next((c for c in _HIERARCHY_COLUMNS if c in cols), None)
        file = str(path)
        for row, rec in self.rows(path):
            if self.limit is not None and row >= self.limit:
                break
            if isinstance(rec, RowError):
                yield file, row, rec
                continue
            attrs = parse_features(rec.get("product_features"))
            classes = rec.get("product_class")
            if not _missing(classes):
                attrs["product_class"] = str(classes).strip()
            levels = []
            h = rec.get(hcol) if hcol else None
            if isinstance(h, str):
                levels = [x.strip() for x in h.split("/") if x.strip()]
                if levels:
                    attrs["category_hierarchy"] = " / ".join(levels)
            if levels:
                category = levels[0]
            elif isinstance(classes, str):
                category = next((c.strip() for c in classes.split("|") if c.strip()), None)
            else:
                category = None
            for name, whole in (("rating_count", True), ("review_count", True), ("average_rating", False)):
                v = _number_text(rec.get(name), whole)
                if v is not None:
                    attrs[name] = v
            yield file, row, {
                S.PRODUCT_ID: _id_text(rec.get("product_id")),
                S.TITLE: rec.get("product_name"),
                S.DESCRIPTION: rec.get("product_description"),
                S.CATEGORY: category,
                S.ATTRIBUTES: attrs,
            }

    def queries(self) -> Iterator[Record]:
        path = self._path("query.csv", required=False)
        if path is None:
            return
        self.require_columns(path, [S.QUERY_ID, S.QUERY], "expected the WANDS query.csv layout (tab-separated)")
        for row, rec in self.rows(path):
            if not isinstance(rec, RowError):
                rec = {S.QUERY_ID: _id_text(rec.get(S.QUERY_ID)), S.QUERY: rec.get(S.QUERY)}
            yield str(path), row, rec

    def qrels(self) -> Iterator[Record]:
        path = self._path("label.csv", required=False)
        if path is None:
            return
        self.require_columns(path, [S.QUERY_ID, S.PRODUCT_ID, "label"], "expected the WANDS label.csv layout (tab-separated)")
        file = str(path)
        for row, rec in self.rows(path):
            if isinstance(rec, RowError):
                yield file, row, rec
                continue
            label = rec.get("label")
            grade = self.grades.get(label.strip().lower()) if isinstance(label, str) else None
            if grade is None:
                yield file, row, RowError(file, row, "label", f"invalid label {label!r}; expected one of {self._labels}")
                continue
            yield file, row, {S.QUERY_ID: _id_text(rec.get(S.QUERY_ID)), S.PRODUCT_ID: _id_text(rec.get(S.PRODUCT_ID)),
                              S.GRADE: grade}
