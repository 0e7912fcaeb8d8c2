"""Schema validation: every error names file, row and field."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from fusionrank import schema as S
from fusionrank.errors import RowError, SchemaError
from fusionrank.ingest import ingest
from fusionrank.ingest.readers import iter_records
from fusionrank.ingest.validate import validate_product


def _raises(rec, field):
    with pytest.raises(RowError) as ei:
        validate_product(rec, "products.jsonl", 7)
    e = ei.value
    assert (e.file, e.row, e.field) == ("products.jsonl", 7, field)
    assert e.as_dict() == {"file": "products.jsonl", "row": 7, "field": field, "reason": e.reason}
    assert f"products.jsonl, row 7, field '{field}'" in str(e)
    return e


def test_validate_product_errors():
    assert "missing title" in _raises({"product_id": "a"}, "title").reason
    assert "missing title" in _raises({"product_id": "a", "title": "  <br> "}, "title").reason
    assert "expected text, got dict" in _raises({"product_id": "a", "title": {"en": "x"}}, "title").reason
    assert "too long" in _raises({"product_id": "a", "title": "t", "description": "x" * 50_001}, "description").reason
    assert "missing product id" in _raises({"title": "t"}, "product_id").reason
    assert "expected a list" in _raises({"product_id": "a", "title": "t", "reviews": {"a": 1}}, "reviews").reason
    assert "expected a path" in _raises({"product_id": "a", "title": "t", "image": 3}, "image").reason
    assert "JSON object" in _raises({"product_id": "a", "title": "t", "attributes": "not json"}, "attributes").reason


def test_validate_product_fixes():
    p, fixes = validate_product({"product_id": 12.0, "title": " <b>Red</b>&nbsp;shirt ", "bullet_points": "a\n\nb",
                                 "size": "M", "image": " x.jpg "}, "f", 0)
    assert p["product_id"] == "12" and p["title"] == "Red shirt"
    assert p["bullet_points"] == ["a", "b"] and p["attributes"] == {"size": "M"} and p["image"] == "x.jpg"
    assert fixes
    p, _ = validate_product({"product_id": "a", "title": "t", "bullet_points": "[Fits] well\nsoft"}, "f", 0)
    assert p["bullet_points"] == ["[Fits] well", "soft"]
    p, _ = validate_product({"product_id": "a", "title": "t", "bullet_points": '["x", "y"]'}, "f", 0)
    assert p["bullet_points"] == ["x", "y"]


def _write_jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def test_ingest_rejects_name_file_row_field(tmp_path, read_rejects, assert_balanced):
    src = _write_jsonl(tmp_path / "products.jsonl", [
        {"product_id": "p1", "title": "Red shirt", "description": "<p>soft<br>cotton</p>"},
        {"product_id": "p2"},                                   # 1 missing title
        {"product_id": "p3", "title": {"en": "dict title"}},    # 2 wrong type
        {"product_id": "p4", "title": "Long", "description": "x" * (S.MAX_FIELD_CHARS["description"] + 1)},  # 3
        {"product_id": "p1", "title": "Blue shirt"},            # 4 duplicate id, different content
        {"product_id": "p1", "title": "Red  shirt", "description": "soft cotton"},  # 5 exact duplicate once cleaned
        '{"product_id": "p5", "title": ',                       # 6 invalid JSON
        "[1, 2]",                                               # 7 not an object
        {"title": "no id"},                                     # 8 missing id
        {"product_id": "p6", "title": "Fine"},
    ])
    out = tmp_path / "out"
    cat = ingest(src, out, adapter="native")
    assert list(cat.products["product_id"]) == ["p1", "p6"]
    assert cat.products.set_index("product_id").loc["p1", "description"] == "soft cotton"
    rep = cat.report["products"]
    assert_balanced(cat.report)
    assert (rep["read"], rep["kept"], rep["rejected"], rep["merged_duplicates"]) == (10, 2, 7, 1)
    assert rep["fixed"] == 1
    rej = {r["row"]: r for r in read_rejects(out)}
    assert set(rej) == {1, 2, 3, 4, 6, 7, 8}
    assert all(r["file"] == str(src) and r["kind"] == "product" for r in rej.values())
    assert rej[1]["field"] == "title" and rej[1]["reason"] == "missing title"
    assert rej[1]["record"] == {"product_id": "p2"}
    assert rej[2]["field"] == "title" and "dict" in rej[2]["reason"]
    assert rej[3]["field"] == "description" and "too long" in rej[3]["reason"]
    assert rej[4]["field"] == "product_id"
    assert rej[4]["reason"] == f"duplicate product id 'p1' with different content (kept {src}, row 0)"
    assert rej[6]["field"] is None and rej[6]["reason"].startswith("invalid JSON") and rej[6]["record"] is None
    assert "expected a JSON object" in rej[7]["reason"]
    assert rej[8]["field"] == "product_id" and rej[8]["reason"] == "missing product id"
    # the report groups reasons with the row's own values elided
    assert rep["reject_reasons"]["title: missing title"] == 1
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["products"] == rep


def test_invalid_json_line_is_a_row_error(tmp_path):
    src = _write_jsonl(tmp_path / "p.jsonl", [{"a": 1}, "{oops", "", {"a": 2}])
    recs = list(iter_records(src))
    assert [r for r, _ in recs] == [0, 1, 2]
    e = recs[1][1]
    assert isinstance(e, RowError) and (e.file, e.row, e.field) == (str(src), 1, None)
    assert recs[2][1] == {"a": 2}


def test_missing_required_column(tmp_path):
    pd.DataFrame({"product_id": ["a"], "name": ["x"], "brand": ["b"]}).to_parquet(tmp_path / "products.parquet")
    with pytest.raises(SchemaError) as ei:
        ingest(tmp_path, tmp_path / "out", adapter="native")
    e = ei.value
    assert e.file == str(tmp_path / "products.parquet")
    assert e.missing == ["title"] and e.found == ["product_id", "name", "brand"]
    assert "missing required column(s) ['title']" in str(e)
    (tmp_path / "products.parquet").unlink()
    (tmp_path / "products.csv").write_text("id,title\n1,x\n")
    with pytest.raises(SchemaError) as ei:
        ingest(tmp_path, tmp_path / "out2", adapter="native")
    assert ei.value.missing == ["product_id"] and ei.value.found == ["id", "title"]


def test_queries_and_qrels_validation(tmp_path, read_rejects, assert_balanced):
    _write_jsonl(tmp_path / "products.jsonl", [{"product_id": "a", "title": "A"}, {"product_id": "b", "title": "B"}])
    (tmp_path / "queries.tsv").write_text("query_id\tquery\nq1\tred  shirt\nq2\t\nq1\tred shirt\nq1\tblue\n\tx\nq3\tgreen\n")
    (tmp_path / "qrels.tsv").write_text("query_id\tproduct_id\tgrade\nq1\ta\t2\nq1\ta\t2\nq1\ta\t1\nq1\tb\t-1\n"
                                        "q1\tb\t1.5\nq9\ta\t1\nq3\tz\t1\nq3\tb\tx\nq3\tb\t0\n")
    out = tmp_path / "out"
    cat = ingest(tmp_path, out, adapter="native")
    assert_balanced(cat.report)
    assert cat.queries.to_dict("records") == [{"query_id": "q1", "query": "red shirt"}, {"query_id": "q3", "query": "green"}]
    assert cat.report["queries"]["merged_duplicates"] == 1 and cat.report["queries"]["rejected"] == 3
    assert cat.qrels.to_dict("records") == [{"query_id": "q1", "product_id": "a", "grade": 2},
                                            {"query_id": "q3", "product_id": "b", "grade": 0}]
    rej = {(r["kind"], r["row"]): r for r in read_rejects(out)}
    assert rej[("query", 1)]["field"] == "query"
    assert rej[("query", 3)]["field"] == "query_id" and "different query text" in rej[("query", 3)]["reason"]
    assert rej[("query", 4)]["field"] == "query_id"
    assert rej[("qrel", 2)]["field"] == "grade" and "conflicting grade" in rej[("qrel", 2)]["reason"]
    assert rej[("qrel", 3)]["field"] == "grade" and rej[("qrel", 4)]["field"] == "grade"
    assert rej[("qrel", 5)]["field"] == "query_id" and "unknown query id 'q9'" in rej[("qrel", 5)]["reason"]
    assert rej[("qrel", 6)]["field"] == "product_id"
    assert rej[("qrel", 7)]["field"] == "grade"
    assert all(r["file"].endswith("qrels.tsv") for k, r in rej.items() if k[0] == "qrel")
    assert cat.report["qrels"]["merged_duplicates"] == 1


# --- ids are stored exactly as given, or refused ------------------------------------

@pytest.mark.parametrize("pid", ["ＡＢＣ１", "a&amp;b", "&lt;x&gt;", "a  b", "e\u0301", "ﬁ-1", "x\u00a0y", "ü-9", "<b>p</b>"])
def test_product_id_is_kept_exactly(pid):
    """No NFKC, entity decoding, tag stripping or whitespace collapsing of ids."""
    p, _ = validate_product({"product_id": pid, "title": "t"}, "f", 0)
    assert p["product_id"] == pid


@pytest.mark.parametrize("pid, why", [
    (" a", "leading or trailing whitespace"),
    ("a ", "leading or trailing whitespace"),
    ("a\n", "leading or trailing whitespace"),
    ("\u3000a", "leading or trailing whitespace"),
    ("a\x00b", "control character (U+0000)"),
    ("a\x1bb", "control character (U+001B)"),
    ("a\u200bb", "invisible format character (U+200B)"),
    ("a\u202eb", "invisible format character (U+202E)"),
    ("a\ud800", "lone surrogate (U+D800)"),
    ("a\ufffdb", "U+FFFD"),
    ("x" * 201, "too long"),
])
def test_product_id_refused_with_reason(pid, why):
    e = _raises({"product_id": pid, "title": "t"}, "product_id")
    assert why in e.reason, e.reason


def test_product_id_types():
    assert validate_product({"product_id": 7, "title": "t"}, "f", 0)[0]["product_id"] == "7"
    assert validate_product({"product_id": 7.0, "title": "t"}, "f", 0)[0]["product_id"] == "7"
    assert "got bool" in _raises({"product_id": True, "title": "t"}, "product_id").reason
    assert "inf" in _raises({"product_id": float("inf"), "title": "t"}, "product_id").reason
    assert "missing product id" == _raises({"product_id": "   ", "title": "t"}, "product_id").reason
    assert "too long" in _raises({"product_id": 10 ** 5000, "title": "t"}, "product_id").reason

