"""fashion44k: ``products.parquet`` + ``images/`` + ``audio/`` + queries/qrels TSVs.

``master_category`` becomes ``category``; ``title_sparse`` is kept as an
attribute (select it with ``with_title_field(products, "title_sparse")``).
Image and audio paths are made absolute against the dataset folder.

Options (:class:`Fashion44kOptions`): ``limit`` (read at most this many product
rows) and ``splits`` (which ``queries_<split>.tsv`` / ``qrels_<split>.tsv[.gz]``
pairs to read; a split without files is skipped).
"""
from __future__ import annotations

from typing import Iterator

from pydantic import Field

from ... import schema as S
from ...errors import RowError
from .base import ADAPTERS, Adapter, LimitedOptions, Record


class Fashion44kOptions(LimitedOptions):
    splits: list[str] = Field(default_factory=lambda: ["train", "dev"], min_length=1,
                              description="query splits to read: queries_{split}.tsv and qrels_{split}.tsv[.gz] (a split without files is skipped)")


@ADAPTERS.register("fashion44k")
class Fashion44kAdapter(Adapter):
    name = "fashion44k"
    Options = Fashion44kOptions
    options: Fashion44kOptions

    def products(self) -> Iterator[Record]:
        path = self.root / "products.parquet"
        self.require_columns(path, ["product_id", "title"])
        limit = self.options.limit
        for row, rec in self.rows(path):
            if limit is not None and row >= limit:
                break
            if isinstance(rec, RowError):
                yield str(path), row, rec
                continue
            out = {
                S.PRODUCT_ID: rec.get("product_id"),
                S.TITLE: rec.get("title"),
                S.CATEGORY: rec.get("master_category"),
                S.ATTRIBUTES: {"title_sparse": rec.get("title_sparse")} if rec.get("title_sparse") else {},
                S.IMAGE: self._media(rec.get("image")),
                S.AUDIO: self._media(rec.get("audio")),
            }
            yield str(path), row, out

    def _media(self, v):
        """A media path made absolute against the dataset folder; anything else is left for validation to refuse."""
        if isinstance(v, str):
            return str(self.root / v) if v.strip() else None
        return v  # None, or a value of the wrong type: validation refuses the row, naming the field

    def queries(self) -> Iterator[Record]:
        for split in self.options.splits:
            path = self.root / f"queries_{split}.tsv"
            if not path.exists():
                continue
            self.require_columns(path, [S.QUERY_ID, S.QUERY])
            for row, rec in self.rows(path, "tsv"):
                if not isinstance(rec, RowError):
                    rec = {**rec, "split": split}
                yield str(path), row, rec

    def qrels(self) -> Iterator[Record]:
        for split in self.options.splits:
            for name in (f"qrels_{split}.tsv", f"qrels_{split}.tsv.gz"):
                path = self.root / name
                if path.exists():
                    self.require_columns(path, list(S.QREL_COLUMNS))
                    for row, rec in self.rows(path, "tsv"):
                        yield str(path), row, rec
