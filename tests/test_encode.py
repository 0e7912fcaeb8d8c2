"""encode_catalog: content-hash caching, text reuse across fields, audio, and bad rows end to end."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from fusionrank.encode import EncodeSettings, Encoding, encode_catalog, field_values
from fusionrank.encoders import EfficientNetLite0Encoder, MiniLMEncoder
from fusionrank.engine import LocalEngine
from fusionrank.errors import FusionrankError
from fusionrank.ingest import ingest
from fusionrank.store import EmbeddingStore

FAST = dict(transcriber=None, projection=None)
TEXT_IMAGE = ["text", "image"]


def _jobs(summary: dict) -> dict[str, dict]:
    return {j["feature"]: j for j in summary["jobs"]}


def _counts(summary: dict) -> dict[str, tuple[int, int, int, int]]:
    """feature -> (present, encoded, cached, failed)"""
    return {f: (j["present"], j["encoded"], j["cached"], j["failed"]) for f, j in _jobs(summary).items()}


class CountingEngine(LocalEngine):
    """The local engine, recording how many items each encoder was actually given."""

    def __init__(self):
        self.seen: dict[str, list] = {}

    def map(self, encoder, items, batch_size, desc="", progress=True):
        self.seen.setdefault(desc, []).extend(items)
        return super().map(encoder, items, batch_size, desc=desc, progress=False)


def test_field_values_reads_columns_and_attributes():
    df = pd.DataFrame({"product_id": ["a", "b", "c"], "title": ["x", " ", None],
                       "attributes": [{"title_sparse": "s"}, {}, {"title_sparse": ""}]})
    t, ts = field_values(df, "title"), field_values(df, "title_sparse")
    assert t.iloc[0] == "x" and t.iloc[1:].isna().all()          # blank and missing are both missing
    assert ts.iloc[0] == "s" and ts.iloc[1:].isna().all()


def test_only_changed_products_are_reencoded(tiny_catalog, tmp_path, write_products, make_jpeg):
    d, rows = tiny_catalog(n=6)
    cat = tmp_path / "cat"
    store = tmp_path / "store"
    settings = EncodeSettings(**FAST)
    products = ingest(d, cat, check_media=False).products

    s1 = encode_catalog(products, store, settings, modalities=TEXT_IMAGE, progress=False)
    assert _counts(s1) == {
        "title.minilm": (6, 6, 0, 0),
        "title_sparse.minilm": (6, 3, 3, 0),     # even products: title_sparse == title, reused
        "description.minilm": (2, 2, 0, 0),
        "image.efficientnet_lite0": (6, 6, 0, 0),
    }
    assert s1["failures"] == 0 and not (store / "failures.jsonl").exists()
    assert json.loads((store / "encode_summary.json").read_text()) == s1
    st = EmbeddingStore(store)
    ids = [r["product_id"] for r in rows]
    first = {f: st.matrix(f, ids)[0] for f in st.features()}
    # stored vectors are what the encoders give
    np.testing.assert_allclose(first["title.minilm"], MiniLMEncoder().encode([r["title"] for r in rows]), atol=1e-5)
    t_sp, m_sp = st.matrix("title_sparse.minilm", ids)
    assert m_sp.all() and np.array_equal(t_sp[[0, 2, 4]], first["title.minilm"][[0, 2, 4]])
    assert st.matrix("description.minilm", ids)[1].tolist() == [True, True, False, False, False, False]

    # nothing changed -> nothing encoded
    s2 = encode_catalog(products, store, settings, modalities=TEXT_IMAGE, progress=False)
    assert {f: c[1] for f, c in _counts(s2).items()} == dict.fromkeys(_counts(s1), 0)
    assert {f: c[2] for f, c in _counts(s2).items()} == {f: c[0] for f, c in _counts(s1).items()}

    # change one title and (another product's) photo bytes, same path
    rows[1]["title"] = "Purple silk tie"
    write_products(d, rows)
    make_jpeg(d / "img" / "p4.jpg", (250, 250, 0), pattern=99)
    products = ingest(d, cat, check_media=False).products
    s3 = encode_catalog(products, store, settings, modalities=TEXT_IMAGE, progress=False)
    assert _counts(s3) == {
        "title.minilm": (6, 1, 5, 0),
        "title_sparse.minilm": (6, 0, 6, 0),
        "description.minilm": (2, 0, 2, 0),
        "image.efficientnet_lite0": (6, 1, 5, 0),
    }
    st = EmbeddingStore(store)
    title, _ = st.matrix("title.minilm", ids)
    img, _ = st.matrix("image.efficientnet_lite0", ids)
    others = [0, 2, 3, 4, 5]
    assert np.array_equal(title[others], first["title.minilm"][others])
    np.testing.assert_allclose(title[1], MiniLMEncoder().encode(["Purple silk tie"])[0], atol=1e-5)
    assert not np.allclose(title[1], first["title.minilm"][1])
    assert np.array_equal(np.delete(img, 4, 0), np.delete(first["image.efficientnet_lite0"], 4, 0))
    np.testing.assert_allclose(img[4], EfficientNetLite0Encoder().encode([str(d / "img" / "p4.jpg")])[0], rtol=1e-4, atol=1e-4)

    # remove a product: its rows go from every feature
    s4 = encode_catalog(products[products["product_id"] != "p0"], store, settings, modalities=TEXT_IMAGE, progress=False)
    assert all(c[1] == 0 and c[3] == 0 for c in _counts(s4).values())
    st = EmbeddingStore(store)
    for f in ("title.minilm", "title_sparse.minilm", "description.minilm", "image.efficientnet_lite0"):
        assert "p0" not in set(st.load(f).ids), f
    assert sorted(st.load("title.minilm").ids) == ids[1:]
    assert list(st.load("description.minilm").ids) == ["p1"]


def test_identical_texts_are_encoded_once(tiny_catalog, tmp_path, write_products):
    d, rows = tiny_catalog(n=4)
    for r in rows:
        r["title_sparse"] = r["title"]
    rows[3]["title"] = rows[2]["title"]            # a duplicate title within the field
    rows[3]["title_sparse"] = rows[2]["title"]
    write_products(d, rows)
    products = ingest(d, tmp_path / "cat", check_media=False).products
    eng = CountingEngine()
    run = Encoding(EmbeddingStore(tmp_path / "store"), eng, EncodeSettings(**FAST), progress=False)
    a = run.encode_text_field(products, "title")
    b = run.encode_text_field(products, "title_sparse")
    seen = {k: v for k, v in eng.seen.items() if v}
    assert seen == {"title.minilm": [r["title"] for r in rows[:3]]}    # 3 distinct texts, encoded once each
    assert (a.encoded, a.cached, b.encoded, b.cached) == (4, 0, 0, 4)
    st = run.store
    ids = [r["product_id"] for r in rows]
    t, _ = st.matrix("title.minilm", ids)
    s, _ = st.matrix("title_sparse.minilm", ids)
    assert np.array_equal(t, s) and np.array_equal(t[2], t[3])


def test_encoder_change_invalidates_cache(tiny_catalog, tmp_path):
    d, _ = tiny_catalog(n=3)
    products = ingest(d, tmp_path / "cat", check_media=False).products
    store = tmp_path / "store"
    s1 = encode_catalog(products, store, EncodeSettings(**FAST), modalities=["image"], progress=False)
    s2 = encode_catalog(products, store, EncodeSettings(image={"name": "efficientnet_lite0", "args": {"resolution": 64}}, **FAST),
                        modalities=["image"], progress=False)
    assert _counts(s1)["image.efficientnet_lite0"] == _counts(s2)["image.efficientnet_lite0"] == (3, 3, 0, 0)
    assert EmbeddingStore(store).load("image.efficientnet_lite0").meta["signature"] == \
        EfficientNetLite0Encoder(resolution=64).signature()


def test_photo_that_turns_bad_loses_its_old_vector(tiny_catalog, tmp_path):
    """A product whose new photo cannot be encoded must not keep serving the old photo's vector."""
    d, rows = tiny_catalog(n=3)
    products = ingest(d, tmp_path / "cat", check_media=False).products
    store = tmp_path / "store"
    encode_catalog(products, store, EncodeSettings(**FAST), modalities=["image"], progress=False)
    (d / "img" / "p1.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    (d / "img" / "p2.jpg").unlink()
    s = encode_catalog(products, store, EncodeSettings(**FAST), modalities=["image"], progress=False)
    assert _counts(s)["image.efficientnet_lite0"] == (3, 0, 1, 2)
    _, mask = EmbeddingStore(store).matrix("image.efficientnet_lite0", ["p0", "p1", "p2"])
    assert mask.tolist() == [True, False, False]


def test_audio_logmel_only(tiny_catalog, tmp_path):
    d, rows = tiny_catalog(n=4, audio=(1, 2))
    products = ingest(d, tmp_path / "cat", check_media=False).products
    store = tmp_path / "store"
    settings = EncodeSettings(transcriber=None, projection=None)
    s1 = encode_catalog(products, store, settings, modalities=["audio"], progress=False)
    assert _counts(s1) == {"audio.logmel_stats": (2, 2, 0, 0)}
    v, mask = EmbeddingStore(store).matrix("audio.logmel_stats", ["p0", "p1", "p2", "p3"])
    assert mask.tolist() == [False, True, True, False] and v.shape == (4, 107) and not v[[0, 3]].any()
    np.testing.assert_allclose(v[1:3, -1], np.log([0.5, 0.6]), atol=1e-3)   # log duration of the clips
    s2 = encode_catalog(products, store, settings, modalities=["audio"], progress=False)
    assert _counts(s2) == {"audio.logmel_stats": (2, 0, 2, 0)}


def test_transcripts_of_real_speech(real_clips, tmp_path, write_products):
    rows = [{"product_id": f"r{i}", "title": f"Product {i}", "audio": str(p)} for i, p in enumerate(real_clips)]
    rows.append({"product_id": "silent", "title": "No audio"})
    src = write_products(tmp_path / "src", rows)
    products = ingest(src, tmp_path / "cat").products
    store = tmp_path / "store"
    s = encode_catalog(products, store, EncodeSettings(audio_features=None, projection=None), modalities=["audio"], progress=False)
    assert _counts(s) == {"audio.whisper_tiny_en": (2, 2, 0, 0), "transcript.minilm": (2, 2, 0, 0)}
    st = EmbeddingStore(store)
    texts = st.text_map("audio.whisper_tiny_en")
    assert set(texts) == {"r0", "r1"} and all(len(t.split()) >= 3 for t in texts.values())
    v, mask = st.matrix("transcript.minilm", ["r0", "r1", "silent"])
    assert mask.tolist() == [True, True, False]
    np.testing.assert_allclose(v[:2], MiniLMEncoder().encode([texts["r0"], texts["r1"]]), atol=1e-5)


def test_bad_rows_end_to_end(tmp_path, make_jpeg, make_audio, truncate, write_products, read_jsonl):
    d = tmp_path / "batch"
    for i in range(3):
        make_jpeg(d / "img" / f"good{i}.jpg", (40 * i, 100, 200), pattern=i + 1)
    (d / "img" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(500))
    make_audio(d / "snd" / "good.ogg", seconds=0.5)
    truncate(make_audio(tmp_path / "long.ogg", seconds=1.0), d / "snd" / "cut.ogg", keep=0.5)
    rows = [
        {"product_id": "good1", "title": "Red cotton shirt", "image": "img/good0.jpg", "audio": "snd/good.ogg"},
        {"product_id": "good2", "title": "Blue jeans", "image": "img/good1.jpg"},
        {"product_id": "badimg", "title": "Corrupt photo", "image": "img/corrupt.jpg", "audio": "snd/good.ogg"},
        {"product_id": "cutsnd", "title": "Cut clip", "image": "img/good2.jpg", "audio": "snd/cut.ogg"},
        {"product_id": None, "title": "No id", "image": "img/good0.jpg"},
        {"product_id": "nofile", "title": "Missing photo", "image": "img/absent.jpg"},
    ]
    src = write_products(d, rows)
    cat = tmp_path / "cat"
    products = ingest(src, cat, adapter="native", check_media=False).products
    assert list(products["product_id"]) == ["good1", "good2", "badimg", "cutsnd", "nofile"]
    rejects = read_jsonl(cat / "rejects.jsonl")
    assert len(rejects) == 1 and rejects[0]["row"] == 4 and rejects[0]["reason"] == "missing product id"

    store = tmp_path / "store"
    s = encode_catalog(products, store, EncodeSettings(transcriber=None, projection=None), progress=False)
    assert _counts(s) == {
        "title.minilm": (5, 5, 0, 0),
        "image.efficientnet_lite0": (5, 3, 0, 2),
        "audio.logmel_stats": (3, 2, 0, 1),
    }
    assert s["failures"] == 3 and s["failures_file"] == str(store / "failures.jsonl")
    fails = {(r["feature"], r["product_id"]): r["reason"] for r in read_jsonl(store / "failures.jsonl")}
    assert set(fails) == {("image.efficientnet_lite0", "badimg"), ("image.efficientnet_lite0", "nofile"),
                          ("audio.logmel_stats", "cutsnd")}
    assert "cannot decode image" in fails[("image.efficientnet_lite0", "badimg")]
    assert "absent.jpg" in fails[("image.efficientnet_lite0", "nofile")]
    assert "cannot decode audio" in fails[("audio.logmel_stats", "cutsnd")]
    st = EmbeddingStore(store)
    ids = list(products["product_id"])
    assert st.matrix("title.minilm", ids)[1].all()
    assert st.matrix("image.efficientnet_lite0", ids)[1].tolist() == [True, True, False, True, False]
    assert st.matrix("audio.logmel_stats", ids)[1].tolist() == [True, False, True, False, False]
    # good1 and badimg share a clip: one decode, two rows with the same vector
    a, _ = st.matrix("audio.logmel_stats", ["good1", "badimg"])
    assert np.array_equal(a[0], a[1])
    # a rerun retries the failed items (and fails them again) but re-encodes nothing else
    s2 = encode_catalog(products, store, EncodeSettings(transcriber=None, projection=None), progress=False)
    assert {f: (c[1], c[3]) for f, c in _counts(s2).items()} == {
        "title.minilm": (0, 0), "image.efficientnet_lite0": (0, 2), "audio.logmel_stats": (0, 1)}


def test_settings_from_dict():
    s = EncodeSettings.from_dict({"text_fields": ["title"], "transcriber": None})
    assert s.text_fields == ("title",) and s.transcriber is None
    with pytest.raises(FusionrankError, match="unknown encode setting.*'txt'"):
        EncodeSettings.from_dict({"txt": {}})


# --- values shared across stores through the content store --------------------------------------
def test_stores_share_encoded_values_through_the_content_store(tiny_catalog, tmp_path):
    """A second store holding some of the same products takes their values from the content store:
    its encoder is only given the new inputs, and the values are the ones the first store holds."""
    from fusionrank.store import ContentStore

    a, _ = tiny_catalog(n=6, name="a")
    b, _ = tiny_catalog(n=8, name="b")        # p0..p5 as in "a" (same titles, same photo bytes), p6, p7 new
    pa = ingest(a, tmp_path / "cat_a", check_media=False).products
    pb = ingest(b, tmp_path / "cat_b", check_media=False).products
    content = tmp_path / "home" / "content"
    settings = EncodeSettings(**FAST)
    s1 = encode_catalog(pa, tmp_path / "store_a", settings, modalities=TEXT_IMAGE, progress=False, content_dir=content)
    assert all(j["shared"] == 0 for j in s1["jobs"]) and s1["content_store"] == str(content)
    assert ContentStore(content).count("minilm") > 0 and ContentStore(content).count("efficientnet_lite0") == 6

    eng = CountingEngine()
    run = Encoding(EmbeddingStore(tmp_path / "store_b"), eng, settings, progress=False, content=ContentStore(content))
    t, i = run.encode_text_field(pb, "title"), run.encode_media(pb, "image", settings.image, "image")
    assert (t.present, t.encoded, t.cached, t.shared) == (8, 2, 6, 6)
    assert (i.present, i.encoded, i.cached, i.shared) == (8, 2, 6, 6)
    assert eng.seen["title.minilm"] == pb["title"].tolist()[6:]
    assert [os.path.basename(p) for p in eng.seen["image.efficientnet_lite0"]] == ["p6.jpg", "p7.jpg"]
    ids = pb["product_id"].tolist()
    for f in ("title.minilm", "image.efficientnet_lite0"):
        va, ma = EmbeddingStore(tmp_path / "store_a").matrix(f, ids[:6])
        vb, mb = EmbeddingStore(tmp_path / "store_b").matrix(f, ids)
        assert ma.all() and mb.all() and np.array_equal(va, vb[:6]), f
    # and the new products' values are shared from now on
    assert not ContentStore(content).missing("efficientnet_lite0", EmbeddingStore(tmp_path / "store_b").hashes("image.efficientnet_lite0").values())


def test_a_store_encoded_before_the_content_store_fills_it(tiny_catalog, tmp_path):
    from fusionrank.store import ContentStore

    d, _ = tiny_catalog(n=4)
    products = ingest(d, tmp_path / "cat", check_media=False).products
    settings, content = EncodeSettings(**FAST), tmp_path / "content"
    encode_catalog(products, tmp_path / "old", settings, modalities=["image"], progress=False, content_dir=None)
    assert not content.exists()
    s = encode_catalog(products, tmp_path / "old", settings, modalities=["image"], progress=False, content_dir=content)
    assert _counts(s)["image.efficientnet_lite0"] == (4, 0, 4, 0)                 # nothing encoded ...
    assert ContentStore(content).count("efficientnet_lite0") == 4                 # ... and its values shared
    s2 = encode_catalog(products, tmp_path / "new", settings, modalities=["image"], progress=False, content_dir=content)
    assert _jobs(s2)["image.efficientnet_lite0"]["shared"] == 4 and _counts(s2)["image.efficientnet_lite0"] == (4, 0, 4, 0)


def test_content_store_only_for_stores_under_the_home(tiny_catalog, tmp_path, monkeypatch):
    d, _ = tiny_catalog(n=2)
    products = ingest(d, tmp_path / "cat", check_media=False).products
    home = tmp_path / "home"
    monkeypatch.setenv("FUSIONRANK_HOME", str(home))
    s = encode_catalog(products, tmp_path / "elsewhere", EncodeSettings(**FAST), modalities=["text"], progress=False)
    assert "content_store" not in s and not (home / "content").exists()
    s = encode_catalog(products, home / "ws" / "store", EncodeSettings(**FAST), modalities=["text"], progress=False)
    assert s["content_store"] == str((home / "content").resolve()) and (home / "content" / "minilm.sqlite").exists()


def test_manifest_records_each_feature(tiny_catalog, tmp_path, make_jpeg):
    from fusionrank.encode import read_manifest

    d, rows = tiny_catalog(n=3)
    (d / "img" / "p2.jpg").write_bytes(b"not a photo")
    products = ingest(d, tmp_path / "cat", check_media=False).products
    store = tmp_path / "store"
    encode_catalog(products, store, EncodeSettings(**FAST), modalities=["text"], progress=False, catalog_dir=tmp_path / "cat")
    encode_catalog(products, store, EncodeSettings(**FAST), modalities=["image"], progress=False)
    m = read_manifest(store)
    assert m["catalog_dir"] == str(tmp_path / "cat")                   # kept from the first run
    assert set(m["features"]) == {"title.minilm", "title_sparse.minilm", "description.minilm", "image.efficientnet_lite0"}
    img = m["features"]["image.efficientnet_lite0"]
    assert img["failed"] == ["p2"] and img["signature"] == EfficientNetLite0Encoder().signature() and img["present"] == 3
    st = (store / "image.efficientnet_lite0.parquet").stat()
    assert img["file"] == [st.st_size, st.st_mtime_ns, st.st_ino]
    assert [r["modalities"] for r in m["runs"]] == [["text"], ["image"]]
    # the failure is fixed: the failures file goes, the manifest follows
    make_jpeg(d / "img" / "p2.jpg", (1, 2, 3), pattern=5)
    s = encode_catalog(products, store, EncodeSettings(**FAST), modalities=["image"], progress=False)
    assert s["failures"] == 0 and not (store / "failures.jsonl").exists()
    assert read_manifest(store)["features"]["image.efficientnet_lite0"]["failed"] == []


def test_cross_fitted_projection_in_the_store_and_for_a_new_product(tiny_fashion, tmp_path):
    """Each stored photo vector comes from the projection of its title's fold; a product sent later gets the same."""
    from fusionrank import schema as S
    from fusionrank.encoders import Encoder, fold_of
    from fusionrank.serving.products import ProductEncoder
    from fusionrank.workspace import Workspace

    cat = Workspace(tiny_fashion.root, "fashion44k").catalog(log=lambda m: None)
    products = cat.products.head(160).reset_index(drop=True)
    settings = EncodeSettings(image={"name": "efficientnet_lite0", "args": {"resolution": 32}}, transcriber=None,
                              audio_features=None, projection={"name": "image_projection", "args": {"epochs": 1, "folds": 2}})
    encode_catalog(products, tmp_path / "store", settings, modalities=TEXT_IMAGE, progress=False)
    store = EmbeddingStore(tmp_path / "store")
    proj = Encoder.load(store.root / "models" / "image_projection.title")
    assert proj.folds == 2 and [h["fold"] for h in proj.history_] == [0, 1]
    ids = products[S.PRODUCT_ID].tolist()
    X, xm = store.matrix("image.efficientnet_lite0", ids)
    V, vm = store.matrix("image_proj.title", ids)
    assert xm.sum() > 100 and np.array_equal(vm, xm)  # every photo projected, nothing else
    folds = [fold_of(t, 2) for t in products[S.TITLE]]
    assert set(folds) == {0, 1}
    np.testing.assert_allclose(V[xm], proj.encode([(f, x) for f, x, m in zip(folds, X, xm) if m]), atol=1e-6)
    # encoding again reuses every row (the fold is part of the content key)
    again = encode_catalog(products, store.root, settings, modalities=TEXT_IMAGE, progress=False)
    assert _counts(again)["image_proj.title"][1] == 0
    # PUT of a product: the same vector as the catalogue's row with that title and photo
    i = int(np.flatnonzero(xm)[3])
    row = products.iloc[i]
    pe = ProductEncoder(S.TITLE, settings, store.root, media_dirs=[str(tiny_fashion.root)])
    _, _, vectors, _ = pe.encode({S.PRODUCT_ID: "new-1", S.TITLE: row[S.TITLE], S.IMAGE: row[S.IMAGE]})
    np.testing.assert_allclose(vectors["image_proj"], V[i], atol=1e-5)
    # a model whose config names another projection (one, not two folds: another config was trained on the
    # catalogue since) does not project the photo with the store's, and says why
    single = EncodeSettings(image=settings.image, transcriber=None, audio_features=None,
                            projection={"name": "image_projection", "args": {"epochs": 1}})
    pe1 = ProductEncoder(S.TITLE, single, store.root, media_dirs=[str(tiny_fashion.root)])
    _, _, vectors, report = pe1.encode({S.PRODUCT_ID: "new-2", S.TITLE: row[S.TITLE], S.IMAGE: row[S.IMAGE]})
    assert vectors["image_proj"] is None and report["modalities"]["image"] is False
    assert "not encoded: the store's image->text projection is not this model's (folds 2 where the model's config " \
           "says 1)" in report["image"]
    # the store check knows the fold is part of what a projected photo is derived from (it used to call every
    # row stale, so `fusionrank train` failed after fitting a model on a cross-fitted store)
    from fusionrank.errors import StaleArtefactError
    from fusionrank.workspace import check_encoded

    check_encoded(products, store.root, settings, TEXT_IMAGE)
    moved = products.copy()
    j = next(j for j in np.flatnonzero(xm) if fold_of(products[S.TITLE][j] + " x", 2) != folds[j])
    moved.loc[j, S.TITLE] = products[S.TITLE][j] + " x"  # a new title in another fold: its photo needs the other model
    with pytest.raises(StaleArtefactError, match="image_proj.title: 1 product not derived"):
        check_encoded(moved, store.root, settings, TEXT_IMAGE)
