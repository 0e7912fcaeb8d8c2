"""Property-based tests of every reader and adapter on hostile bytes.

Properties:

* no exception escapes a reader: every row comes out as a record or a counted
  :class:`RowError` naming the file, with increasing row numbers;
* rows before a fault are kept exactly (truncation at every byte of a small file);
* text in UTF-8 round-trips exactly; any other encoding is read, never raised;
* an adapter run on a damaged copy of its layout ends with a report, and for every
  table ``read == kept + rejected + merged + skipped``; every reject is listed in
  ``rejects.jsonl``; the only error allowed out is a :class:`SchemaError` when the
  damage hit the header (and then report.json names it).

Example counts are small: the whole of tests/ingest stays well under a minute.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusionrank.errors import RowError, SchemaError
from fusionrank.ingest import ingest
from fusionrank.ingest.readers import iter_records, probe_columns

FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))

TEXT_FORMATS = ["csv", "tsv", "jsonl", "csv.gz", "tsv.gz", "jsonl.gz"]
ALL_FORMATS = ["parquet", "parquet.gz"] + TEXT_FORMATS
ROWS = [
    {"product_id": "p0", "title": "Plain"},
    {"product_id": "p1", "title": 'Comma, "quoted"\nand two lines'},
    {"product_id": "p2", "title": "Ünïcödé ☃ \t tab"},
    {"product_id": "p3", "title": "last"},
]


def _encode(rows: list[dict], fmt: str) -> tuple[bytes, list[int]]:
    """The file's bytes (uncompressed) and the byte offset where each row ends."""
    base = fmt.removesuffix(".gz")
    if base == "parquet":
        buf = io.BytesIO()
        pd.DataFrame(rows).to_parquet(buf, index=False)
        return buf.getvalue(), []
    out, ends = b"", []
    if base == "jsonl":
        for r in rows:
            out += (json.dumps(r, ensure_ascii=False) + "\n").encode()
            ends.append(len(out))
        return out, ends
    sio = io.StringIO()
    w = csv.writer(sio, delimiter="," if base == "csv" else "\t", lineterminator="\r\n")
    w.writerow(list(rows[0]))
    out = sio.getvalue().encode()
    for r in rows:
        sio = io.StringIO()
        csv.writer(sio, delimiter="," if base == "csv" else "\t", lineterminator="\r\n").writerow(list(r.values()))
        out += sio.getvalue().encode()
        ends.append(len(out))
    return out, ends


def _file_bytes(rows: list[dict], fmt: str) -> bytes:
    data, _ = _encode(rows, fmt)
    return gzip.compress(data, mtime=0) if fmt.endswith(".gz") else data


def _read(path: Path) -> list[tuple[int, object]]:
    """Read everything; check the shape of what comes out (this is the no-exception property)."""
    probe_columns(path)  # must not raise either
    recs = list(iter_records(path))
    rows = [r for r, _ in recs]
    assert rows == sorted(set(rows)), rows
    for _, rec in recs:
        assert isinstance(rec, (dict, RowError)), rec
        if isinstance(rec, RowError):
            assert rec.file == str(path) and rec.reason
    return recs


@pytest.fixture(scope="module")
def scratch():
    d = Path(tempfile.mkdtemp(prefix="fr-prop-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


# --- readers ------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ALL_FORMATS)
@FAST
@given(data=st.binary(max_size=3000))
def test_reader_arbitrary_bytes(scratch, fmt, data):
    p = scratch / f"arb.{fmt}"
    p.write_bytes(data)
    _read(p)


@pytest.mark.parametrize("fmt", ["parquet.gz"] + [f for f in TEXT_FORMATS if f.endswith(".gz")])
@FAST
@given(data=st.binary(max_size=3000))
def test_reader_arbitrary_bytes_inside_valid_gzip(scratch, fmt, data):
    p = scratch / f"arbgz.{fmt}"
    p.write_bytes(gzip.compress(data))
    _read(p)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_reader_truncated_at_every_byte(scratch, fmt):
    full = _file_bytes(ROWS, fmt)
    _, ends = _encode(ROWS, fmt)
    p = scratch / f"cut.{fmt}"
    step = 1 if len(full) < 1500 else 3
    for k in range(0, len(full), step):
        p.write_bytes(full[:k])
        recs = _read(p)
        got = {r: rec for r, rec in recs if isinstance(rec, dict)}
        if fmt.endswith(".gz") or fmt == "parquet":
            # a cut stream: every row that comes out is whole, and the cut is one reject at the end
            assert all(got[r] == ROWS[r] for r in got), (k, got)
            assert recs and isinstance(recs[-1][1], RowError), (k, recs)
            assert sum(isinstance(x, RowError) for _, x in recs) == 1
        else:
            complete = sum(e <= k for e in ends)  # rows whose bytes all lie before the cut
            for r in range(complete):
                assert got.get(r) == ROWS[r], (k, r, recs)
            assert len(recs) <= complete + 1
    p.write_bytes(full)
    assert [rec for _, rec in _read(p)] == ROWS


_CELL = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
@FAST
@given(cells=st.lists(st.tuples(_CELL, _CELL), min_size=1, max_size=6))
def test_reader_utf8_round_trip(scratch, fmt, cells):
    rows = [{"a": a, "b": b} for a, b in cells]
    p = scratch / f"rt.{fmt}"
    p.write_bytes(_file_bytes(rows, fmt))
    assert [rec for _, rec in _read(p)] == rows


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
@FAST
@given(cells=st.lists(_CELL, min_size=1, max_size=6),
       encoding=st.sampled_from(["latin-1", "cp1252", "utf-16", "utf-16-be", "utf-32", "utf-8-sig", "shift_jis",
                                 "koi8-r", "gb18030", "mac-roman"]))
def test_reader_random_encodings(scratch, fmt, cells, encoding):
    base = fmt.removesuffix(".gz")
    if base == "jsonl":
        text = "".join(json.dumps({"a": c}, ensure_ascii=False) + "\n" for c in cells)
    else:
        sio = io.StringIO()
        w = csv.writer(sio, delimiter="," if base == "csv" else "\t", lineterminator="\r\n")
        w.writerow(["a"])
        w.writerows([[c] for c in cells])
        text = sio.getvalue()
    data = text.encode(encoding, errors="replace")
    p = scratch / f"enc.{fmt}"
    p.write_bytes(gzip.compress(data) if fmt.endswith(".gz") else data)
    recs = _read(p)
    if encoding == "utf-8-sig":
        assert [rec for _, rec in recs] == [{"a": c} for c in cells]


# --- adapters -------------------------------------------------------------------

def _native(d: Path, fmt: str) -> dict[str, bytes]:
    rows = [{"product_id": f"p{i}", "title": f"Title {i}", "description": "<b>d</b> &amp; e"} for i in range(6)]
    return {f"products.{fmt}": _file_bytes(rows, fmt),
            "queries.tsv": b"query_id\tquery\nq1\ttitle one\nq2\ttitle two\n",
            "qrels.tsv": b"query_id\tproduct_id\tgrade\nq1\tp1\t2\nq2\tp2\t1\nq2\tp3\t0\n"}


def _fashion44k(d: Path, fmt: str) -> dict[str, bytes]:
    rows = [{"product_id": str(i), "title": f"Shirt {i}", "title_sparse": "Shirt", "master_category": "Apparel"}
            for i in range(6)]
    return {"products.parquet": _file_bytes(rows, "parquet"),
            "queries_train.tsv": b"query_id\tquery\nq1\tshirt\n",
            "qrels_train.tsv.gz": gzip.compress(b"query_id\tproduct_id\tgrade\nq1\t1\t3\nq1\t2\t1\n", mtime=0)}


def _esci(d: Path, fmt: str) -> dict[str, bytes]:
    products = [{"product_id": f"B{i}", "product_title": f"Widget {i}", "product_description": "<p>x</p>",
                 "product_bullet_point": "a\nb", "product_brand": "Acme", "product_color": "red",
                 "product_locale": "us"} for i in range(6)]
    examples = [{"example_id": i, "query": "widget", "query_id": 1, "product_id": f"B{i}", "product_locale": "us",
                 "esci_label": "ESCI"[i % 4], "small_version": 1, "large_version": 1, "split": "train"} for i in range(6)]
    return {"shopping_queries_dataset_products.parquet": _file_bytes(products, "parquet"),
            "shopping_queries_dataset_examples.parquet": _file_bytes(examples, "parquet")}


def _esci_feed(d: Path, fmt: str) -> dict[str, bytes]:
    lines = [json.dumps({"put": f"id:shopping:product::B{i}", "fields": {"id": f"B{i}", "title": f"Widget {i}",
                                                                         "locale": "us", "bullets": "x"}}) for i in range(6)]
    return {"sample-products.jsonl": ("\n".join(lines) + "\n").encode()}


def _wands(d: Path, fmt: str) -> dict[str, bytes]:
    head = "product_id\tproduct_name\tproduct_class\tcategory hierarchy\tproduct_description\tproduct_features\t" \
           "rating_count\taverage_rating\treview_count\n"
    prod = head + "".join(f"{i}\tbed {i}\tBeds\tFurniture / Beds\tdeep sleep\ta:1|b : 2\t15.0\t4.5\t3.0\n" for i in range(6))
    return {"product.csv": prod.encode(),
            "query.csv": b"query_id\tquery\tquery_class\n0\tbed\tBeds\n1\tlamp\tLamps\n",
            "label.csv": b"id\tquery_id\tproduct_id\tlabel\n0\t0\t1\tExact\n1\t0\t2\tPartial\n2\t1\t3\tIrrelevant\n"}


LAYOUTS = {
    "native-csv": ("native", _native, "csv"), "native-jsonl": ("native", _native, "jsonl"),
    "native-parquet": ("native", _native, "parquet"), "native-tsv.gz": ("native", _native, "tsv.gz"),
    "native-jsonl.gz": ("native", _native, "jsonl.gz"),
    "fashion44k": ("fashion44k", _fashion44k, ""), "esci": ("esci", _esci, ""), "esci-feed": ("esci", _esci_feed, ""),
    "wands": ("wands", _wands, ""),
}


@st.composite
def _damage(draw, files: dict[str, bytes]):
    name = draw(st.sampled_from(sorted(files)))
    data = files[name]
    kind = draw(st.sampled_from(["truncate", "overwrite", "insert", "replace", "reencode"]))
    if kind == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif kind == "overwrite":
        i = draw(st.integers(0, len(data)))
        junk = draw(st.binary(min_size=1, max_size=40))
        data = data[:i] + junk + data[i + len(junk):]
    elif kind == "insert":
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(min_size=1, max_size=40)) + data[i:]
    elif kind == "replace":
        data = draw(st.binary(max_size=400))
    else:
        raw = gzip.decompress(data) if name.endswith(".gz") else data
        enc = draw(st.sampled_from(["latin-1", "utf-16", "cp1252", "utf-8-sig"]))
        try:
            raw = raw.decode("utf-8").encode(enc, errors="replace")
        except UnicodeDecodeError:
            pass
        data = gzip.compress(raw) if name.endswith(".gz") else raw
    return name, kind, data


def _check_run(root: Path, adapter: str) -> None:
    out = root / "out"
    try:
        cat = ingest(root, out, adapter=adapter, check_media=False)
    except SchemaError as e:  # the damage hit the header: a clear error, and the report says so
        assert json.loads((out / "report.json").read_text())["error"] == str(e)
        return
    rep = json.loads((out / "report.json").read_text())
    assert rep == json.loads(json.dumps(cat.report))
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    for table, kind in (("products", "product"), ("queries", "query"), ("qrels", "qrel")):
        r = rep[table]
        assert r["read"] == r["kept"] + r["rejected"] + r["merged_duplicates"] + r["skipped"], (table, r)
        assert r["rejected"] == sum(x["kind"] == kind for x in rejects), (table, r, rejects)
    assert sum(x["kind"] == "encoding" for x in rejects) >= sum(rep[t]["utf8_replaced_rows"] for t in ("products", "queries", "qrels"))
    assert len(cat.products) == rep["products"]["kept"]
    if adapter == "native":  # rows in, counted independently of the report: every item the reader gives
        (src,) = [p for p in root.iterdir() if p.name.startswith("products.")]
        assert rep["products"]["read"] == len(list(iter_records(src)))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@SLOW
@given(data=st.data())
def test_adapter_survives_damage(scratch, layout, data):
    adapter, build, fmt = LAYOUTS[layout]
    root = scratch / f"ad-{layout}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    files = build(root, fmt)
    name, kind, damaged = data.draw(_damage(files), label="damage")
    for n, b in files.items():
        (root / n).write_bytes(damaged if n == name else b)
    _check_run(root, adapter)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_adapter_undamaged_layout_is_clean(scratch, layout):
    adapter, build, fmt = LAYOUTS[layout]
    root = scratch / f"ok-{layout}"
    root.mkdir()
    for n, b in build(root, fmt).items():
        (root / n).write_bytes(b)
    _check_run(root, adapter)
    rep = json.loads((root / "out" / "report.json").read_text())
    assert rep["products"]["kept"] == 6 and rep["products"]["rejected"] == 0
