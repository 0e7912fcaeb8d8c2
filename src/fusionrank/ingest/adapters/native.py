"""fusionrank's own format: a products file (Parquet, CSV/TSV or JSONL) with the
canonical column names of :mod:`fusionrank.schema`, and optional
``queries.tsv`` / ``qrels.tsv`` beside it.

``root`` may be the products file itself or a folder holding ``products.*``.
Relative image/audio paths are resolved against the products file's folder.

Options (:class:`NativeOptions`): ``limit`` (read at most this many product rows).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ... import schema as S
from ...errors import FusionrankError, RowError
from ..media import is_url
from .base import ADAPTERS, Adapter, LimitedOptions, Record

_PRODUCT_NAMES = ("products.parquet", "products.parquet.gz", "products.jsonl", "products.jsonl.gz", "products.csv", "products.csv.gz", "products.tsv", "products.tsv.gz")


class NativeOptions(LimitedOptions):
    """The native layout's options: only ``limit``."""


@ADAPTERS.register("native")
class NativeAdapter(Adapter):
    name = "native"
    Options = NativeOptions
    options: NativeOptions

    def _products_path(self) -> Path:
        if self.root.is_file():
            return self.root
        for n in _PRODUCT_NAMES:
            if (self.root / n).exists():
                return self.root / n
        raise FusionrankError(f"{self.root}: no products file found; expected one of {', '.join(_PRODUCT_NAMES)}")

    def products(self) -> Iterator[Record]:
        path = self._products_path()
        self.require_columns(path, list(S.REQUIRED_PRODUCT_COLUMNS))
        base = path.parent
        limit = self.options.limit
        for row, rec in self.rows(path):
            if limit is not None and row >= limit:
                break
            if not isinstance(rec, RowError):
                for fld in (S.IMAGE, S.AUDIO):
                    v = rec.get(fld)
                    if isinstance(v, str) and v.strip() and not is_url(v) and not Path(v).is_absolute():
                        rec[fld] = str(base / v)
            yield str(path), row, rec

    def _side(self, stem: str, cols: list[str]) -> Iterator[Record]:
        base = self.root if self.root.is_dir() else self.root.parent
        for n in (f"{stem}.tsv", f"{stem}.tsv.gz", f"{stem}.csv", f"{stem}.jsonl"):
            p = base / n
            if p.exists():
                self.require_columns(p, cols)
                for row, rec in self.rows(p):
                    yield str(p), row, rec
                return

    def queries(self) -> Iterator[Record]:
        return self._side("queries", list(S.QUERY_COLUMNS))

    def qrels(self) -> Iterator[Record]:
        return self._side("qrels", list(S.QREL_COLUMNS))
