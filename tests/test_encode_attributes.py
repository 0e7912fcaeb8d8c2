"""The photo colour job of ``fusionrank encode`` and where its colours go: the catalogue's BM25 title text, PUT, the config.

On the tiny fashion data every photo is drawn in the colour its title names; ``title_sparse`` drops the colour
word of every even product (all of which have a photo).
"""
from __future__ import annotations

import numpy as np
import pytest

from fusionrank import schema as S
from fusionrank.encode import EncodeSettings, encode_catalog, indexed_titles, inputs_digest, read_manifest
from fusionrank.encoders import Encoder
from fusionrank.encoders.attributes import (colour_classes, colour_evidence, colour_head_dir, photo_colour_feature,
                                            photo_colour_proba_feature, title_colour)
from fusionrank.errors import FusionrankError
from fusionrank.store import EmbeddingStore

TEXT_IMAGE = ["text", "image"]
HEAD = {"name": "colour_head", "args": {"threshold": 0.3, "min_examples": 5, "C": 1.0, "valid_fraction": 0.2}}


def settings(attributes=HEAD) -> EncodeSettings:
    return EncodeSettings(image={"name": "efficientnet_lite0", "args": {"resolution": 32}}, transcriber=None,
                          audio_features=None, projection=None, attributes=attributes)


@pytest.fixture(scope="module")
def encoded(tiny_fashion, fusionrank_home, tmp_path_factory):
    """(products, store, encode summary, attrs) of the tiny catalogue encoded with the colour head on."""
    from fusionrank.workspace import Workspace

    products = Workspace(tiny_fashion.root, "fashion44k").catalog(log=lambda m: None).products
    store = tmp_path_factory.mktemp("colour") / "store"
    logs: list[str] = []
    summary = encode_catalog(products, store, settings(), modalities=TEXT_IMAGE, progress=False, content_dir=None, log=logs.append)
    return products, EmbeddingStore(store), summary, tiny_fashion.attrs.set_index("product_id"), logs


def test_the_feature_holds_only_products_whose_title_states_no_colour(encoded):
    products, store, summary, attrs, logs = encoded
    ids = products[S.PRODUCT_ID].tolist()
    _, has_photo = store.matrix("image.efficientnet_lite0", ids)
    for tf in ("title", "title_sparse"):
        colourless = {p for p, t, m in zip(ids, indexed_titles(products, tf), has_photo) if m and title_colour(t) == ""}
        assert set(store.text_map(photo_colour_feature(tf))) == colourless
    sparse = store.text_map(photo_colour_feature("title_sparse"))
    assert len(sparse) == 60 and store.text_map(photo_colour_feature("title")) == {}  # every full title names its colour
    # the photos are the colour the full title names: the head reads most of them
    right = [attrs.loc[p, "colour"].lower() == c for p, c in sparse.items() if c]
    assert len(right) >= 45 and np.mean(right) >= 0.9
    assert any("trained colour head (title_sparse)" in m and "held-out accuracy" in m for m in logs)


def test_each_head_trains_on_its_own_title_field_only(encoded):
    products, store, _, _, _ = encoded
    ids = products[S.PRODUCT_ID].tolist()
    _, has_photo = store.matrix("image.efficientnet_lite0", ids)
    eff, hist = store.hashes("image.efficientnet_lite0"), store.hashes("image.colour_histogram")
    img = {p: f"{eff[p]}|{hist[p]}" for p in eff}  # the head reads both photo features (its default inputs)
    for tf, n in (("title", 110), ("title_sparse", 50)):
        head = Encoder.load(colour_head_dir(store.root, tf))
        colour = [title_colour(t) for t in indexed_titles(products, tf)]
        train = [i for i, c in enumerate(colour) if has_photo[i] and c]
        assert len(train) == n and head.history_["examples"] == n
        # the head records exactly which (photo, colour) pairs of this field it learned from
        assert head.trained_on_ == inputs_digest([img[ids[i]] for i in train], [colour[i] for i in train])
    assert Encoder.load(colour_head_dir(store.root, "title")).trained_on_ != \
        Encoder.load(colour_head_dir(store.root, "title_sparse")).trained_on_


def test_encoding_again_reuses_the_head_and_every_row(encoded, tmp_path):
    products, store, _, _, _ = encoded
    sig = Encoder.load(colour_head_dir(store.root, "title_sparse")).signature()
    again = encode_catalog(products, store.root, settings(), modalities=TEXT_IMAGE, progress=False, content_dir=None)
    job = {j["feature"]: j for j in again["jobs"]}[photo_colour_feature("title_sparse")]
    assert job["encoded"] == 0 and job["cached"] == 60
    assert Encoder.load(colour_head_dir(store.root, "title_sparse")).signature() == sig
    assert read_manifest(store.root)["features"][photo_colour_feature("title_sparse")]["encoder"] == "colour_head"


def test_off_by_default(encoded, tmp_path):
    products = encoded[0]
    assert EncodeSettings().attributes is None
    encode_catalog(products.head(24), tmp_path / "store", settings(None), modalities=TEXT_IMAGE, progress=False, content_dir=None)
    st = EmbeddingStore(tmp_path / "store")
    assert not any(f.startswith("photo_colour.") for f in st.features())
    assert not (tmp_path / "store" / "models").exists()


def test_too_few_examples_is_recorded_as_skipped(encoded, tmp_path):
    products = encoded[0]
    strict = {"name": "colour_head", "args": {"min_examples": 500}}
    encode_catalog(products, tmp_path / "store", settings(strict), modalities=TEXT_IMAGE, progress=False, content_dir=None)
    skipped = read_manifest(tmp_path / "store")["skipped"]
    assert "fewer than 2 colours" in skipped[photo_colour_feature("title_sparse")]["reason"]


def test_a_wrong_encoder_is_an_error_naming_the_valid_one(encoded, tmp_path):
    with pytest.raises(FusionrankError, match="valid: colour_head"):
        encode_catalog(encoded[0].head(12), tmp_path / "s", settings({"name": "minilm", "args": {}}), modalities=TEXT_IMAGE,
                       progress=False, content_dir=None)


def test_catalogue_lexical_text_includes_the_photo_colour(encoded):
    from fusionrank.ranking import CatalogConfig, CatalogTables, VectorConfig

    products, store, _, _, _ = encoded
    colours = store.text_map(photo_colour_feature("title_sparse"))
    cfg = dict(title_field="title_sparse", ann=VectorConfig(codec="exact"))
    on = CatalogTables.from_store(products, store, CatalogConfig(**cfg, photo_attributes=True), log=lambda m: None)
    off = CatalogTables.from_store(products, store, CatalogConfig(**cfg), log=lambda m: None)
    expanded = 0
    for pid, row in on.row_of.items():
        title = on.records["indexed_title"][row]
        assert off.lex_text["title"][row] == title  # off: the title as it is
        if colours.get(pid):
            assert on.lex_text["title"][row] == f"{title} {colours[pid]}"
            expanded += 1
        else:
            assert on.lex_text["title"][row] == title
    assert expanded >= 45
    # BM25 now finds an expanded product by its colour
    pid = next(p for p, c in colours.items() if c == "red")
    rows, _ = on.lexical["title"].score(on.lexical["title"].query_terms("red")).arrays()
    assert on.row_of[pid] in set(rows.tolist())
    rows, _ = off.lexical["title"].score(off.lexical["title"].query_terms("red")).arrays()
    assert off.row_of[pid] not in set(rows.tolist())


def test_the_colour_table_holds_the_title_colour_or_the_photo_probabilities(encoded):
    """photo_colour_proba.<field> holds the head's probabilities for exactly the products photo_colour covers; the
    catalogue's colour table reads them where the title states no colour, and the title's colours elsewhere."""
    from fusionrank.ranking import CatalogConfig, CatalogTables, VectorConfig

    products, store, _, attrs, _ = encoded
    feat = photo_colour_proba_feature("title_sparse")
    probas = store.load(feat)
    assert set(probas.ids) == set(store.text_map(photo_colour_feature("title_sparse")))
    assert probas.vectors.shape == (len(probas.ids), len(colour_classes()))
    np.testing.assert_allclose(probas.vectors.sum(1), 1.0, atol=1e-4)
    cfg = dict(title_field="title_sparse", ann=VectorConfig(codec="exact"))
    on = CatalogTables.from_store(products, store, CatalogConfig(**cfg, photo_attributes=True), log=lambda m: None)
    off = CatalogTables.from_store(products, store, CatalogConfig(**cfg), log=lambda m: None)
    P = dict(zip(probas.ids, probas.vectors))
    red = colour_classes().index("red")
    right = 0
    for pid, row in on.row_of.items():
        title = on.records["indexed_title"][row]
        if pid in P:
            np.testing.assert_allclose(on.emb["colour"][row], P[pid], rtol=1e-6)
            assert not off.emb_mask["colour"][row] and not off.emb["colour"][row].any()  # off: unknown
            right += attrs.loc[pid, "colour"] == "Red" and P[pid].argmax() == red
        else:
            np.testing.assert_array_equal(on.emb["colour"][row], colour_evidence(title))
            np.testing.assert_array_equal(off.emb["colour"][row], colour_evidence(title))
    assert right >= 1  # every photo is drawn in its colour: the head reads red photos as red


def test_a_store_without_the_feature_is_an_error_naming_the_command(encoded, tmp_path):
    from fusionrank.ranking import CatalogConfig, CatalogTables, VectorConfig

    products, store, _, _, _ = encoded
    bare = EmbeddingStore(tmp_path / "bare")
    f = store.load("title.minilm")
    bare.write("title.minilm", list(f.ids), list(f.hashes), vectors=f.vectors, meta=f.meta)
    with pytest.raises(FusionrankError, match=r"no 'photo_colour.title' feature.*fusionrank encode"):
        CatalogTables.from_store(products, bare, CatalogConfig(ann=VectorConfig(codec="exact"), photo_attributes=True),
                                 log=lambda m: None)


def test_put_gets_the_same_expansion_as_the_catalogue(encoded, tiny_fashion):
    from fusionrank.serving.products import ProductEncoder

    products, store, _, attrs, _ = encoded
    colours = store.text_map(photo_colour_feature("title_sparse"))
    pe = ProductEncoder("title_sparse", settings(), store.root, media_dirs=[str(tiny_fashion.root)])
    sent = 0
    for _, row in products.iterrows():
        pid = row[S.PRODUCT_ID]
        if not colours.get(pid) or sent >= 3:
            continue
        sparse = row[S.ATTRIBUTES]["title_sparse"]
        record, lex, _, report = pe.encode({S.PRODUCT_ID: f"new-{pid}", S.TITLE: row[S.TITLE], "title_sparse": sparse,
                                            S.IMAGE: row[S.IMAGE]})
        assert record["indexed_title"] == sparse and report["photo_colour"] == colours[pid]
        assert lex["title"] == f"{sparse} {colours[pid]}"
        sent += 1
    assert sent == 3
    # a title that states its colour is not expanded; nor is any title with the head off
    row = products.iloc[1]
    _, lex, _, report = pe.encode({S.PRODUCT_ID: "new-x", S.TITLE: row[S.TITLE], S.IMAGE: row[S.IMAGE]})
    assert lex["title"] == row[S.TITLE] and "photo_colour" not in report
    pid = next(p for p, c in colours.items() if c)
    row = products.set_index(S.PRODUCT_ID).loc[pid]
    off = ProductEncoder("title_sparse", settings(None), store.root, media_dirs=[str(tiny_fashion.root)])
    _, lex, _, _ = off.encode({S.PRODUCT_ID: "new-y", S.TITLE: row[S.TITLE], "title_sparse": row[S.ATTRIBUTES]["title_sparse"],
                               S.IMAGE: row[S.IMAGE]})
    assert lex["title"] == row[S.ATTRIBUTES]["title_sparse"]


def test_experiment_config_turns_it_on(tiny_fashion):
    from fixtures_fashion import tiny_config_dict
    from fusionrank.experiment import ExperimentConfig

    plain = ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root))
    assert plain.encode_settings().attributes is None and not plain.catalog_config().photo_attributes
    d = tiny_config_dict(tiny_fashion.root, modalities=["text"])
    d["encoders"]["attributes"] = HEAD
    cfg = ExperimentConfig.model_validate(d)
    assert cfg.encode_settings().attributes == HEAD and cfg.catalog_config("title_sparse").photo_attributes
    assert "image" in cfg.encoded_modalities()  # the head reads photos even when the ranker does not
    d["encoders"]["attributes"] = {"name": "colour_head", "args": {"treshold": 0.5}}
    with pytest.raises(Exception, match="treshold.*valid: inputs, threshold"):
        ExperimentConfig.model_validate(d)


def test_a_put_product_is_indexed_with_its_photo_colour(encoded, tiny_fashion):
    """PUT -> the serving index: the new product's BM25 title text carries the colour, and a colour query finds it."""
    from fusionrank.ranking import CatalogConfig, VectorConfig
    from fusionrank.serving import SearchIndex
    from fusionrank.serving.products import ProductEncoder

    products, store, _, attrs, _ = encoded
    colours = store.text_map(photo_colour_feature("title_sparse"))
    idx = SearchIndex.from_store(products, store, CatalogConfig(title_field="title_sparse", ann=VectorConfig(codec="exact"),
                                                                photo_attributes=True), log=lambda m: None)
    pid = next(p for p, c in colours.items() if c == "red" and attrs.loc[p, "colour"] == "Red")
    row = products.set_index(S.PRODUCT_ID).loc[pid]
    sparse = row[S.ATTRIBUTES]["title_sparse"]
    pe = ProductEncoder("title_sparse", settings(), store.root, media_dirs=[str(tiny_fashion.root)])
    record, lex, vectors, _ = pe.encode({S.PRODUCT_ID: "put-red", S.TITLE: row[S.TITLE], "title_sparse": sparse, S.IMAGE: row[S.IMAGE]})
    new = idx.upsert(record, lex, vectors)
    assert idx.lex_text["title"][new] == f"{sparse} red" == idx.lex_text["title"][idx.row_of[pid]]
    # the same colour evidence as the catalogue product with that photo and title
    np.testing.assert_allclose(idx.emb["colour"][new], idx.emb["colour"][idx.row_of[pid]], rtol=1e-5, atol=1e-6)
    assert idx.emb_mask["colour"][new] and idx.emb["colour"][new].argmax() == colour_classes().index("red")
    rows, _ = idx.lexical["title"].score(idx.lexical["title"].query_terms("red")).arrays()
    assert new in set(rows.tolist())


def test_settings_signature_is_unchanged_while_the_head_is_off():
    import hashlib
    import json
    from dataclasses import asdict

    from fusionrank.encode import settings_signature

    before = {k: v for k, v in asdict(EncodeSettings()).items() if k != "attributes"}  # the settings as they were
    assert settings_signature(EncodeSettings()) == hashlib.sha1(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert settings_signature(EncodeSettings(attributes=HEAD)) != settings_signature(EncodeSettings())
