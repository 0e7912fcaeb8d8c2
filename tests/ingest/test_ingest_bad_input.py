"""Damaged files never end a batch: each fault is one counted reject naming file, row or byte offset, and
reason; rows read before it are kept, other files and tables go on, report.json and rejects.jsonl are written."""
from __future__ import annotations

import csv
import gzip
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fusionrank.ingest import ingest
from fusionrank.ingest import readers
from fusionrank.ingest.readers import collect_notes, iter_records, read_columns

ROWS = [{"product_id": f"p{i}", "title": f"Title {i}", "description": "word " * 20} for i in range(200)]


def _write_jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def _side_files(d):
    (d / "queries.tsv").write_text("query_id\tquery\nq1\ttitle one\n")
    (d / "qrels.tsv").write_text("query_id\tproduct_id\tgrade\nq1\tp1\t1\n")


def _run(d, read_rejects, assert_balanced):
    out = d / "out"
    cat = ingest(d, out, adapter="native", check_media=False)
    assert (out / "report.json").is_file() and (out / "rejects.jsonl").is_file()
    rep = json.loads((out / "report.json").read_text())
    assert_balanced(rep)
    assert rep["queries"]["kept"] == 1                      # the rest of the batch went on
    return cat, rep, read_rejects(out)


def _product_faults(rejects):
    return [r for r in rejects if r["kind"] == "product" and r["field"] is None]


def test_truncated_gzip_keeps_the_rows_before(tmp_path, read_rejects, assert_balanced):
    pd.DataFrame(ROWS).to_csv(tmp_path / "products.csv.gz", index=False, compression="gzip")
    data = (tmp_path / "products.csv.gz").read_bytes()
    (tmp_path / "products.csv.gz").write_bytes(data[: len(data) // 2])
    _side_files(tmp_path)
    cat, rep, rejects = _run(tmp_path, read_rejects, assert_balanced)
    n = len(cat.products)
    assert 20 < n < 200 and list(cat.products["product_id"]) == [f"p{i}" for i in range(n)]
    (fault,) = _product_faults(rejects)
    assert fault["row"] == n and fault["file"].endswith("products.csv.gz")
    assert "gzip stream truncated" in fault["reason"] and "byte offset" in fault["reason"]
    assert rep["products"]["read"] == n + 1 and rep["products"]["rejected"] == 1


@pytest.mark.parametrize("name", ["products.csv.gz", "products.jsonl.gz", "products.tsv.gz"])
def test_gz_that_is_not_gzip(tmp_path, name, read_rejects, assert_balanced):
    (tmp_path / name).write_text("product_id,title\np1,x\n")
    _side_files(tmp_path)
    cat, rep, rejects = _run(tmp_path, read_rejects, assert_balanced)
    assert len(cat.products) == 0
    (fault,) = _product_faults(rejects)
    assert fault["row"] == 0 and "not a gzip file" in fault["reason"] and "byte offset 0" in fault["reason"]
    assert cat.report["qrels"]["rejected"] == 1            # its judgment points at no product: counted, not lost


def test_corrupt_gzip_data(tmp_path):
    p = tmp_path / "products.jsonl.gz"
    raw = gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode())
    p.write_bytes(raw[:200] + bytes(b ^ 0x55 for b in raw[200:260]) + raw[260:])
    recs = list(iter_records(p))
    assert isinstance(recs[-1][1], readers.RowError) and "gzip" in recs[-1][1].reason
    assert all(isinstance(r, dict) for _, r in recs[:-1])


@pytest.mark.parametrize("damage", ["empty", "half", "footer", "header-only"])
def test_damaged_parquet(tmp_path, damage, read_rejects, assert_balanced):
    p = tmp_path / "products.parquet"
    pd.DataFrame(ROWS).to_parquet(p, index=False)
    data = p.read_bytes()
    p.write_bytes({"empty": b"", "half": data[: len(data) // 2], "footer": data[:-9], "header-only": data[:4]}[damage])
    _side_files(tmp_path)
    cat, rep, rejects = _run(tmp_path, read_rejects, assert_balanced)
    assert len(cat.products) == 0
    (fault,) = _product_faults(rejects)
    assert fault["row"] == 0 and ("Parquet" in fault["reason"])


def test_parquet_bad_row_group_loses_only_that_group(tmp_path):
    p = tmp_path / "products.parquet"
    table = pa.Table.from_pandas(pd.DataFrame(ROWS), preserve_index=False)
    pq.write_table(table, p, row_group_size=50, write_page_checksum=True, compression="NONE")
    meta = pq.ParquetFile(p).metadata
    col = meta.row_group(1).column(1)                      # the titles of rows 50..99
    start = col.data_page_offset
    data = bytearray(p.read_bytes())
    for i in range(start + 40, start + 60):
        data[i] ^= 0xFF
    p.write_bytes(bytes(data))
    recs = list(iter_records(p))
    faults = [(row, r) for row, r in recs if not isinstance(r, dict)]
    assert len(faults) == 1 and faults[0][0] == 50 and "row group 1" in faults[0][1].reason
    kept = [(row, r["product_id"]) for row, r in recs if isinstance(r, dict)]
    assert kept == [(i, f"p{i}") for i in list(range(50)) + list(range(100, 200))]  # rows keep their numbers


def test_csv_field_over_the_csv_module_default(tmp_path, read_rejects, assert_balanced):
    rows = [dict(r) for r in ROWS[:5]]
    rows[1]["notes"] = "n" * 200_000          # an attribute, over csv's 131,072 default: read and kept
    rows[2]["description"] = "d" * 200_000    # over the description limit: rejected by validation, with the reason
    pd.DataFrame(rows).to_csv(tmp_path / "products.csv", index=False)
    _side_files(tmp_path)
    cat, rep, rejects = _run(tmp_path, read_rejects, assert_balanced)
    p = cat.products.set_index("product_id")
    assert len(p.loc["p1", "attributes"]["notes"]) == 200_000 and "p2" not in p.index and len(p) == 4
    assert [r["reason"] for r in rejects if r["row"] == 2] == ["too long: 200000 characters > 50000"]


def test_csv_field_over_the_reader_limit_stops_that_file(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_CSV_FIELD_CHARS", 1000)
    old = csv.field_size_limit(1000)
    try:
        p = tmp_path / "products.csv"
        p.write_text('product_id,title\np0,ok\np1,"' + "x" * 5000 + '\np2,never closed\n')
        recs = list(iter_records(p))
    finally:
        csv.field_size_limit(old)
    assert recs[0] == (0, {"product_id": "p0", "title": "ok"})
    assert len(recs) == 2 and recs[1][0] == 1 and "longer than 1000 characters" in recs[1][1].reason
    assert "byte offset 23" in recs[1][1].reason


def test_jsonl_first_line_lacking_a_column_is_one_reject(tmp_path, read_rejects, assert_balanced):
    lines = ['{"product_id": "x"}'] + [json.dumps(r) for r in ROWS[:5]]
    (tmp_path / "products.jsonl").write_text("\n".join(lines) + "\n")
    _side_files(tmp_path)
    assert set(read_columns(tmp_path / "products.jsonl")) == {"product_id", "title", "description"}
    cat, rep, rejects = _run(tmp_path, read_rejects, assert_balanced)
    assert len(cat.products) == 5
    assert [(r["row"], r["field"], r["reason"]) for r in rejects] == [(0, "title", "missing title")]


def test_invalid_utf8_is_replaced_counted_and_listed(tmp_path, read_rejects, assert_balanced):
    (tmp_path / "products.csv").write_bytes("product_id,title\np0,fine\np1,Caf\xe9 cr\xe8me\np2,ok\n".encode("latin-1"))
    _side_files(tmp_path)
    cat, rep, rejects = _run(tmp_path, read_rejects, assert_balanced)
    p = cat.products.set_index("product_id")
    assert p.loc["p1", "title"] == "Caf\ufffd cr\ufffdme" and len(p) == 3
    assert rep["products"]["utf8_replaced_rows"] == 1
    assert rep["products"]["fix_reasons"]["row: invalid UTF-8 replaced by U+FFFD"] == 1
    (enc,) = [r for r in rejects if r["kind"] == "encoding"]
    assert enc["row"] == 1 and enc["file"].endswith("products.csv")
    assert enc["reason"] == "2 invalid UTF-8 byte(s), the first at byte offset 31, replaced by U+FFFD"


def test_invalid_utf8_in_a_multiline_csv_row_and_in_jsonl(tmp_path):
    p = tmp_path / "a.csv"
    p.write_bytes(b'id,text\n1,"two\nlines \xff"\n2,x\n')
    with collect_notes() as notes:
        recs = list(iter_records(p))
    assert [r for r, _ in recs] == [0, 1] and [(n.row, n.offset) for n in notes] == [(0, 21)]
    p = tmp_path / "b.jsonl"
    p.write_bytes(b'{"a": "x"}\n\n{"a": "\xc3("}\n')
    with collect_notes() as notes:
        recs = list(iter_records(p))
    assert recs[1][1] == {"a": "\ufffd("} and [(n.row, n.offset) for n in notes] == [(1, 19)]


def test_byte_order_marks(tmp_path, read_rejects, assert_balanced):
    (tmp_path / "products.csv").write_text("product_id,title\np1,x\n", encoding="utf-8-sig")
    assert read_columns(tmp_path / "products.csv") == ["product_id", "title"]
    (tmp_path / "u16.csv").write_text("product_id,title\np1,x\n", encoding="utf-16")
    ((_, e),) = list(iter_records(tmp_path / "u16.csv"))
    assert "UTF-16 byte-order mark" in e.reason and e.row == 0


def test_rows_that_do_not_parse(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"a": 1, "a": 2}\n{"a": ' + "1" * 5000 + '}\n' + "[" * 100_000 + "\n{\"a\": 3}\n")
    recs = list(iter_records(p))
    assert [r for r, _ in recs] == [0, 1, 2, 3] and recs[3][1] == {"a": 3}
    assert "duplicate key 'a'" in recs[0][1].reason and "4300 digits" in recs[1][1].reason
    assert "RecursionError" in recs[2][1].reason
    p = tmp_path / "p.csv"
    p.write_text("a,b\n1,2\n3\n4,5,6\n")
    recs = list(iter_records(p))
    assert recs[0][1] == {"a": "1", "b": "2"} and "1 fewer cell" in recs[1][1].reason and "1 more cell" in recs[2][1].reason
    p = tmp_path / "dup.csv"
    p.write_text("a,a\n1,2\n")
    ((_, e),) = list(iter_records(p))
    assert "duplicate column name(s) ['a']" in e.reason
    p.write_text("a,b,,\n1,2,,\n3,4,x,\n5,6,x,y\n")  # trailing delimiters: unnamed columns are fine while empty
    recs = list(iter_records(p))
    assert recs[0][1] == {"a": "1", "b": "2", "": ""} and recs[1][1] == {"a": "3", "b": "4", "": "x"}
    assert "values in 2 unnamed columns" in recs[2][1].reason


def test_lone_surrogates_from_json_escapes(tmp_path, read_rejects, assert_balanced):
    (tmp_path / "products.jsonl").write_text(
        '{"product_id": "a\\ud800", "title": "x"}\n{"product_id": "b", "title": "t\\udc00", "k\\ud800": 1}\n'
        '{"product_id": "c", "title": "fine"}\n')
    _side_files(tmp_path)
    cat, rep, rejects = _run(tmp_path, read_rejects, assert_balanced)
    assert list(cat.products["product_id"]) == ["c"]
    assert "lone surrogate" in rejects[0]["reason"] and "not valid Unicode" in rejects[1]["reason"]


def test_schema_error_still_raised_and_reported(tmp_path):
    from fusionrank.errors import SchemaError

    (tmp_path / "products.csv").write_text("id,name\n1,x\n")
    with pytest.raises(SchemaError):
        ingest(tmp_path, tmp_path / "out", adapter="native")
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "missing required column(s)" in rep["error"]


def test_cli_ingest_of_a_truncated_gzip_prints_no_traceback(tmp_path):
    from typer.testing import CliRunner

    from fusionrank.cli import app

    pd.DataFrame(ROWS).to_csv(tmp_path / "products.csv.gz", index=False, compression="gzip")
    data = (tmp_path / "products.csv.gz").read_bytes()
    (tmp_path / "products.csv.gz").write_bytes(data[: len(data) // 3])
    r = CliRunner().invoke(app, ["ingest", str(tmp_path), "--out", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "Aborted" not in r.output
    rep = json.loads(r.stdout[r.stdout.index("{"):])
    assert rep["products"]["rejected"] == 1 and rep["products"]["kept"] > 0


def test_ids_in_queries_and_qrels_are_not_stripped(tmp_path, read_rejects, assert_balanced):
    _write_jsonl(tmp_path / "products.jsonl", [{"product_id": "a", "title": "A"}, {"product_id": " a", "title": "B"}])
    (tmp_path / "queries.tsv").write_text("query_id\tquery\nq1\tred\n q2\tblue\nq3\u200b\tgreen\n")
    (tmp_path / "qrels.tsv").write_text("query_id\tproduct_id\tgrade\nq1\ta\t1\nq1\t a\t2\nq1\ta \t2\n q2\ta\t1\n"
                                        "q1\ta\t1e300\n")
    out = tmp_path / "out"
    cat = ingest(tmp_path, out, adapter="native", check_media=False)
    assert_balanced(cat.report)
    assert list(cat.products["product_id"]) == ["a"]         # " a" is refused, not merged into "a"
    assert list(cat.queries["query_id"]) == ["q1"]
    assert cat.qrels.to_dict("records") == [{"query_id": "q1", "product_id": "a", "grade": 1}]
    rej = {(r["kind"], r["row"]): r for r in read_rejects(out)}
    assert "leading or trailing whitespace" in rej[("product", 1)]["reason"]
    assert "leading or trailing whitespace" in rej[("query", 1)]["reason"]
    assert "invisible format character" in rej[("query", 2)]["reason"]
    assert "leading or trailing whitespace" in rej[("qrel", 1)]["reason"] and rej[("qrel", 1)]["field"] == "product_id"
    assert "leading or trailing whitespace" in rej[("qrel", 2)]["reason"]
    assert rej[("qrel", 3)]["field"] == "query_id"
    assert rej[("qrel", 4)]["field"] == "grade" and "integer from 0 to" in rej[("qrel", 4)]["reason"]


def test_gzipped_parquet_and_unclosed_quote(tmp_path):
    p = tmp_path / "products.parquet.gz"
    p.write_bytes(gzip.compress(pq_bytes := _parquet_bytes(ROWS[:3])))
    assert [r for _, r in iter_records(p)] == ROWS[:3] and len(pq_bytes) > 0
    cat = ingest(tmp_path, tmp_path / "out", adapter="native", check_media=False)  # found by the native adapter
    assert len(cat.products) == 3
    c = tmp_path / "q.csv"
    c.write_text('product_id,title\np0,a\np1,"never closed\np2,b\np3,c\n')
    recs = list(iter_records(c))
    assert recs[0][1] == {"product_id": "p0", "title": "a"} and len(recs) == 2
    assert recs[1][1].reason == "unclosed quote: the row starting at byte offset 22 runs over 3 lines to the end of the file"
    c.write_text('product_id,title\np0,"two\nlines"\np1,b\n')
    assert [r for _, r in iter_records(c)] == [{"product_id": "p0", "title": "two\nlines"}, {"product_id": "p1", "title": "b"}]


def _parquet_bytes(rows):
    import io

    buf = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buf, index=False)
    return buf.getvalue()


def test_wrong_types_are_row_rejects_not_a_stopped_table(tmp_path, read_rejects):
    rows = [{"product_id": str(i), "title": f"Shirt {i}", "image": i if i == 2 else None} for i in range(5)]
    pd.DataFrame(rows).to_parquet(tmp_path / "products.parquet", index=False)
    (tmp_path / "queries_train.tsv").write_text("query_id\tquery\tsplit\nq1\tshirt\tx\n")
    cat = ingest(tmp_path, tmp_path / "out", adapter="fashion44k")
    assert list(cat.products["product_id"]) == ["0", "1", "3", "4"]
    (r,) = [x for x in read_rejects(tmp_path / "out") if x["kind"] == "product"]
    assert (r["row"], r["field"]) == (2, "image") and "expected a path" in r["reason"]
    (tmp_path / "q").mkdir()
    _write_jsonl(tmp_path / "q" / "products.jsonl", [{"product_id": "a", "title": "A"}])
    (tmp_path / "q" / "queries.jsonl").write_text('{"query_id": "q1", "query": "x", "split": "tr\\ud800"}\n'
                                                  '{"query_id": "q2", "query": "y", "split": "train"}\n')
    cat = ingest(tmp_path / "q", tmp_path / "q" / "out", adapter="native")
    assert cat.queries.to_dict("records") == [{"query_id": "q2", "query": "y", "split": "train"}]


def test_cli_ingest_to_an_unwritable_out_is_a_clear_error(tmp_path):
    from typer.testing import CliRunner

    from fusionrank.cli import app

    pd.DataFrame(ROWS[:3]).to_csv(tmp_path / "products.csv", index=False)
    (tmp_path / "out").write_text("a file, not a folder")
    r = CliRunner().invoke(app, ["ingest", str(tmp_path), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "cannot write the catalogue" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
