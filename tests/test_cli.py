"""The ``fusionrank`` command line: ingest + encode on a tiny native catalogue, and clear errors."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fusionrank.cli import app
from fusionrank.ingest.adapters import ADAPTERS


@pytest.fixture
def runner():
    return CliRunner()


def squash(text: str) -> str:
    """Text without whitespace: rich wraps (and folds long paths in) messages to the terminal width."""
    return "".join(text.split())


def _ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def test_ingest_then_encode_text(runner, tiny_catalog, tmp_path, write_products, read_jsonl):
    d, rows = tiny_catalog(n=4)
    rows.append({"product_id": "", "title": "no id"})   # rejected
    write_products(d, rows)
    (d / "queries.tsv").write_text("query_id\tquery\nq1\tred shirt\nq2\tblue jeans\n")
    (d / "qrels.tsv").write_text("query_id\tproduct_id\tgrade\nq1\tp0\t2\nq2\tp1\t1\nq2\tp9\t1\n")
    cat, store = tmp_path / "cat", tmp_path / "store"

    r = _ok(runner.invoke(app, ["ingest", str(d), "--out", str(cat), "--adapter", "native", "--json"]))
    rep = json.loads(r.stdout)
    assert (rep["products"]["read"], rep["products"]["kept"], rep["products"]["rejected"]) == (5, 4, 1)
    assert rep["queries"]["kept"] == 2 and (rep["qrels"]["kept"], rep["qrels"]["rejected"]) == (2, 1)
    assert (cat / "products.parquet").is_file() and len(read_jsonl(cat / "rejects.jsonl")) == 2

    r = _ok(runner.invoke(app, ["encode", str(cat), "--store", str(store), "--modalities", "text", "--json"]))
    s = json.loads(r.stdout)
    assert s["products"] == 4 and s["engine"] == "local" and s["failures"] == 0 and s["store"] == str(store)
    jobs = {j["feature"]: (j["present"], j["encoded"], j["cached"], j["failed"]) for j in s["jobs"]}
    assert jobs == {"title.minilm": (4, 4, 0, 0), "title_sparse.minilm": (4, 2, 2, 0), "description.minilm": (2, 2, 0, 0)}
    assert sorted(p.name for p in store.glob("*.parquet")) == ["description.minilm.parquet", "title.minilm.parquet",
                                                               "title_sparse.minilm.parquet"]

    # again, with a --limit and the table output: everything cached
    r = _ok(runner.invoke(app, ["encode", str(cat), "-s", str(store), "--modalities", "text", "--limit", "2", "--json"]))
    s = json.loads(r.stdout)
    assert s["products"] == 2 and all(j["encoded"] == 0 for j in s["jobs"])
    r = _ok(runner.invoke(app, ["encode", str(cat), "-s", str(store), "--modalities", "text"]))
    assert squash("encode:") in squash(r.output) and "title" in r.output   # the summary table


def test_encode_with_config_file(runner, tiny_catalog, tmp_path):
    d, _ = tiny_catalog(n=2)
    cat = tmp_path / "cat"
    _ok(runner.invoke(app, ["ingest", str(d), "-o", str(cat), "--json"]))
    cfg = tmp_path / "enc.yaml"
    cfg.write_text("encode:\n  text_fields: [title]\n")
    r = _ok(runner.invoke(app, ["encode", str(cat), "-s", str(tmp_path / "st"), "--modalities", "text", "--config", str(cfg), "--json"]))
    assert [j["feature"] for j in json.loads(r.stdout)["jobs"]] == ["title.minilm"]
    cfg.write_text("encode:\n  txt_fields: [title]\n")
    r = runner.invoke(app, ["encode", str(cat), "-s", str(tmp_path / "st"), "--config", str(cfg)])
    assert r.exit_code == 2 and squash("unknown encode setting") in squash(r.output)


def test_unknown_adapter(runner, tiny_catalog, tmp_path):
    d, _ = tiny_catalog(n=1)
    r = runner.invoke(app, ["ingest", str(d), "--out", str(tmp_path / "cat"), "--adapter", "amazon"])
    assert r.exit_code == 2
    msg = squash(r.output)
    assert squash("unknown dataset adapter 'amazon'") in msg
    assert squash(f"valid names: {', '.join(ADAPTERS.names())}") in msg
    assert {"native", "fashion44k"} <= set(ADAPTERS.names())


def test_missing_catalogue_dir(runner, tmp_path):
    missing = tmp_path / "nowhere"
    r = runner.invoke(app, ["encode", str(missing), "--store", str(tmp_path / "store")])
    assert r.exit_code == 2
    msg = squash(r.output)
    assert squash("not a catalogue directory") in msg and squash("fusionrank ingest") in msg and squash(str(missing)) in msg
    assert r.exception is None or isinstance(r.exception, SystemExit)    # a message, not a traceback
    r = runner.invoke(app, ["ingest", str(missing), "--out", str(tmp_path / "cat")])
    assert r.exit_code == 2 and squash("no products file found") in squash(r.output)


def test_help_lists_commands(runner):
    r = _ok(runner.invoke(app, ["--help"]))
    for cmd in ("ingest", "encode", "demo"):
        assert cmd in r.output


def test_index_table_dtype_names_the_valid_ones(runner, tiny_model, tmp_path):
    """`fusionrank index --table-dtype` takes float32 or float16; anything else is an error that lists them."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model[0], model, ignore=shutil.ignore_patterns("index", "service-data"))
    r = runner.invoke(app, ["index", str(model), "--table-dtype", "float64"])
    assert r.exit_code == 2 and squash("unknown table_dtype 'float64'; valid: float32, float16") in squash(r.output)
    assert not (model / "index").exists()
    _ok(runner.invoke(app, ["index", str(model), "--table-dtype", "float16"]))
    assert json.loads((model / "index" / "index.json").read_text())["config"]["table_dtype"] == "float16"
