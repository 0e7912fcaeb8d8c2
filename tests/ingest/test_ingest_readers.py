"""Readers: every format (and its .gz) yields the same records."""
from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from fusionrank.errors import FusionrankError, RowError
from fusionrank.ingest.readers import detect_format, iter_records, read_columns

ROWS = [
    {"product_id": "1", "title": "Plain", "description": "simple"},
    {"product_id": "2", "title": 'Comma, "quoted" title', "description": "tab\tinside"},
    {"product_id": "3", "title": "Ünïcödé – ☃", "description": "two\nlines"},
]


def _write_all(d):
    df = pd.DataFrame(ROWS)
    paths = []
    df.to_parquet(d / "p.parquet", index=False)
    paths.append(d / "p.parquet")
    for name, sep in (("p.csv", ","), ("p.tsv", "\t")):
        df.to_csv(d / name, sep=sep, index=False)
        df.to_csv(d / (name + ".gz"), sep=sep, index=False, compression="gzip")
        paths += [d / name, d / (name + ".gz")]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS)
    (d / "p.jsonl").write_text(text, encoding="utf-8")
    with gzip.open(d / "p.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    paths += [d / "p.jsonl", d / "p.jsonl.gz"]
    return paths


def test_all_formats_same_records(tmp_path):
    paths = _write_all(tmp_path)
    assert len(paths) == 7
    for p in paths:
        recs = list(iter_records(p))
        assert [r for r, _ in recs] == [0, 1, 2], p
        assert [rec for _, rec in recs] == ROWS, p
        assert read_columns(p) == ["product_id", "title", "description"], p


def test_detect_format(tmp_path):
    assert detect_format("a.PARQUET") == "parquet" and detect_format("a.tsv.gz") == "tsv"
    assert detect_format("x/y.ndjson") == "jsonl" and detect_format("b.csv.gz") == "csv"
    with pytest.raises(FusionrankError, match="cannot tell the format"):
        detect_format("a.xlsx")
    with pytest.raises(FusionrankError, match="file not found"):
        list(iter_records(tmp_path / "absent.csv"))


def test_csv_delimiter_sniffed_and_extra_cells(tmp_path):
    p = tmp_path / "tabbed.csv"  # WANDS-style: tab-separated despite the name
    p.write_text("a\tb\n1\t2\n3\t4\t5\n6\t7\n")
    recs = list(iter_records(p))
    assert recs[0] == (0, {"a": "1", "b": "2"}) and recs[2] == (2, {"a": "6", "b": "7"})
    e = recs[1][1]
    assert isinstance(e, RowError) and e.row == 1 and e.file == str(p) and "more cell" in e.reason
    assert read_columns(p) == ["a", "b"]


def test_parquet_batches_keep_row_numbers(tmp_path):
    df = pd.DataFrame({"i": range(25)})
    df.to_parquet(tmp_path / "x.parquet", index=False, row_group_size=7)
    recs = list(iter_records(tmp_path / "x.parquet", batch_size=4))
    assert [r for r, _ in recs] == list(range(25)) and [x["i"] for _, x in recs] == list(range(25))
