"""Amazon ESCI (Shopping Queries Data Set) adapter.

Official layout (a folder)::

    shopping_queries_dataset_products.parquet
        product_id, product_title, product_description, product_bullet_point
        (newline-separated text), product_brand, product_color, product_locale
    shopping_queries_dataset_examples.parquet
        example_id, query, query_id, product_id, product_locale, esci_label,
        small_version, large_version, split

Also read: the layout of Vespa's commerce sample app (``sample-data/test-sample.parquet``
in the examples layout, products as a Vespa feed JSONL whose lines are
``{"put": "id:...::<id>", "fields": {id, title, description, bullets, brand, color, locale}}``),
and flat JSONL/Parquet/CSV products files using either the official or the Vespa field names.

Files are found in ``root`` or one folder below it; ``products_file`` and
``examples_file`` (absolute, or relative to ``root``) override the search.
Products: ``shopping_queries_dataset_products.parquet``, else the first (sorted)
``*products*.parquet`` / ``*products*.jsonl[.gz]``. Examples:
``shopping_queries_dataset_examples.parquet``, else ``*examples*.parquet``, else
``test-sample.parquet``. Without an examples file only products are ingested.

Product ids
    In ESCI a product is keyed by ``(product_id, product_locale)``: the same ASIN
    appears in several locales with different (translated) texts. With the default
    ``id_scheme="locale"`` the catalogue id is ``f"{locale}:{product_id}"`` (e.g.
    ``us:B08VSJGP1N``), always, whatever the locale filter, so ids are stable across
    ingests with different options; the judgments use the same scheme (from the
    example's ``product_locale``), so they always point at the product of their
    locale. ``id_scheme="plain"`` keeps the raw ASIN; then the same ASIN in two locales
    is a duplicate id with different content and the second one is rejected (use it
    with a single ``locale``). The raw ASIN and the locale are kept in the attributes
    ``asin`` and ``locale`` either way.

Grades
    ``esci_label`` -> grade: E (exact) = 3, S (substitute) = 2, C (complement) = 1,
    I (irrelevant) = 0 (:data:`ESCI_GRADES`); pass ``grades={...}`` to use another
    map (labels are matched case-insensitively). A row with any other label is
    rejected (a :class:`RowError` naming file, row and ``esci_label``), not fatal.

Options (:class:`EsciOptions`)
    ``locale``   "us" / "es" / "jp" or a list of them; None = all. Filters products
                 and examples on ``product_locale``.
    ``version``  "small" (rows with ``small_version == 1``, the reduced task-1 set),
                 "large" (``large_version == 1``) or None (every row).
    ``split``    "train" / "test" or None; filters examples. The query record
                 carries its ``split``.
    ``only_judged``  keep only products judged by the selected examples (default False:
                 the whole catalogue of the selected locales).
    ``limit``    read at most this many product rows (judgments of products outside
                 them are then counted as skipped, not rejected).
    ``id_scheme``, ``grades``, ``products_file``, ``examples_file``: see above.

Rows removed by the filters are not read at all (they are not in the report).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Iterable, Iterator, Literal

from pydantic import Field, StrictInt, field_validator

from ... import schema as S
from ...errors import FusionrankError, RowError, SchemaError
from ..readers import probe_columns
from .base import ADAPTERS, Adapter, LimitedOptions, Record

#: Default ESCI label -> grade map (E exact, S substitute, C complement, I irrelevant).
ESCI_GRADES: dict[str, int] = {"E": 3, "S": 2, "C": 1, "I": 0}

PRODUCTS_FILE = "shopping_queries_dataset_products.parquet"
EXAMPLES_FILE = "shopping_queries_dataset_examples.parquet"

# canonical field -> accepted source names (official first, then Vespa feed names)
_ALIASES: dict[str, tuple[str, ...]] = {
    "pid": ("product_id", "id"),
    S.TITLE: ("product_title", "title"),
    S.DESCRIPTION: ("product_description", "description"),
    S.BULLET_POINTS: ("product_bullet_point", "bullets", "bullet_points"),
    S.BRAND: ("product_brand", "brand"),
    S.COLOR: ("product_color", "color"),
    "locale": ("product_locale", "locale"),
}


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _id_text(v: Any) -> Any:
    """Ids as text: ``535`` and ``535.0`` -> ``"535"``; missing -> None; other types unchanged.

    Text is kept exactly as given (never stripped): validation refuses an id with
    leading or trailing whitespace rather than change it."""
    if _missing(v):
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, (int, str)):
        return str(v)
    return v


def _flag(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "1.0", "true", "t", "yes")
    return not _missing(v) and bool(v)


def _get(rec: dict, key: str) -> Any:
    for name in _ALIASES[key]:
        if name in rec and not _missing(rec[name]):
            return rec[name]
    return None


def _bullets(v: Any) -> Any:
    if isinstance(v, str):
        return [line.strip() for line in v.splitlines() if line.strip()]
    return v


class EsciOptions(LimitedOptions):
    locale: str | list[str] | None = Field(
        None, description='"us", "es", "jp" or a list of them (null = all); filters products and examples on product_locale')
    version: Literal["small", "large"] | None = Field(
        None, description="only examples with small_version == 1 (the reduced task-1 set) or large_version == 1; null = all")
    split: Literal["train", "test"] | None = Field(None, description="only examples of this split; null = all")
    only_judged: bool = Field(False, strict=True,
                              description="keep only products judged by the selected examples (else the whole catalogue of the selected locales)")
    id_scheme: Literal["locale", "plain"] = Field(
        "locale", description="product ids {locale}:{asin} (unique across locales) or the plain ASIN (use with a single locale)")
    grades: dict[str, Annotated[StrictInt, Field(ge=0)]] = Field(
        default_factory=lambda: dict(ESCI_GRADES), min_length=1,
        description="esci_label -> grade (integers >= 0; labels matched case-insensitively)")
    products_file: Path | None = Field(None, description="products file (absolute or relative to the source); default: searched for")
    examples_file: Path | None = Field(None, description="examples file (absolute or relative to the source); default: searched for")

    @field_validator("locale", mode="after")
    @classmethod
    def _lower_locales(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and not v:
            raise ValueError("give at least one locale, or null for all")
        return v.strip().lower() if isinstance(v, str) else [x.strip().lower() for x in v] if v is not None else None

    @field_validator("split", mode="before")
    @classmethod
    def _lower_split(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("products_file", "examples_file", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v  # as before: "" means "search for it"


@ADAPTERS.register("esci")
class EsciAdapter(Adapter):
    name = "esci"
    Options = EsciOptions
    options: EsciOptions

    def __init__(self, root: str | Path, options: EsciOptions | dict[str, Any] | None = None, /, **kwargs: Any):
        super().__init__(root, options, **kwargs)
        o = self.options
        loc = o.locale
        self.locales: set[str] | None = None if loc is None else ({loc} if isinstance(loc, str) else set(loc))
        self.version = o.version
        self.split = o.split
        self.id_scheme = o.id_scheme
        self.grades = {str(k).strip().upper(): int(g) for k, g in o.grades.items()}
        self.only_judged = o.only_judged
        self.limit = o.limit

    # files -------------------------------------------------------------------
    def _resolve(self, p: str | Path) -> Path:
        p = Path(p)
        return p if p.is_absolute() else self.root / p

    def _dirs(self) -> list[Path]:
        if self.root.is_file():
            return [self.root.parent]
        if not self.root.is_dir():
            raise FusionrankError(f"{self.root}: ESCI folder not found")
        return [self.root] + sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))

    def _find(self, patterns: Iterable[str]) -> Path | None:
        dirs = self._dirs()
        for pat in patterns:
            for d in dirs:
                hits = sorted(p for p in d.glob(pat) if p.is_file())
                if hits:
                    return hits[0]
        return None

    def products_path(self) -> Path:
        opt = self.options.products_file
        if opt:
            p = self._resolve(opt)
            if not p.exists():
                raise FusionrankError(f"{p}: ESCI products file not found")
            return p
        pats = (PRODUCTS_FILE, "*products*.parquet", "*products*.jsonl", "*products*.jsonl.gz", "*products*.ndjson")
        p = self._find(pats)
        if p is None:
            raise FusionrankError(f"{self.root}: no ESCI products file found (looked for {', '.join(pats)} here and "
                                  "one folder below); pass products_file=")
        return p

    def examples_path(self) -> Path | None:
        opt = self.options.examples_file
        if opt:
            p = self._resolve(opt)
            if not p.exists():
                raise FusionrankError(f"{p}: ESCI examples file not found")
            return p
        return self._find((EXAMPLES_FILE, "*examples*.parquet", "test-sample.parquet"))

    # helpers -----------------------------------------------------------------
    def _locale_ok(self, loc: Any) -> bool:
        return self.locales is None or (isinstance(loc, str) and loc.strip().lower() in self.locales)

    def _example_ok(self, rec: dict) -> bool:
        if not self._locale_ok(rec.get("product_locale")):
            return False
        if self.version is not None and not _flag(rec.get(f"{self.version}_version")):
            return False
        if self.split is not None and str(rec.get("split") or "").strip().lower() != self.split:
            return False
        return True

    def _product_id(self, raw: Any, locale: Any, file: str, row: int, locale_field: str) -> Any:
        """Catalogue id of ``raw`` (an ASIN) in ``locale``; raises RowError when it cannot be built."""
        raw = _id_text(raw)
        if raw is None or self.id_scheme == "plain":
            return raw  # a missing id is reported by validation
        if not isinstance(raw, str):
            raise RowError(file, row, S.PRODUCT_ID, f"expected text, got {type(raw).__name__}")
        if _missing(locale) or not isinstance(locale, str):
            raise RowError(file, row, locale_field, "missing locale, needed for the product id (locale:product_id); "
                                                    "pass locale= or id_scheme='plain'")
        return f"{locale.strip().lower()}:{raw}"

    def _examples(self) -> Iterator[tuple[str, int, dict | RowError]]:
        path = self.examples_path()
        if path is None:
            return
        need = [S.QUERY_ID, S.QUERY, "product_id", "esci_label"]
        if self.id_scheme == "locale" or self.locales is not None:
            need.append("product_locale")
        if self.version is not None:
            need.append(f"{self.version}_version")
        if self.split is not None:
            need.append("split")
        self.require_columns(path, need, "expected the ESCI examples layout")
        for row, rec in self.rows(path):
            if isinstance(rec, RowError) or self._example_ok(rec):
                yield str(path), row, rec

    def _judged(self) -> set[str]:
        out = set()
        for file, row, rec in self._examples():
            if isinstance(rec, RowError):
                continue
            try:
                pid = self._product_id(rec.get("product_id"), rec.get("product_locale"), file, row, "product_locale")
            except RowError:
                continue
            if isinstance(pid, str):
                out.add(pid)
        return out

    # adapter API -------------------------------------------------------------
    def products(self) -> Iterator[Record]:
        path = self.products_path()
        cols = probe_columns(path)
        feed = cols is not None and ("put" in cols or "fields" in cols)
        if cols is not None and not feed:
            need = ["pid", S.TITLE] + (["locale"] if self.id_scheme == "locale" and len(self.locales or ()) != 1 else [])
            missing = [_ALIASES[k][0] for k in need if not any(a in cols for a in _ALIASES[k])]
            if missing:
                raise SchemaError(str(path), missing, cols, "expected the ESCI products layout (or Vespa feed field names)")
        judged = self._judged() if self.only_judged else None
        default_locale = next(iter(self.locales)) if self.locales is not None and len(self.locales) == 1 else None
        file = str(path)
        for row, rec in self.rows(path):
            if self.limit is not None and row >= self.limit:
                break
            if isinstance(rec, RowError):
                yield file, row, rec
                continue
            fields = rec
            if feed:
                if "put" not in rec:
                    op = next((k for k in ("update", "remove") if k in rec), None)
                    yield file, row, RowError(file, row, None, f"unsupported Vespa feed operation {op!r}; only 'put' is read"
                                              if op else "expected a Vespa feed 'put' operation")
                    continue
                fields = rec.get("fields")
                if not isinstance(fields, dict):
                    yield file, row, RowError(file, row, "fields", "expected an object of product fields")
                    continue
            raw = _get(fields, "pid")
            if raw is None and feed and isinstance(rec.get("put"), str) and "::" in rec["put"]:
                raw = rec["put"].rsplit("::", 1)[1] or None
            loc = _get(fields, "locale")
            loc = loc.strip().lower() if isinstance(loc, str) else default_locale
            if loc is not None and not self._locale_ok(loc):
                continue
            try:
                pid = self._product_id(raw, loc, file, row, "product_locale")
            except RowError as e:
                yield file, row, e
                continue
            if judged is not None and pid not in judged:
                continue
            attrs = {}
            if isinstance(_id_text(raw), str):
                attrs["asin"] = _id_text(raw)
            if loc:
                attrs["locale"] = loc
            yield file, row, {
                S.PRODUCT_ID: pid,
                S.TITLE: _get(fields, S.TITLE),
                S.DESCRIPTION: _get(fields, S.DESCRIPTION),
                S.BULLET_POINTS: _bullets(_get(fields, S.BULLET_POINTS)),
                S.BRAND: _get(fields, S.BRAND),
                S.COLOR: _get(fields, S.COLOR),
                S.ATTRIBUTES: attrs,
            }

    def queries(self) -> Iterator[Record]:
        seen: dict[Any, tuple[Any, Any]] = {}
        for file, row, rec in self._examples():
            if isinstance(rec, RowError):
                yield file, row, rec
                continue
            qid, q, split = _id_text(rec.get(S.QUERY_ID)), rec.get(S.QUERY), rec.get("split")
            key = qid if isinstance(qid, str) else None
            if key is not None and seen.get(key) == (q, split):
                continue  # the same query repeats on every example row
            if key is not None and key not in seen:
                seen[key] = (q, split)
            out = {S.QUERY_ID: qid, S.QUERY: q}
            if not _missing(split):
                out["split"] = str(split).strip()
            yield file, row, out

    def qrels(self) -> Iterator[Record]:
        valid = ", ".join(self.grades)
        for file, row, rec in self._examples():
            if isinstance(rec, RowError):
                yield file, row, rec
                continue
            label = rec.get("esci_label")
            grade = self.grades.get(label.strip().upper()) if isinstance(label, str) else None
            if grade is None:
                yield file, row, RowError(file, row, "esci_label", f"invalid esci_label {label!r}; expected one of {valid}")
                continue
            try:
                pid = self._product_id(rec.get("product_id"), rec.get("product_locale"), file, row, "product_locale")
            except RowError as e:
                yield file, row, e
                continue
            yield file, row, {S.QUERY_ID: _id_text(rec.get(S.QUERY_ID)), S.PRODUCT_ID: pid, S.GRADE: grade}
