"""ESCI adapter: the shared Vespa sample and a small official-layout copy."""
from __future__ import annotations

import pandas as pd
import pytest

from fusionrank.errors import FusionrankError, SchemaError
from fusionrank.ingest import Catalog, ingest
from fusionrank.ingest.adapters import ADAPTERS, get_adapter
from fusionrank.ingest.adapters.esci import ESCI_GRADES, EXAMPLES_FILE, PRODUCTS_FILE


def test_registered():
    assert "esci" in ADAPTERS and "wands" in ADAPTERS
    assert ESCI_GRADES == {"E": 3, "S": 2, "C": 1, "I": 0}


# --- the shared sample: Vespa feed JSONL + test-sample.parquet --------------------

def test_esci_sample(esci_sample_dir, tmp_path, assert_balanced):
    cat = ingest(esci_sample_dir, tmp_path / "out", adapter="esci")
    p, q, j = cat.products, cat.queries, cat.qrels
    assert len(p) == 16
    assert all(pid.startswith("us:") for pid in p["product_id"])
    assert p["product_id"].is_unique
    row = p.set_index("product_id").loc["us:B08VSJGP1N"]
    assert row["attributes"] == {"asin": "B08VSJGP1N", "locale": "us"}
    assert row["brand"] == "Rimoody"
    assert "<b>" not in row["description"] and "<br>" not in row["description"]
    assert row["description"].startswith("Features ")
    assert len(row["bullet_points"]) == 1
    assert q.to_dict("records") == [{"query_id": "535", "query": "06 bmw 325i radio oem not navigation system", "split": "test"}]
    assert len(j) == 16
    assert j["grade"].value_counts().to_dict() == {0: 7, 2: 6, 3: 3}
    assert set(j["product_id"]) == set(p["product_id"])
    assert j.set_index("product_id").loc["us:B08PB9TTKT", "grade"] == 3  # an E
    assert j.set_index("product_id").loc["us:B08VSJGP1N", "grade"] == 2  # an S
    assert j.set_index("product_id").loc["us:B0007KPRIS", "grade"] == 0  # an I
    assert_balanced(cat.report)
    assert cat.report["products"]["rejected"] == 0 and cat.report["qrels"]["rejected"] == 0
    assert (tmp_path / "out" / "rejects.jsonl").read_text() == ""


def test_esci_sample_options(esci_sample_dir, tmp_path):
    data = esci_sample_dir / "sample-data"
    # root may be the data folder itself; explicit files; plain ids; another grade map
    cat = ingest(data, tmp_path / "a", adapter="esci", id_scheme="plain",
                 products_file="sample-products.jsonl", examples_file=str(data / "test-sample.parquet"),
                 grades={"E": 1, "S": 1, "C": 0, "I": 0})
    assert "B08VSJGP1N" in set(cat.products["product_id"])
    assert cat.qrels["grade"].value_counts().to_dict() == {1: 9, 0: 7}
    # filters that select nothing
    cat = ingest(esci_sample_dir, tmp_path / "b", adapter="esci", split="train")
    assert len(cat.products) == 16 and cat.queries is None and cat.qrels is None
    cat = ingest(esci_sample_dir, tmp_path / "c", adapter="esci", locale="es")
    assert len(cat.products) == 0 and cat.qrels is None
    assert len(Catalog.load(tmp_path / "c").products) == 0  # an empty catalogue saves and loads


# --- the official layout ---------------------------------------------------------

@pytest.fixture
def esci_dir(tmp_path):
    d = tmp_path / "esci"
    d.mkdir()
    products = pd.DataFrame([
        ("B1", "Widget", "<p>Great &amp; cheap<br>widget</p>", "one\ntwo\n", "Acme", "red", "us"),
        ("B2", "Gadget", None, None, "Acme", None, "us"),
        ("B1", "Widget (ES)", "Barato", "uno", "Acme", "rojo", "es"),
        (None, "No id", None, None, None, None, "us"),
        ("B3", "Thing", None, "[Single] first\nsecond", None, None, "jp"),
    ], columns=["product_id", "product_title", "product_description", "product_bullet_point",
                "product_brand", "product_color", "product_locale"])
    products.to_parquet(d / PRODUCTS_FILE, index=False)
    examples = pd.DataFrame([
        (0, "widget", 1, "B1", "us", "E", 1, 1, "train"),
        (1, "widget", 1, "B2", "us", "S", 1, 1, "train"),
        (2, "widget", 1, "B9", "us", "X", 0, 1, "train"),
        (3, "widget barato", 2, "B1", "es", "C", 0, 1, "test"),
        (4, "thing", 3, "B3", "jp", "i", 1, 1, "test"),
    ], columns=["example_id", "query", "query_id", "product_id", "product_locale", "esci_label",
                "small_version", "large_version", "split"])
    examples.to_parquet(d / EXAMPLES_FILE, index=False)
    return d


def test_esci_official(esci_dir, tmp_path, read_rejects, assert_balanced):
    out = tmp_path / "out"
    cat = ingest(esci_dir, out, adapter="esci")
    assert_balanced(cat.report)
    p = cat.products.set_index("product_id")
    assert list(p.index) == ["us:B1", "us:B2", "es:B1", "jp:B3"]
    assert p.loc["us:B1", "description"] == "Great & cheap widget"
    assert list(p.loc["us:B1", "bullet_points"]) == ["one", "two"]
    assert list(p.loc["jp:B3", "bullet_points"]) == ["[Single] first", "second"]
    assert p.loc["es:B1", "title"] == "Widget (ES)"
    assert p.loc["es:B1", "attributes"] == {"asin": "B1", "locale": "es"}
    rep = cat.report
    assert rep["products"]["read"] == 5 and rep["products"]["rejected"] == 1
    assert rep["qrels"]["read"] == 5 and rep["qrels"]["kept"] == 4 and rep["qrels"]["rejected"] == 1
    grades = {(r.query_id, r.product_id): r.grade for r in cat.qrels.itertuples()}
    assert grades == {("1", "us:B1"): 3, ("1", "us:B2"): 2, ("2", "es:B1"): 1, ("3", "jp:B3"): 0}
    assert dict(zip(cat.queries["query_id"], cat.queries["split"])) == {"1": "train", "2": "test", "3": "test"}
    rejects = read_rejects(out)
    missing = [r for r in rejects if r["kind"] == "product"]
    assert len(missing) == 1
    assert missing[0]["field"] == "product_id" and missing[0]["row"] == 3
    assert missing[0]["file"].endswith(PRODUCTS_FILE) and "missing product id" in missing[0]["reason"]
    bad = [r for r in rejects if r["kind"] == "qrel"]
    assert len(bad) == 1
    assert bad[0]["field"] == "esci_label" and bad[0]["row"] == 2 and bad[0]["file"].endswith(EXAMPLES_FILE)
    assert "'X'" in bad[0]["reason"]


def test_esci_filters(esci_dir, tmp_path):
    cat = ingest(esci_dir, tmp_path / "us", adapter="esci", locale="us")
    assert list(cat.products["product_id"]) == ["us:B1", "us:B2"]
    assert cat.report["products"]["rejected"] == 1  # the us row without id
    assert list(cat.queries["query_id"]) == ["1"]
    assert len(cat.qrels) == 2 and cat.report["qrels"]["rejected"] == 1

    cat = ingest(esci_dir, tmp_path / "small", adapter="esci", version="small")
    assert sorted(cat.qrels["product_id"]) == ["jp:B3", "us:B1", "us:B2"]
    assert list(cat.queries["query_id"]) == ["1", "3"]
    assert cat.report["qrels"]["rejected"] == 0  # the bad label row is not in the small version

    cat = ingest(esci_dir, tmp_path / "test", adapter="esci", split="test", locale=["es", "jp"])
    assert set(cat.queries["split"]) == {"test"} and list(cat.queries["query_id"]) == ["2", "3"]
    assert list(cat.products["product_id"]) == ["es:B1", "jp:B3"]

    cat = ingest(esci_dir, tmp_path / "judged", adapter="esci", version="small", only_judged=True)
    assert list(cat.products["product_id"]) == ["us:B1", "us:B2", "jp:B3"]


def test_esci_plain_ids_reject_cross_locale_duplicates(esci_dir, tmp_path, read_rejects):
    out = tmp_path / "plain"
    cat = ingest(esci_dir, out, adapter="esci", id_scheme="plain")
    assert list(cat.products["product_id"]) == ["B1", "B2", "B3"]
    dup = [r for r in read_rejects(out) if r["kind"] == "product" and r["row"] == 2]
    assert len(dup) == 1 and dup[0]["field"] == "product_id"
    assert "duplicate product id 'B1'" in dup[0]["reason"] and "row 0" in dup[0]["reason"]
    # with one locale plain ids are unique
    cat = ingest(esci_dir, tmp_path / "plain_es", adapter="esci", id_scheme="plain", locale="es")
    assert list(cat.products["product_id"]) == ["B1"]
    assert cat.qrels.to_dict("records") == [{"query_id": "2", "product_id": "B1", "grade": 1}]


def test_esci_bad_options_and_layout(esci_dir, tmp_path):
    with pytest.raises(FusionrankError, match="version"):
        get_adapter("esci", esci_dir, version="medium")
    with pytest.raises(FusionrankError, match="id_scheme"):
        get_adapter("esci", esci_dir, id_scheme="asin")
    with pytest.raises(FusionrankError, match="grades"):
        get_adapter("esci", esci_dir, grades={"E": -1})
    with pytest.raises(FusionrankError, match="no ESCI products file"):
        (tmp_path / "empty").mkdir()
        ingest(tmp_path / "empty", tmp_path / "x", adapter="esci")
    ex = pd.read_parquet(esci_dir / EXAMPLES_FILE).drop(columns=["esci_label"])
    ex.to_parquet(esci_dir / EXAMPLES_FILE, index=False)
    with pytest.raises(SchemaError) as ei:
        ingest(esci_dir, tmp_path / "y", adapter="esci")
    assert ei.value.missing == ["esci_label"] and "query_id" in ei.value.found
    assert ei.value.file.endswith(EXAMPLES_FILE)


def test_esci_options_as_adapter_args(esci_dir, tmp_path):
    args = {"locale": ["US", "es"], "version": "large", "split": "Train", "id_scheme": "locale", "only_judged": True,
            "grades": {"e": 2, "s": 1, "c": 0, "i": 0}, "limit": 4,
            "products_file": PRODUCTS_FILE, "examples_file": str(esci_dir / EXAMPLES_FILE)}
    cat = ingest(esci_dir, tmp_path / "a", adapter="esci", adapter_args=args)
    # only_judged keeps the us products judged in the train split; the es one is not judged there
    assert list(cat.products["product_id"]) == ["us:B1", "us:B2"]
    assert cat.qrels.to_dict("records") == [{"query_id": "1", "product_id": "us:B1", "grade": 2},
                                            {"query_id": "1", "product_id": "us:B2", "grade": 1}]
    assert list(cat.queries["split"]) == ["train"]
    rep = cat.report["adapter_args"]
    assert rep["locale"] == ["us", "es"] and rep["split"] == "train" and rep["limit"] == 4 and "id_scheme" not in rep

    # limit stops reading product rows (judgments of the others are skipped, not rejected)
    cat = ingest(esci_dir, tmp_path / "lim", adapter="esci", limit=2)
    assert list(cat.products["product_id"]) == ["us:B1", "us:B2"]
    assert cat.report["qrels"]["skipped"] == 2 and cat.report["qrels"]["rejected"] == 1  # the bad label


def test_esci_options_model():
    from fusionrank.ingest.adapters.esci import EsciOptions

    o = EsciOptions(locale="JP")
    assert o.locale == "jp" and o.grades == ESCI_GRADES and o.id_scheme == "locale" and o.limit is None
    assert EsciOptions(products_file="", examples_file=" ").products_file is None
    with pytest.raises(ValueError):
        EsciOptions(locle="jp")


def test_esci_options_from_the_cli(esci_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from fusionrank.cli import app

    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["ingest", str(esci_dir), "-o", str(out), "--adapter", "esci", "--json",
                                 "--option", 'locale=["ES", "jp"]', "--option", "split=test", "--option", "only_judged=true",
                                 "--option", 'grades={"E": 1, "S": 1, "C": 1, "I": 0}', "--option", "id_scheme=plain",
                                 "--option", f"products_file={PRODUCTS_FILE}", "--option", "limit=5"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["adapter_args"] == {"locale": ["es", "jp"], "split": "test", "only_judged": True, "id_scheme": "plain",
                                   "grades": {"E": 1, "S": 1, "C": 1, "I": 0}, "limit": 5, "products_file": PRODUCTS_FILE}
    cat = Catalog.load(out)
    assert list(cat.products["product_id"]) == ["B1", "B3"]
    assert sorted(cat.qrels["grade"]) == [0, 1]
