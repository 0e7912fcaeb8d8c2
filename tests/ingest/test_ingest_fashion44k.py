"""fashion44k adapter on a tiny synthetic copy of its layout (not the real 44k data)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fusionrank.ingest import Catalog, ingest, with_title_field


@pytest.fixture
def f44k_dir(tmp_path, make_jpeg, make_audio, truncate):
    d = tmp_path / "fashion44k"
    make_jpeg(d / "images" / "1.jpg", (200, 0, 0))
    make_jpeg(d / "images" / "2.jpg", (0, 0, 200))
    truncate(make_jpeg(tmp_path / "full.jpg", (0, 200, 0), size=(64, 64)), d / "images" / "3.jpg", keep=0.5)
    make_audio(d / "audio" / "1.ogg")
    truncate(make_audio(tmp_path / "full.ogg"), d / "audio" / "3.ogg", keep=0.5)
    pd.DataFrame([
        ("1", "Puma Men Red T-shirt", "Puma Men T-shirt", "Apparel", "images/1.jpg", "audio/1.ogg"),
        ("2", "Nike Blue Shoes", "Nike Blue Shoes", "Footwear", "images/2.jpg", None),
        ("3", "Fossil Green Watch", "Fossil Watch", "Accessories", "images/3.jpg", "audio/3.ogg"),
        ("4", "Lotus Cream", "Lotus Cream", "Personal Care", None, None),
    ], columns=["product_id", "title", "title_sparse", "master_category", "image", "audio"]).to_parquet(
        d / "products.parquet", index=False)
    (d / "queries_train.tsv").write_text("query_id\tquery\nq1\tred tshirt for men\nq2\tgreen watch\n")
    (d / "qrels_train.tsv").write_text("query_id\tproduct_id\tgrade\nq1\t1\t3\nq1\t2\t1\nq2\t3\t3\nq2\t77\t2\n")
    return d


def test_fashion44k(f44k_dir, tmp_path, read_rejects, assert_balanced):
    out = tmp_path / "out"
    cat = ingest(f44k_dir, out, adapter="fashion44k")
    assert_balanced(cat.report)
    p = cat.products.set_index("product_id")
    assert list(p.index) == ["1", "2", "3", "4"]
    assert p.loc["1", "category"] == "Apparel"
    assert p.loc["1", "attributes"] == {"title_sparse": "Puma Men T-shirt"}
    assert p.loc["1", "image"] == str(f44k_dir / "images" / "1.jpg") and Path(p.loc["1", "image"]).is_absolute()
    assert p.loc["1", "audio"] == str(f44k_dir / "audio" / "1.ogg")
    assert pd.isna(p.loc["4", "image"]) and pd.isna(p.loc["2", "audio"])
    # the truncated photo and clip of product 3 are dropped, its text kept
    assert pd.isna(p.loc["3", "image"]) and pd.isna(p.loc["3", "audio"])
    rep = cat.report["products"]
    assert rep["media_dropped"] == 2 and rep["kept"] == 4 and rep["rejected"] == 0
    media = {r["field"]: r for r in read_rejects(out) if r["kind"] == "media"}
    assert set(media) == {"image", "audio"}
    assert media["image"]["row"] == 2 and media["image"]["file"].endswith("products.parquet")
    assert "image unreadable" in media["image"]["reason"] and "audio unreadable" in media["audio"]["reason"]

    assert cat.queries.to_dict("records") == [
        {"query_id": "q1", "query": "red tshirt for men", "split": "train"},
        {"query_id": "q2", "query": "green watch", "split": "train"}]
    assert cat.qrels.to_dict("records") == [
        {"query_id": "q1", "product_id": "1", "grade": 3}, {"query_id": "q1", "product_id": "2", "grade": 1},
        {"query_id": "q2", "product_id": "3", "grade": 3}]
    unknown = [r for r in read_rejects(out) if r["kind"] == "qrel"]
    assert len(unknown) == 1 and unknown[0]["row"] == 3 and unknown[0]["field"] == "product_id"

    sparse = with_title_field(Catalog.load(out).products, "title_sparse")
    assert sparse.set_index("product_id").loc["1", "title"] == "Puma Men T-shirt"


def test_fashion44k_limit_and_reject_row(f44k_dir, tmp_path):
    cat = ingest(f44k_dir, tmp_path / "lim", adapter="fashion44k", limit=2)
    assert list(cat.products["product_id"]) == ["1", "2"]
    assert cat.report["qrels"]["kept"] == 2 and cat.report["qrels"]["skipped"] == 2
    assert cat.report["qrels"]["rejected"] == 0
    cat = ingest(f44k_dir, tmp_path / "rej", adapter="fashion44k", on_bad_media="reject_row")
    assert list(cat.products["product_id"]) == ["1", "2", "4"]
    assert cat.report["products"]["rejected"] == 1
    # the judgment of the rejected product is rejected too, never kept dangling
    assert "3" not in set(cat.qrels["product_id"])


def test_fashion44k_options(f44k_dir, tmp_path):
    (f44k_dir / "queries_test.tsv").write_text("query_id\tquery\nq9\tblue shoes\n")
    (f44k_dir / "qrels_test.tsv").write_text("query_id\tproduct_id\tgrade\nq9\t2\t3\n")
    # the default splits are train and dev (no dev files here): the test files are not read
    cat = ingest(f44k_dir, tmp_path / "default", adapter="fashion44k", check_media=False)
    assert set(cat.queries["split"]) == {"train"}
    cat = ingest(f44k_dir, tmp_path / "test", adapter="fashion44k", check_media=False,
                 adapter_args={"splits": ["test"], "limit": 3})
    assert list(cat.products["product_id"]) == ["1", "2", "3"]
    assert cat.queries.to_dict("records") == [{"query_id": "q9", "query": "blue shoes", "split": "test"}]
    assert cat.qrels.to_dict("records") == [{"query_id": "q9", "product_id": "2", "grade": 3}]
    assert cat.report["adapter_args"] == {"splits": ["test"], "limit": 3}
    cat = ingest(f44k_dir, tmp_path / "both", adapter="fashion44k", check_media=False, adapter_args={"splits": ["train", "test"]})
    assert cat.queries["split"].tolist() == ["train", "train", "test"]
    assert cat.report["adapter_args"] == {"splits": ["train", "test"]}
