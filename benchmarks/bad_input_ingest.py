"""Bad input against ingestion: every class of damaged file, id, encoding and media tried, with its outcome.

    .venv/bin/python benchmarks/bad_input_ingest.py [--before REV] [--out FILE]

Each case builds a small source in a scratch folder and runs ``fusionrank ingest``
through the CLI (in this process, as a user would see it: exit code and output),
or, for ids, calls ``validate_product`` (the validator the HTTP PUT path also uses).
The outcome is the counted reject or the error text; a traceback or a bare
"Aborted" counts as a failure. With ``--before REV`` (default: the commit this
branch started from, if found) the same cases also run on that revision's
``src/`` in a subprocess, for a before/after column.

Writes ``benchmarks/results/bad_input_ingest.md``. Takes well under 2 minutes.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"product_id": f"p{i}", "title": f"Title {i}", "description": "plain words"} for i in range(40)]


# --- building inputs --------------------------------------------------------------

def _csv(rows, sep=",") -> str:
    import csv

    sio = io.StringIO()
    cols = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.writer(sio, delimiter=sep, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
    return sio.getvalue()


def _jsonl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _parquet(rows, **kw) -> bytes:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False), buf, **kw)
    return buf.getvalue()


def _side(d: Path) -> None:
    (d / "queries.tsv").write_text("query_id\tquery\nq1\ttitle one\n")
    (d / "qrels.tsv").write_text("query_id\tproduct_id\tgrade\nq1\tp1\t1\n")


def _wav(path: Path, seconds=1.0, fmt="WAV", subtype="PCM_16") -> bytes:
    import numpy as np
    import soundfile as sf

    sr = 16000
    x = (0.3 * np.sin(np.arange(int(sr * seconds)) * 0.1)).astype(np.float32)
    sf.write(str(path), x, sr, format=fmt, subtype=subtype)
    return path.read_bytes()


def _jpeg(path: Path, size=(64, 64)) -> bytes:
    from PIL import Image

    Image.new("RGB", size, (200, 30, 30)).save(path, format="JPEG")
    return path.read_bytes()


def _png_bomb() -> bytes:
    """A tiny PNG whose header claims 60000 x 60000 pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")


def _gz_cut(data: bytes, keep=0.5) -> bytes:
    z = gzip.compress(data, mtime=0)
    return z[: int(len(z) * keep)]


def _gz_corrupt(data: bytes) -> bytes:
    z = bytearray(gzip.compress(data, mtime=0))
    for i in range(len(z) // 2, len(z) // 2 + 16):
        z[i] ^= 0x5A
    return bytes(z)


def _parquet_bad_group() -> bytes:
    import pyarrow.parquet as pq

    data = bytearray(_parquet(ROWS, row_group_size=10, write_page_checksum=True, compression="NONE"))
    meta = pq.ParquetFile(io.BytesIO(bytes(data))).metadata
    start = meta.row_group(1).column(1).data_page_offset
    for i in range(start + 30, start + 50):
        data[i] ^= 0xFF
    return bytes(data)


def _media_rows(d: Path, field: str, name: str, data: bytes) -> None:
    (d / "m").mkdir(exist_ok=True)
    (d / "m" / name).write_bytes(data)
    rows = [{"product_id": "good", "title": "Good"}, {"product_id": "m1", "title": "With media", field: f"m/{name}"}]
    (d / "products.jsonl").write_text(_jsonl(rows))


def _media_path(d: Path, field: str, path: str) -> None:
    rows = [{"product_id": "good", "title": "Good"}, {"product_id": "m1", "title": "With media", field: path}]
    (d / "products.jsonl").write_text(_jsonl(rows))


def _w(name: str, data) -> callable:
    def build(d: Path) -> None:
        p = d / name
        p.write_bytes(data() if callable(data) else data if isinstance(data, bytes) else data.encode("utf-8"))
        _side(d)
    return build


def _tmp(d: Path) -> Path:
    t = d / "_t"
    t.mkdir(exist_ok=True)
    return t


big_attr = [dict(r) for r in ROWS[:5]]
big_attr[2]["notes"] = "n" * 200_000
big_desc = [dict(r) for r in ROWS[:5]]
big_desc[2]["description"] = "d" * 200_000
csv_text = _csv(ROWS)


def _wands(d: Path, product: bytes | None = None, label_gz: bytes | None = None) -> None:
    head = ("product_id\tproduct_name\tproduct_class\tcategory hierarchy\tproduct_description\tproduct_features\t"
            "rating_count\taverage_rating\treview_count\n")
    prod = head + "".join(f"{i}\tbed {i}\tBeds\tFurniture / Beds\tdeep sleep\ta:1\t15.0\t4.5\t3.0\n" for i in range(10))
    (d / "product.csv").write_bytes(product if product is not None else prod.encode())
    (d / "query.csv").write_text("query_id\tquery\tquery_class\n0\tbed\tBeds\n")
    label = b"id\tquery_id\tproduct_id\tlabel\n" + b"".join(f"{i}\t0\t{i}\tExact\n".encode() for i in range(10))
    if label_gz is not None:
        (d / "label.csv.gz").write_bytes(label_gz)
    else:
        (d / "label.csv").write_bytes(label)


def _esci(d: Path, cut_examples=False) -> None:
    products = [{"product_id": f"B{i}", "product_title": f"Widget {i}", "product_locale": "us"} for i in range(10)]
    examples = [{"example_id": i, "query": "widget", "query_id": 1, "product_id": f"B{i}", "product_locale": "us",
                 "esci_label": "E", "small_version": 1, "large_version": 1, "split": "train"} for i in range(10)]
    (d / "shopping_queries_dataset_products.parquet").write_bytes(_parquet(products))
    ex = _parquet(examples)
    (d / "shopping_queries_dataset_examples.parquet").write_bytes(ex[: len(ex) // 2] if cut_examples else ex)


def _f44k(d: Path) -> None:
    rows = [{"product_id": str(i), "title": f"Shirt {i}", "master_category": "Apparel"} for i in range(10)]
    (d / "products.parquet").write_bytes(_parquet(rows))
    (d / "queries_train.tsv").write_text("query_id\tquery\nq1\tshirt\n")
    q = b"query_id\tproduct_id\tgrade\n" + b"".join(f"q1\t{i}\t1\n".encode() for i in range(10))
    (d / "qrels_train.tsv.gz").write_bytes(_gz_cut(q * 50, 0.5))


# (group, input, fault, builder, adapter, what to show: a reject kind or "product_id")
CASES: list[tuple] = [
    ("file", "products.csv", "field of 200,000 chars (attribute; csv default limit 131,072)", _w("products.csv", _csv(big_attr)), "native", "product"),
    ("file", "products.csv", "description of 200,000 chars", _w("products.csv", _csv(big_desc)), "native", "product"),
    ("file", "products.csv", "unclosed quote in row 3", _w("products.csv", csv_text.replace("p3,", 'p3,"', 1)), "native", "product"),
    ("file", "products.csv", "row with more cells than the header", _w("products.csv", csv_text.replace("p2,Title 2,plain words", "p2,Title 2,plain words,extra", 1)), "native", "product"),
    ("file", "products.csv", "row with fewer cells than the header (cut line)", _w("products.csv", csv_text.replace("p2,Title 2,plain words", "p2,Tit", 1)), "native", "product"),
    ("file", "products.csv", "duplicate column name in the header", _w("products.csv", "product_id,title,title\np1,a,b\n"), "native", "product"),
    ("file", "products.csv", "empty file (0 bytes)", _w("products.csv", b""), "native", "product"),
    ("file", "products.csv", "header only, no rows", _w("products.csv", "product_id,title\n"), "native", "product"),
    ("file", "products.csv", "trailing delimiters (two unnamed columns)", _w("products.csv", "product_id,title,,\np1,a,,\np2,b,x,y\n"), "native", "product"),
    ("file", "products.csv", "CRLF line ends and a quoted CR inside a field", _w("products.csv", 'product_id,title\r\np1,"a\rb"\r\np2,c\r\n'), "native", "product"),
    ("file", "products.csv", "NUL byte inside a row", _w("products.csv", csv_text.replace("Title 3", "Ti\x00tle 3", 1)), "native", "product"),
    ("file", "products.csv", "missing required column (title)", _w("products.csv", "product_id,name\np1,x\n"), "native", "product"),
    ("file", "products.csv.gz", "not gzip (plain text named .gz)", _w("products.csv.gz", csv_text), "native", "product"),
    ("file", "products.csv.gz", "gzip truncated at half", _w("products.csv.gz", _gz_cut(csv_text.encode() * 20, 0.5)), "native", "product"),
    ("file", "products.csv.gz", "gzip with corrupt deflate data", _w("products.csv.gz", _gz_corrupt(csv_text.encode() * 20)), "native", "product"),
    ("file", "products.csv.gz", "empty .gz (0 bytes)", _w("products.csv.gz", b""), "native", "product"),
    ("file", "products.tsv.gz", "trailing garbage after the gzip member", _w("products.tsv.gz", gzip.compress(_csv(ROWS, "\t").encode()) + b"garbage!"), "native", "product"),
    ("file", "products.jsonl", "first line lacks the title column", _w("products.jsonl", '{"product_id": "x"}\n' + _jsonl(ROWS[:5])), "native", "product"),
    ("file", "products.jsonl", "a line of invalid JSON", _w("products.jsonl", _jsonl(ROWS[:2]) + '{"product_id": "p9", "title": \n' + _jsonl(ROWS[2:4])), "native", "product"),
    ("file", "products.jsonl", "a line that is a JSON array", _w("products.jsonl", _jsonl(ROWS[:2]) + "[1, 2]\n"), "native", "product"),
    ("file", "products.jsonl", "duplicate key in an object", _w("products.jsonl", '{"product_id": "a", "title": "x", "title": "y"}\n' + _jsonl(ROWS[:2])), "native", "product"),
    ("file", "products.jsonl", "integer of 5,000 digits", _w("products.jsonl", '{"product_id": "a", "title": ' + "9" * 5000 + "}\n" + _jsonl(ROWS[:2])), "native", "product"),
    ("file", "products.jsonl", "arrays nested 100,000 deep", _w("products.jsonl", '{"product_id": "a", "title": "t", "x": ' + "[" * 100_000 + "}\n" + _jsonl(ROWS[:2])), "native", "product"),
    ("file", "products.jsonl", "NaN and Infinity as values", _w("products.jsonl", '{"product_id": "a", "title": NaN}\n{"product_id": "b", "title": "t", "brand": Infinity}\n'), "native", "product"),
    ("file", "products.jsonl.gz", "gzip truncated at 60%", _w("products.jsonl.gz", _gz_cut(_jsonl(ROWS).encode() * 10, 0.6)), "native", "product"),
    ("file", "products.parquet", "empty file (0 bytes)", _w("products.parquet", b""), "native", "product"),
    ("file", "products.parquet", "truncated at half", _w("products.parquet", lambda: _parquet(ROWS)[: len(_parquet(ROWS)) // 2]), "native", "product"),
    ("file", "products.parquet", "last byte cut (footer magic)", _w("products.parquet", lambda: _parquet(ROWS)[:-1]), "native", "product"),
    ("file", "products.parquet", "one row group's data corrupted (page checksums)", _w("products.parquet", _parquet_bad_group), "native", "product"),
    ("file", "products.parquet", "random bytes", _w("products.parquet", os.urandom(3000)), "native", "product"),
    ("file", "products.parquet.gz", "a gzipped Parquet file", _w("products.parquet.gz", lambda: gzip.compress(_parquet(ROWS))), "native", "product"),
    ("file", "products.parquet", "duplicate column names", _w("products.parquet", lambda: _dup_parquet()), "native", "product"),
    ("file", "product.csv (wands)", "gzip label.csv.gz truncated", lambda d: _wands(d, label_gz=_gz_cut(b"id\tquery_id\tproduct_id\tlabel\n" + b"0\t0\t1\tExact\n" * 400)), "wands", "qrel"),
    ("file", "examples.parquet (esci)", "examples file truncated at half", lambda d: _esci(d, cut_examples=True), "esci", "query"),
    ("file", "qrels_train.tsv.gz (fashion44k)", "gzip truncated at half", _f44k, "fashion44k", "qrel"),
    ("encoding", "products.csv", "Latin-1 bytes (invalid UTF-8)", _w("products.csv", csv_text.replace("Title 3", "Caf\xe9 3").encode("latin-1")), "native", "encoding"),
    ("encoding", "products.csv", "UTF-16 with byte-order mark", _w("products.csv", csv_text.encode("utf-16")), "native", "product"),
    ("encoding", "products.csv", "UTF-8 with byte-order mark", _w("products.csv", csv_text.encode("utf-8-sig")), "native", "product"),
    ("encoding", "products.jsonl", "invalid UTF-8 inside a JSON string", _w("products.jsonl", b'{"product_id": "a", "title": "x\xff\xfe y"}\n'), "native", "encoding"),
    ("encoding", "products.jsonl", "lone surrogate escape (\\ud800) in a title", _w("products.jsonl", '{"product_id": "a", "title": "x\\ud800"}\n{"product_id": "b", "title": "t", "k\\udc00": 1}\n'), "native", "product"),
    ("encoding", "product.csv (wands)", "cp1252 bytes in a product name", lambda d: _wands(d, product=("product_id\tproduct_name\n0\tcaf\xe9 \u201cbed\u201d\n").encode("cp1252")), "wands", "encoding"),
    ("html", "products.jsonl", "entity-encoded <script> in the description", _w("products.jsonl", _jsonl([{"product_id": "a", "title": "t", "description": "&lt;script&gt;alert(1)&lt;/script&gt;Soft"}])), "native", "description"),
    ("html", "products.jsonl", "full-width ＜script＞ (a tag after NFKC)", _w("products.jsonl", _jsonl([{"product_id": "a", "title": "＜script＞alert(1)＜/script＞Shirt"}])), "native", "title"),
    ("html", "products.jsonl", "double-encoded &amp;lt;b&amp;gt;", _w("products.jsonl", _jsonl([{"product_id": "a", "title": "x &amp;lt;b&amp;gt; y"}])), "native", "title"),
    ("judgment", "qrels.tsv", "grade 1e300 (beyond int32)", lambda d: (_w("products.csv", csv_text)(d), (d / "qrels.tsv").write_text("query_id\tproduct_id\tgrade\nq1\tp1\t1e300\n")), "native", "qrel"),
    ("judgment", "qrels.tsv", "product id with a leading space", lambda d: (_w("products.csv", csv_text)(d), (d / "qrels.tsv").write_text("query_id\tproduct_id\tgrade\nq1\t p1\t1\n")), "native", "qrel"),
    ("judgment", "queries.tsv", "query id with a trailing space", lambda d: (_w("products.csv", csv_text)(d), (d / "queries.tsv").write_text("query_id\tquery\nq1 \tx\n")), "native", "query"),
    ("media", "audio .wav", "clip cut in half", lambda d: _media_rows(d, "audio", "a.wav", (lambda b: b[: len(b) // 2])(_wav(_tmp(d) / "a.wav"))), "native", "media"),
    ("media", "audio .ogg", "clip cut at 90%", lambda d: _media_rows(d, "audio", "a.ogg", (lambda b: b[: int(len(b) * 0.9)])(_wav(_tmp(d) / "a.ogg", fmt="OGG", subtype="VORBIS"))), "native", "media"),
    ("media", "audio .flac", "clip cut in half", lambda d: _media_rows(d, "audio", "a.flac", (lambda b: b[: len(b) // 2])(_wav(_tmp(d) / "a.flac", fmt="FLAC"))), "native", "media"),
    ("media", "audio .wav", "0 bytes", lambda d: _media_rows(d, "audio", "a.wav", b""), "native", "media"),
    ("media", "image .jpg", "random bytes", lambda d: _media_rows(d, "image", "a.jpg", os.urandom(600)), "native", "media"),
    ("media", "image .jpg", "JPEG cut at 40%", lambda d: _media_rows(d, "image", "a.jpg", (lambda b: b[: int(len(b) * 0.4)])(_jpeg(_tmp(d) / "a.jpg"))), "native", "media"),
    ("media", "image .png", "decompression bomb (header claims 60000x60000)", lambda d: _media_rows(d, "image", "a.png", _png_bomb()), "native", "media"),
    ("file", "products.parquet (fashion44k)", "image column of integers, not paths", lambda d: (d / "products.parquet").write_bytes(_parquet([{"product_id": str(i), "title": f"Shirt {i}", "image": i} for i in range(5)])), "fashion44k", "product"),
    ("file", "--out", "the output path is an existing file", lambda d: (_w("products.csv", csv_text)(d), (d / "out").write_text("x")), "native", "product"),
    ("media", "image path", "5,000-character file name", lambda d: _media_path(d, "image", "x" * 5000 + ".jpg"), "native", "media"),
    ("media", "image path", "NUL byte in the path", lambda d: _media_path(d, "image", "a\x00b.jpg"), "native", "media"),
    ("media", "audio path", "a directory", lambda d: (Path(d / "dir.wav").mkdir(), _media_path(d, "audio", str(d / "dir.wav"))), "native", "media"),
]

ID_CASES = [
    ("leading space", " p1"), ("trailing space", "p1 "), ("trailing newline", "p1\n"), ("ideographic space at the start", "\u3000p1"),
    ("NUL", "p\x001"), ("escape (ESC)", "p\x1b[31m1"), ("zero-width space", "p\u200b1"), ("right-to-left override", "p\u202e1"),
    ("U+FFFD", "p\ufffd1"), ("lone surrogate", "p\ud8001"), ("201 characters", "x" * 201),
    ("full-width (NFKC would change it)", "ＡＢＣ１"), ("HTML entity", "a&amp;b"), ("tag-like text", "<b>p</b>"),
    ("combining accent (NFC would change it)", "e\u0301"), ("inner double space", "a  b"), ("boolean true", True),
    ("Infinity", float("inf")), ("integer of 5,000 digits", 10 ** 4999), ("float 12.0", 12.0),
]


def _dup_parquet() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table([pa.array(["p1"]), pa.array(["a"]), pa.array(["b"])], names=["product_id", "title", "title"])
    buf = io.BytesIO()
    pq.write_table(t, buf)
    return buf.getvalue()


# --- running ---------------------------------------------------------------------

def _short(s: str, n: int = 150) -> str:
    s = " ".join(str(s).split())
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s).replace("|", "\\|")
    return s if len(s) <= n else s[: n - 1] + "…"


def _outcome(d: Path, adapter: str, show: str) -> dict:
    from typer.testing import CliRunner

    from fusionrank.cli import app

    out = d / "out"
    t0 = time.perf_counter()
    r = CliRunner().invoke(app, ["ingest", str(d), "--out", str(out), "--adapter", adapter, "--json"])
    res: dict = {"seconds": round(time.perf_counter() - t0, 2), "exit": r.exit_code}
    text = (r.output or "")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        res["status"] = "TRACEBACK"
        res["text"] = f"{type(r.exception).__name__}: {r.exception}"
        return res
    if "Aborted" in text:
        res["status"] = "ABORTED"
        res["text"] = "Aborted!"
        return res
    if r.exit_code != 0:
        res["status"] = "error"
        res["text"] = text.split("error:", 1)[-1].strip()
        return res
    rep = json.loads(text[text.index("{"):])
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()] \
        if (out / "rejects.jsonl").exists() else []
    p = rep["products"]
    res["status"] = "ok"
    counts = f"products read {p['read']}, kept {p['kept']}, rejected {p['rejected']}"
    if p.get("media_dropped"):
        counts += f", media dropped {p['media_dropped']}"
    if any(rep[t].get("utf8_replaced_rows") for t in ("products", "queries", "qrels")):
        counts += f", rows with UTF-8 replaced {sum(rep[t].get('utf8_replaced_rows', 0) for t in ('products', 'queries', 'qrels'))}"
    if show in ("title", "description"):
        import pandas as pd

        prods = pd.read_parquet(out / "products.parquet")
        detail = f"stored {show}: {prods[show].iloc[0]!r}" if len(prods) else "no product kept"
    else:
        hit = [x for x in rejects if x["kind"] == show]
        if not hit and show == "product":
            hit = [x for x in rejects if x["kind"] != "qrel"]
        if hit:
            x = hit[0]
            where = f"{Path(x['file']).name}, row {x['row']}" + (f", field {x['field']}" if x.get("field") else "")
            detail = f"{x['kind']} reject ({where}): {x['reason']}"
        else:
            detail = "no reject"
    if show in ("qrel", "query"):
        t = "qrels" if show == "qrel" else "queries"
        counts += f"; {t} read {rep[t]['read']}, kept {rep[t]['kept']}, rejected {rep[t]['rejected']}"
    res["text"] = f"{counts}; {detail}"
    res["report_written"] = (out / "report.json").exists()
    return res


def _id_outcome(value) -> dict:
    from fusionrank.errors import RowError
    from fusionrank.ingest.validate import validate_product

    try:
        p, _ = validate_product({"product_id": value, "title": "t"}, "PUT /products", 0)
    except RowError as e:
        return {"status": "refused", "text": f"refused: {e.reason}"}
    except Exception as e:  # noqa: BLE001 - that is what is measured
        return {"status": "TRACEBACK", "text": f"{type(e).__name__}: {e}"}
    stored = p["product_id"]
    if not isinstance(value, str):  # a number given: stored as its digits (documented type coercion)
        return {"status": "stored", "text": f"number given, stored as the text {stored!r}"}
    same = stored == value
    return {"status": "stored" if same else "CHANGED", "text": f"stored {'exactly' if same else 'CHANGED to'} {stored!r}"}


def run_cases() -> list[dict]:
    import warnings

    warnings.simplefilter("ignore")
    results = []
    scratch = Path(tempfile.mkdtemp(prefix="bad-input-"))
    try:
        for i, (group, what, fault, build, adapter, show) in enumerate(CASES):
            d = scratch / f"c{i}"
            d.mkdir()
            try:
                build(d)
                res = _outcome(d, adapter, show)
            except Exception as e:  # noqa: BLE001
                res = {"status": "TRACEBACK", "text": f"{type(e).__name__}: {e}"}
            res["text"] = res.get("text", "").replace(str(d), "SRC")  # no scratch paths in the table
            results.append({"group": group, "input": what, "fault": fault, "adapter": adapter, **res})
        for name, value in ID_CASES:
            shown = name if isinstance(value, int) and not isinstance(value, bool) and value > 10 ** 100 else f"{name}: {value!r}"[:80]
            results.append({"group": "id", "input": "product_id (validate_product: ingest and PUT)",
                            "fault": shown, "adapter": "-", **_id_outcome(value)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def _before(rev: str) -> list[dict] | None:
    tmp = Path(tempfile.mkdtemp(prefix="bad-input-before-"))
    try:
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True).stdout
        tarfile.open(fileobj=io.BytesIO(tar)).extractall(tmp, filter="data")
        env = {**os.environ, "PYTHONPATH": str(tmp / "src")}
        r = subprocess.run([sys.executable, __file__, "--cases-json", "--src", str(tmp / "src")], capture_output=True,
                           text=True, env=env, timeout=600)
        if r.returncode != 0:
            print(r.stderr[-2000:], file=sys.stderr)
            return None
        return json.loads(r.stdout)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        print(f"before run failed: {e}", file=sys.stderr)
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bad(s: str) -> bool:
    return s in ("TRACEBACK", "ABORTED", "CHANGED")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="48c2a79", help="revision to compare with ('' to skip)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bad_input_ingest.md"))
    ap.add_argument("--cases-json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--src", default=str(ROOT / "src"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, args.src)
    if args.cases_json:
        print(json.dumps(run_cases()))
        return
    t0 = time.perf_counter()
    now = run_cases()
    before = _before(args.before) if args.before else None
    seconds = time.perf_counter() - t0
    n_bad = sum(_bad(r["status"]) for r in now)
    lines = [
        "# Bad input against ingestion",
        "",
        f"Generated by `benchmarks/bad_input_ingest.py` in {seconds:.0f} s: {len(now)} bad-input classes "
        f"({len(CASES)} files, encodings, HTML, judgments and media run through `fusionrank ingest`; "
        f"{len(ID_CASES)} product ids through `validate_product`, which ingestion and the HTTP PUT path share).",
        "",
        f"**Now: {sum(r['status'] == 'TRACEBACK' for r in now)} tracebacks, {sum(r['status'] == 'ABORTED' for r in now)} bare "
        f"\"Aborted\", {sum(r['status'] == 'CHANGED' for r in now)} ids silently changed** "
        f"({n_bad} failures in all).",
    ]
    if before:
        lines.append(f"Before (`{args.before}`, the commit this work started from): "
                     f"{sum(r['status'] == 'TRACEBACK' for r in before)} tracebacks, "
                     f"{sum(r['status'] == 'ABORTED' for r in before)} \"Aborted\", "
                     f"{sum(r['status'] == 'CHANGED' for r in before)} ids silently changed.")
    lines += [
        "",
        "SRC is the case's source folder. Status: `ok` = the ingest finished (exit 0) and wrote report.json and rejects.jsonl; the outcome gives the",
        "products counts and the first relevant reject (file, row, field, reason) or the stored text. `error` = a",
        "clear error on the console (exit 2), no traceback. For ids: `refused` (with the reason) or `stored` exactly.",
        "",
        "| # | group | input | fault | status | outcome | before |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(now, 1):
        b = before[i - 1] if before and i - 1 < len(before) else None
        bt = f"{b['status']}: {_short(b.get('text', ''), 90)}" if b else ""
        lines.append(f"| {i} | {r['group']} | {_short(r['input'], 40)} | {_short(r['fault'], 70)} | {r['status']} | "
                     f"{_short(r.get('text', ''))} | {bt} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:6]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
