"""WANDS adapter on small tab-separated files in the published layout."""
from __future__ import annotations

import csv

import pandas as pd
import pytest

from fusionrank.errors import FusionrankError, SchemaError
from fusionrank.ingest import Catalog, ingest
from fusionrank.ingest.adapters.wands import WANDS_GRADES, parse_features

PRODUCT_HEADER = ["product_id", "product_name", "product_class", "category hierarchy", "product_description",
                  "product_features", "rating_count", "average_rating", "review_count"]


def _write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def wands_dir(tmp_path):
    root = tmp_path / "WANDS"
    d = root / "dataset"  # as in the repository: files under dataset/
    _write_tsv(d / "product.csv", PRODUCT_HEADER, [
        ["0", "solid wood platform bed", "Beds", "Furniture / Bedroom Furniture / Beds & Headboards / Beds",
         "good , deep sleep can be quite difficult", "overallwidth-sidetoside:64.7|producttype : platform bed| : gray wood"
         "|features : storage|features : headboard", "15.0", "4.5", "15.0"],
        ["1", "all-clad pizza cutter", "Slicers, Peelers And Graters|Kitchen Tools", "", "", "", "", "", ""],
        ["2", "fletcher 27.5 '' wide polyester armchair", "Accent Chairs",
         "Furniture / Living Room Furniture / Chairs & Seating", 'a "modern" chair, with arms', "rating_count:9", "1746.0", "4.5", "1226.0"],
        ["3", "", "Beds", "Furniture", "no name", "", "", "", ""],
    ])
    _write_tsv(d / "query.csv", ["query_id", "query", "query_class"], [
        ["0", "salon chair", "Massage Chairs"],
        ["1", 'fawkes 36" blue vanity', "Vanities"],
        ["2", "platform bed", "Beds"],
    ])
    _write_tsv(d / "label.csv", ["id", "query_id", "product_id", "label"], [
        ["0", "2", "0", "Exact"],
        ["1", "2", "2", "Irrelevant"],
        ["2", "0", "2", "Partial"],
        ["3", "0", "1", "Maybe"],       # bad label
        ["4", "1", "99", "Exact"],      # unknown product
    ])
    return root


def test_parse_features():
    assert parse_features("a:1|b : two| : x|a : 3|a:1||c:") == {"a": "1 | 3", "b": "two", "other_features": "x"}
    assert parse_features(None) == {} and parse_features("") == {}
    assert parse_features("average_rating:5") == {"feature_average_rating": "5"}


def test_wands(wands_dir, tmp_path, read_rejects, assert_balanced):
    assert WANDS_GRADES == {"Exact": 2, "Partial": 1, "Irrelevant": 0}
    out = tmp_path / "out"
    cat = ingest(wands_dir, out, adapter="wands", check_media=False)
    assert_balanced(cat.report)
    p = cat.products.set_index("product_id")
    assert list(p.index) == ["0", "1", "2"]
    bed = p.loc["0"]
    assert bed["title"] == "solid wood platform bed"
    assert bed["description"] == "good , deep sleep can be quite difficult"
    assert bed["category"] == "Furniture"
    assert bed["attributes"] == {
        "overallwidth-sidetoside": "64.7", "producttype": "platform bed", "other_features": "gray wood",
        "features": "storage | headboard", "product_class": "Beds",
        "category_hierarchy": "Furniture / Bedroom Furniture / Beds & Headboards / Beds",
        "rating_count": "15", "review_count": "15", "average_rating": "4.5",
    }
    cutter = p.loc["1"]  # no hierarchy: category from the first product class
    assert cutter["category"] == "Slicers, Peelers And Graters"
    assert pd.isna(cutter["description"])
    assert cutter["attributes"] == {"product_class": "Slicers, Peelers And Graters|Kitchen Tools"}
    chair = p.loc["2"]
    assert chair["title"] == "fletcher 27.5 '' wide polyester armchair"
    assert chair["description"] == 'a "modern" chair, with arms'
    assert chair["attributes"]["rating_count"] == "1746" and chair["attributes"]["feature_rating_count"] == "9"

    assert dict(zip(cat.queries["query_id"], cat.queries["query"])) == {
        "0": "salon chair", "1": 'fawkes 36" blue vanity', "2": "platform bed"}
    assert sorted(map(tuple, cat.qrels.values.tolist())) == [("0", "2", 1), ("2", "0", 2), ("2", "2", 0)]

    rep = cat.report
    assert rep["products"]["read"] == 4 and rep["products"]["rejected"] == 1
    assert rep["qrels"]["read"] == 5 and rep["qrels"]["kept"] == 3 and rep["qrels"]["rejected"] == 2
    rejects = {(r["kind"], r["row"]): r for r in read_rejects(out)}
    assert rejects[("product", 3)]["field"] == "title"
    lab = rejects[("qrel", 3)]
    assert lab["field"] == "label" and "'Maybe'" in lab["reason"] and lab["file"].endswith("label.csv")
    unk = rejects[("qrel", 4)]
    assert unk["field"] == "product_id" and "unknown product id '99'" in unk["reason"]

    # the catalogue round-trips through its directory
    back = Catalog.load(out)
    assert back.products.set_index("product_id").loc["0", "attributes"] == bed["attributes"]
    assert back.qrels["grade"].tolist() == cat.qrels["grade"].tolist()


def test_wands_options_and_errors(wands_dir, tmp_path):
    cat = ingest(wands_dir / "dataset", tmp_path / "g", adapter="wands", grades={"exact": 1, "partial": 0, "irrelevant": 0})
    assert sorted(cat.qrels["grade"]) == [0, 0, 1]
    cat = ingest(wands_dir, tmp_path / "lim", adapter="wands", limit=1)
    assert list(cat.products["product_id"]) == ["0"]
    assert cat.report["qrels"]["skipped"] == 3  # judgments of products 2 (twice) and 99 lie outside the subset
    with pytest.raises(FusionrankError, match="grades"):
        ingest(wands_dir, tmp_path / "bad", adapter="wands", grades={"Exact": "high"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FusionrankError, match="product.csv not found"):
        ingest(tmp_path / "empty", tmp_path / "x", adapter="wands")
    _write_tsv(wands_dir / "dataset" / "product.csv", ["product_id", "name"], [["0", "bed"]])
    with pytest.raises(SchemaError) as ei:
        ingest(wands_dir, tmp_path / "y", adapter="wands")
    assert ei.value.missing == ["product_name"] and ei.value.found == ["product_id", "name"]


def test_wands_options_as_adapter_args(wands_dir, tmp_path):
    from fusionrank.ingest.adapters.wands import WandsOptions

    args = {"grades": {"EXACT": 3, "partial": 1, "irrelevant": 0}, "limit": 3}
    cat = ingest(wands_dir, tmp_path / "a", adapter="wands", adapter_args=args)
    assert list(cat.products["product_id"]) == ["0", "1", "2"]
    assert sorted(cat.qrels["grade"]) == [0, 1, 3]
    assert cat.report["qrels"]["skipped"] == 1 and cat.report["adapter_args"] == args
    # the typed model works as well as a mapping
    cat = ingest(wands_dir, tmp_path / "b", adapter="wands", adapter_args=WandsOptions(limit=1))
    assert list(cat.products["product_id"]) == ["0"]
    assert WandsOptions().grades == WANDS_GRADES
