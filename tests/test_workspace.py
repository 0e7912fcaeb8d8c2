"""Workspaces keyed by their source's content, the content store they share, and check_encoded."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import fusionrank.workspace as workspace_mod
from fusionrank.encode import EncodeSettings, encode_catalog
from fusionrank.errors import StaleArtefactError
from fusionrank.ingest import ingest
from fusionrank.store import EmbeddingStore
from fusionrank.workspace import Workspace, check_encoded, source_fingerprint

FAST = dict(transcriber=None, projection=None)
TEXT_IMAGE = ["text", "image"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty FUSIONRANK_HOME of this test's own."""
    h = tmp_path / "home"
    monkeypatch.setenv("FUSIONRANK_HOME", str(h))
    return h


def _counts(summary: dict) -> dict[str, tuple[int, int, int, int]]:
    """feature -> (present, encoded, cached, shared)"""
    return {j["feature"]: (j["present"], j["encoded"], j["cached"], j["shared"]) for j in summary["jobs"]}


def _prepare(ws: Workspace):
    """Ingest (if needed) and encode text + photos as train does; returns (catalog, encode summary, log lines)."""
    logs: list[str] = []
    cat = ws.catalog(log=logs.append, check_media=False)
    s = ws.encode(cat.products, EncodeSettings(**FAST), log=logs.append, progress=False, modalities=TEXT_IMAGE)
    return cat, s, logs


# --- content keys ----------------------------------------------------------------------------------
def test_fingerprint_follows_the_content_not_the_path(tiny_catalog, tmp_path, write_products, make_jpeg):
    d, rows = tiny_catalog(n=3)
    fp = source_fingerprint(d)
    link = tmp_path / "link"
    link.symlink_to(d)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(d, copy)
    assert source_fingerprint(link) == source_fingerprint(copy) == fp
    assert source_fingerprint(d / "products.jsonl") == source_fingerprint(copy / "products.jsonl") != fp
    (copy / "NOTES.md").write_text("not a table")
    assert source_fingerprint(copy) == fp
    make_jpeg(copy / "img" / "extra.jpg")                 # media are counted, not read
    assert source_fingerprint(copy) != fp
    (copy / "img" / "extra.jpg").unlink()
    rows[1]["title"] = "Purple silk tie"
    write_products(copy, rows)
    assert source_fingerprint(copy) != fp
    assert source_fingerprint(tmp_path / "missing") is None


def test_same_source_through_a_symlink_or_a_copy_is_not_prepared_again(tiny_catalog, tmp_path, home):
    d, _ = tiny_catalog(n=4)
    ws = Workspace(d, "native")
    _, s1, logs = _prepare(ws)
    assert any("ingesting" in m for m in logs)
    assert _counts(s1)["title.minilm"] == (4, 4, 0, 0) and _counts(s1)["image.efficientnet_lite0"] == (4, 4, 0, 0)
    rec = json.loads((ws.root / "workspace.json").read_text())
    assert rec["fingerprint"] == source_fingerprint(d) and rec["source"] == str(d) and rec["adapter"] == "native"

    link = tmp_path / "mnt" / "same-data"                 # another path, another folder name
    link.parent.mkdir()
    link.symlink_to(d)
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    for other in (link, copy):
        ws2 = Workspace(other, "native")
        assert (ws2.root, ws2.catalog_dir, ws2.store_dir) == (ws.root, ws.catalog_dir, ws.store_dir)
        cat2, s2, logs2 = _prepare(ws2)
        assert not any("ingesting" in m for m in logs2), other
        assert {f: c[1] for f, c in _counts(s2).items()} == dict.fromkeys(_counts(s1), 0), other   # nothing encoded
        assert all(j["cached"] == j["present"] for j in s2["jobs"])
        assert all(p.startswith(str(other) + os.sep) for p in cat2.products["image"])   # the photos of the folder asked for
    assert sorted(p.name for p in home.iterdir()) == ["content", ws.root.name]
    assert Workspace(link, "native", limit=2).root != ws.root       # another limit: another workspace
    assert Workspace(d, "fashion44k").root != ws.root               # another adapter too


def test_a_moved_source_keeps_its_workspace(tiny_catalog, tmp_path, home):
    d, _ = tiny_catalog(n=3)
    ws = Workspace(d, "native")
    _prepare(ws)
    moved = tmp_path / "moved"
    shutil.move(d, moved)
    ws2 = Workspace(moved, "native")
    assert ws2.root == ws.root
    cat2, s2, logs = _prepare(ws2)
    assert not any("ingesting" in m for m in logs)
    assert all(p.startswith(str(moved)) and Path(p).exists() for p in cat2.products["image"])
    assert all(j["encoded"] == 0 and j["failed"] == 0 for j in s2["jobs"])


def test_a_second_catalogue_reuses_the_vectors_of_the_products_it_shares(tiny_catalog, home):
    a, _ = tiny_catalog(n=6, name="a")
    b, _ = tiny_catalog(n=8, name="b")       # p0..p5 as in "a" (same texts, same photo bytes), p6 and p7 new
    wa, wb = Workspace(a, "native"), Workspace(b, "native")
    assert wa.root != wb.root
    _, sa, _ = _prepare(wa)
    cat_b, sb, _ = _prepare(wb)
    cb = _counts(sb)
    assert cb["title.minilm"] == (8, 2, 6, 6)                  # only the 2 new titles are encoded
    assert cb["image.efficientnet_lite0"] == (8, 2, 6, 6)      # and the 2 new photos
    assert cb["description.minilm"] == (2, 0, 2, 2)
    # title_sparse: 4 equal their title (reused within the store), 3 come from "a", p7's ("7 item") is new
    assert cb["title_sparse.minilm"] == (8, 1, 7, 3)
    ids = cat_b.products["product_id"].tolist()
    for f in ("title.minilm", "title_sparse.minilm", "image.efficientnet_lite0"):
        va, ma = EmbeddingStore(wa.store_dir).matrix(f, ids[:6])
        vb, mb = EmbeddingStore(wb.store_dir).matrix(f, ids)
        assert ma.all() and mb.all() and np.array_equal(va, vb[:6]), f
        ha, hb = EmbeddingStore(wa.store_dir).hashes(f), EmbeddingStore(wb.store_dir).hashes(f)
        assert {k: hb[k] for k in ha} == ha, f


def test_workspaces_from_before_fingerprints_are_kept(tiny_catalog, tmp_path, home):
    d, _ = tiny_catalog(n=3)
    # a folder named <source>-full, as a run before fingerprints left it (no workspace.json)
    full = home / f"{d.name}-full"
    ingest(d, full / "catalog", check_media=False)
    ws = Workspace(d, "native")
    assert ws.root == full
    rec = json.loads((full / "workspace.json").read_text())     # the fingerprint is recorded now
    assert rec["fingerprint"] == source_fingerprint(d) and rec["source"] == str(d)
    link = tmp_path / "link"
    link.symlink_to(d)
    assert Workspace(link, "native").root == full               # and found by it from another path
    # a <name>-full folder of another source of the same name is not taken
    other, _ = tiny_catalog(n=2, name=f"x/{d.name}")
    assert Workspace(other, "native").root != full

    # the path-keyed layout: <name>-<tag>-sha1(path|adapter|limit)[:8]
    home2 = tmp_path / "home2"
    old = home2 / f"{d.name}-full-{hashlib.sha1(f'{d.resolve()}|native|None'.encode()).hexdigest()[:8]}"
    ingest(d, old / "catalog", check_media=False)
    ws = Workspace(d, "native", home=home2)
    assert ws.root == old and json.loads((old / "workspace.json").read_text())["key"]
    cat, s, logs = _prepare(ws)
    assert not any("ingesting" in m for m in logs)


def test_trained_projection_stays_in_its_workspace(tiny_workspace, tiny_fashion, fusionrank_home):
    """Text and photo vectors go to the shared content store; the per-catalogue projection does not."""
    from fixtures_fashion import tiny_config_dict
    from fusionrank.experiment import ExperimentConfig

    ws, cat = tiny_workspace
    content = fusionrank_home / "content"
    names = {p.name for p in content.glob("*.sqlite")}
    assert {"minilm.sqlite", "efficientnet_lite0.sqlite"} <= names
    assert not names & {"image_projection.sqlite", "pca.sqlite"}
    store = EmbeddingStore(ws.store_dir)
    assert store.exists("image_proj.title") and (ws.store_dir / "models" / "image_projection.title").is_dir()
    cfg = ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root))
    check_encoded(cat.products, ws.store_dir, cfg.encode_settings(), cfg.modalities)


# --- check_encoded ---------------------------------------------------------------------------------
@pytest.fixture
def encoded(tiny_catalog, tmp_path):
    """(source dir, rows, catalog dir, store dir, settings, products): text + photos of 6 products, encoded."""
    d, rows = tiny_catalog(n=6)
    cat, store = tmp_path / "cat", tmp_path / "store"
    products = ingest(d, cat, check_media=False).products
    settings = EncodeSettings(**FAST)
    encode_catalog(products, store, settings, modalities=TEXT_IMAGE, progress=False, catalog_dir=cat)
    return d, rows, cat, store, settings, products


def _stale(products, store, settings, modalities=TEXT_IMAGE) -> StaleArtefactError:
    with pytest.raises(StaleArtefactError) as e:
        check_encoded(products, store, settings, modalities)
    return e.value


def test_check_encoded_passes_on_a_fresh_store(encoded, monkeypatch):
    d, rows, cat, store, settings, products = encoded
    with monkeypatch.context() as m:     # the store is as encode left it: not a single text is hashed
        m.setattr(workspace_mod, "text_hashes", lambda *a: pytest.fail("hashed row by row"))
        check_encoded(products, store, settings, TEXT_IMAGE)
    check_encoded(products, store, settings, ["text"])
    check_encoded(products.iloc[2:], store, settings, TEXT_IMAGE)     # a subset, row by row: other rows are ignored
    (store / "manifest.json").unlink()                                # a store from before manifests: row by row
    check_encoded(products, store, settings, TEXT_IMAGE)


def test_check_encoded_names_a_missing_feature_and_the_command(encoded):
    d, rows, cat, store, settings, products = encoded
    (store / "image.efficientnet_lite0.parquet").unlink()
    e = _stale(products, store, settings)
    assert e.problems == ["image.efficientnet_lite0: not encoded"] and e.store == str(store)
    assert e.command.startswith(f"fusionrank encode {cat} --store {store} --modalities text,image --config ENCODE.toml")
    assert '"transcriber": null' in e.command                  # the settings that differ from the defaults
    msg = str(e)
    assert "image.efficientnet_lite0: not encoded" in msg and e.command in msg and "fusionrank train --config" in msg
    # encoded with other settings is as good as missing
    other = EncodeSettings(image={"name": "efficientnet_lite0", "args": {"resolution": 64}}, **FAST)
    e = _stale(products, store, other, ["text"] + ["image"])
    assert e.problems == ["image.efficientnet_lite0: not encoded"]
    encode_catalog(products, store, other, modalities=["image"], progress=False)
    e = _stale(products, store, settings)
    assert len(e.problems) == 1 and e.problems[0].startswith("image.efficientnet_lite0: encoded with other encoder settings")
    # no store at all
    e = _stale(products, store.parent / "nothing", settings)
    assert e.problems == [f"the store {store.parent / 'nothing'} does not exist"]


def test_check_encoded_sees_a_title_changed_after_encoding(encoded, write_products):
    d, rows, cat, store, settings, products = encoded
    rows[1]["title"] = "Purple silk tie"
    write_products(d, rows)
    products = ingest(d, cat, check_media=False).products
    e = _stale(products, store, settings)
    assert e.problems == ["title.minilm: the text of 1 product changed since it was encoded (e.g. p1)"]
    assert "fusionrank encode" in str(e)
    encode_catalog(products, store, settings, modalities=TEXT_IMAGE, progress=False)
    check_encoded(products, store, settings, TEXT_IMAGE)


def test_check_encoded_sees_an_added_product(encoded, write_products, make_jpeg):
    d, rows, cat, store, settings, products = encoded
    rows.append({"product_id": "p6", "title": "Grey linen trousers", "image": "img/p6.jpg"})
    make_jpeg(d / "img" / "p6.jpg", (90, 90, 90), pattern=7)
    write_products(d, rows)
    products = ingest(d, cat, check_media=False).products
    e = _stale(products, store, settings)
    assert e.problems == ["title.minilm: 1 product not encoded (e.g. p6)",
                          "image.efficientnet_lite0: 1 product with a photo not encoded (e.g. p6)"]
    encode_catalog(products, store, settings, modalities=TEXT_IMAGE, progress=False)
    check_encoded(products, store, settings, TEXT_IMAGE)


def test_check_encoded_accepts_recorded_failures(tiny_catalog, tmp_path):
    d, _ = tiny_catalog(n=3)
    (d / "img" / "p1.jpg").write_bytes(b"not a photo")
    products = ingest(d, tmp_path / "cat", check_media=False).products
    store, settings = tmp_path / "store", EncodeSettings(**FAST)
    s = encode_catalog(products, store, settings, modalities=TEXT_IMAGE, progress=False)
    assert s["failures"] == 1
    check_encoded(products, store, settings, TEXT_IMAGE)
    (store / "manifest.json").unlink()                                # recorded in failures.jsonl only
    check_encoded(products, store, settings, TEXT_IMAGE)
    (store / "failures.jsonl").unlink()                               # not recorded anywhere: missing
    assert _stale(products, store, settings).problems == ["image.efficientnet_lite0: 1 product with a photo not encoded (e.g. p1)"]


def test_check_encoded_sees_a_trained_feature_left_behind(tiny_catalog, tmp_path, make_jpeg):
    d, _ = tiny_catalog(n=6)
    products = ingest(d, tmp_path / "cat", check_media=False).products
    store = tmp_path / "store"
    pca = EncodeSettings(pca={"features": ["image.efficientnet_lite0"], "n_components": 2}, **FAST)
    encode_catalog(products, store, pca, modalities=TEXT_IMAGE, progress=False)
    assert EmbeddingStore(store).exists("image.efficientnet_lite0.pca2")
    check_encoded(products, store, pca, TEXT_IMAGE)
    make_jpeg(d / "img" / "p3.jpg", (0, 0, 250), pattern=42)     # a new photo, encoded without the PCA job
    encode_catalog(products, store, EncodeSettings(**FAST), modalities=TEXT_IMAGE, progress=False)
    check_encoded(products, store, EncodeSettings(**FAST), TEXT_IMAGE)
    e = _stale(products, store, pca)
    assert e.problems == ["image.efficientnet_lite0.pca2: 1 product not derived from the current "
                          "image.efficientnet_lite0 rows (e.g. p3)"]
