"""A batch with corrupt media and a missing id: good rows come through, bad ones are reported."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from fusionrank.errors import FusionrankError
from fusionrank.ingest import Catalog, ingest


@pytest.fixture
def batch(tmp_path, make_jpeg, make_audio, truncate):
    """Rows (relative media paths) and the folder holding the media."""
    d = tmp_path / "batch"
    make_jpeg(d / "img" / "good.jpg")
    (d / "img").mkdir(exist_ok=True)
    (d / "img" / "random.jpg").write_bytes(os.urandom(600))
    truncate(make_jpeg(tmp_path / "big.jpg", (10, 120, 240), size=(96, 96)), d / "img" / "cut.jpg", keep=0.4)
    make_audio(d / "snd" / "good.ogg")
    make_audio(d / "snd" / "good.wav")
    (d / "snd" / "garbage.ogg").write_bytes(b"OggS" + os.urandom(400))
    truncate(make_audio(tmp_path / "long.ogg", seconds=1.0), d / "snd" / "cut.ogg", keep=0.5)
    rows = [
        {"product_id": "good1", "title": "Good one", "image": "img/good.jpg", "audio": "snd/good.ogg"},
        {"product_id": "good2", "title": "Good two", "description": "text only"},
        {"product_id": "badimg", "title": "Random bytes photo", "image": "img/random.jpg", "audio": "snd/good.wav"},
        {"product_id": "cutimg", "title": "Cut photo", "image": "img/cut.jpg"},
        {"product_id": "badsnd", "title": "Garbage clip", "image": "img/good.jpg", "audio": "snd/garbage.ogg"},
        {"product_id": "cutsnd", "title": "Cut clip", "audio": "snd/cut.ogg"},
        {"product_id": None, "title": "No id", "image": "img/good.jpg"},
        {"product_id": "nofile", "title": "Missing photo", "image": "img/absent.jpg"},
    ]
    return d, rows


def _write(d, rows, fmt):
    if fmt == "jsonl":
        p = d / "products.jsonl"
        p.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows))
    else:
        p = d / "products.csv"
        pd.DataFrame(rows, columns=["product_id", "title", "description", "image", "audio"]).to_csv(p, index=False)
    return p


MEDIA_BAD = {("badimg", "image"), ("cutimg", "image"), ("badsnd", "audio"), ("cutsnd", "audio"), ("nofile", "image")}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_bad_batch_drop_field(batch, tmp_path, fmt, read_rejects, assert_balanced):
    d, rows = batch
    src = _write(d, rows, fmt)
    out = tmp_path / f"out_{fmt}"
    cat = ingest(src, out, adapter="native")
    p = cat.products.set_index("product_id")
    assert list(p.index) == ["good1", "good2", "badimg", "cutimg", "badsnd", "cutsnd", "nofile"]
    assert p.loc["good1", "image"] == str(d / "img" / "good.jpg") and p.loc["good1", "audio"] == str(d / "snd" / "good.ogg")
    for pid, fld in MEDIA_BAD:
        assert pd.isna(p.loc[pid, fld]), (pid, fld)
    assert p.loc["badimg", "audio"] == str(d / "snd" / "good.wav")   # only the bad field goes
    assert p.loc["badsnd", "image"] == str(d / "img" / "good.jpg")

    rep = json.loads((out / "report.json").read_text())
    assert rep == json.loads(json.dumps(cat.report))
    assert_balanced(rep)
    pr = rep["products"]
    assert (pr["read"], pr["kept"], pr["rejected"], pr["media_dropped"]) == (8, 7, 1, 5)
    assert pr["read"] == pr["kept"] + pr["rejected"] + pr["merged_duplicates"] + pr["skipped"]
    assert pr["fixed"] >= 5
    assert pr["media_reasons"]["image: image unreadable"] == 2 and pr["media_reasons"]["audio: audio unreadable"] == 2
    assert pr["media_reasons"]["image: image file not found"] == 1

    rejects = read_rejects(out)
    media = {(r["record"]["product_id"], r["field"]): r for r in rejects if r["kind"] == "media"}
    assert set(media) == MEDIA_BAD
    order = {r["product_id"]: i for i, r in enumerate(rows)}
    for (pid, fld), r in media.items():
        assert r["file"] == str(src) and r["row"] == order[pid]
        assert r["reason"]
    assert "unreadable" in media[("cutimg", "image")]["reason"]
    prod = [r for r in rejects if r["kind"] == "product"]
    assert len(prod) == 1 and prod[0]["row"] == 6 and prod[0]["field"] == "product_id"
    assert prod[0]["reason"] == "missing product id"

    back = Catalog.load(out)
    assert len(back.products) == 7 and pd.isna(back.products.set_index("product_id").loc["cutimg", "image"])


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_bad_batch_reject_row(batch, tmp_path, fmt, read_rejects, assert_balanced):
    d, rows = batch
    src = _write(d, rows, fmt)
    out = tmp_path / f"rej_{fmt}"
    cat = ingest(src, out, adapter="native", on_bad_media="reject_row")
    assert list(cat.products["product_id"]) == ["good1", "good2"]
    pr = cat.report["products"]
    assert_balanced(cat.report)
    assert (pr["read"], pr["kept"], pr["rejected"], pr["media_dropped"]) == (8, 2, 6, 0)
    rejects = read_rejects(out)
    assert all(r["kind"] == "product" for r in rejects)
    fields = {r["record"].get("product_id") or None: r["field"] for r in rejects}  # CSV: "" for no id
    assert fields == {None: "product_id", "badimg": "image", "cutimg": "image", "badsnd": "audio",
                      "cutsnd": "audio", "nofile": "image"}


def test_check_media_off_and_bad_option(batch, tmp_path):
    d, rows = batch
    src = _write(d, rows, "jsonl")
    cat = ingest(src, tmp_path / "nocheck", adapter="native", check_media=False)
    assert len(cat.products) == 7 and cat.report["products"]["media_dropped"] == 0
    with pytest.raises(FusionrankError, match="on_bad_media"):
        ingest(src, tmp_path / "x", adapter="native", on_bad_media="ignore")
