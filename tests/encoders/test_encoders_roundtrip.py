"""Every registered encoder survives save -> load with identical outputs and signature.

Pretrained encoders use the real models from their PyPI packages; trainable ones
are fitted on tiny synthetic data. Unfitted trainable encoders raise NotFittedError.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from fusionrank.encoders import (ENCODERS, BM25Encoder, EfficientNetLite0Encoder, Encoder, ImageTextProjection,
                                 LogMelStats, MiniLMEncoder, PCAReducer, TfidfEncoder, WhisperTranscriber, build_encoder)
from fusionrank.encoders.audio import load_audio
from fusionrank.errors import FusionrankError, NotFittedError, UnknownNameError

CORPUS = ["Red cotton t-shirt for men", "Blue denim jeans for women", "Black leather wallet, slim",
          "White running shoes for kids", "Green summer dress in cotton", "red red wine glass"]

EXPECTED = {"minilm", "bm25", "tfidf", "efficientnet_lite0", "image_projection", "whisper_tiny_en", "logmel_stats", "pca"}


def test_registry_lists_every_encoder():
    assert set(ENCODERS.names()) == EXPECTED, "new encoder registered: add a round-trip case below"
    with pytest.raises(UnknownNameError) as ei:
        build_encoder("clip")
    assert ei.value.valid == sorted(EXPECTED) and "minilm" in str(ei.value)


def _roundtrip(enc: Encoder, tmp_path, items, same):
    """Save, load twice (by class and via the registry) and compare outputs and signatures."""
    before = enc.encode(items)
    d = enc.save(tmp_path / enc.name)
    meta = json.loads((d / "config.json").read_text())
    assert meta["name"] == enc.name and meta["config"] == enc.config()
    for back in (type(enc).load(d), Encoder.load(d)):
        assert type(back) is type(enc)
        assert back.config() == enc.config()
        assert back.signature() == enc.signature()
        assert back.dim == enc.dim
        same(back.encode(items), before)
    return before


def _allclose(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _same_sparse(a, b):
    assert sp.issparse(a) and a.shape == b.shape
    np.testing.assert_allclose(a.toarray(), b.toarray(), rtol=1e-6, atol=1e-7)


def test_minilm_roundtrip(tmp_path):
    enc = MiniLMEncoder(batch_size=4)
    v = _roundtrip(enc, tmp_path, CORPUS[:3], _allclose)
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert MiniLMEncoder(normalize=False).signature() != enc.signature()


def test_bm25_roundtrip(tmp_path):
    enc = BM25Encoder(k1=1.5, b=0.6).fit(CORPUS)
    W = _roundtrip(enc, tmp_path, CORPUS + ["an unseen shirt"], _same_sparse)
    back = BM25Encoder.load(tmp_path / "bm25")
    assert back.vocab_ == enc.vocab_ and back.avgdl_ == pytest.approx(enc.avgdl_)
    _same_sparse(back.encode_queries(["red shirt", "wallet"]), enc.encode_queries(["red shirt", "wallet"]))
    assert W.shape == (len(CORPUS) + 1, enc.dim)
    # a refit on other data changes the signature (cached vectors must be invalidated)
    assert BM25Encoder(k1=1.5, b=0.6).fit(CORPUS[:3]).signature() != enc.signature()


def test_tfidf_roundtrip(tmp_path):
    enc = TfidfEncoder(ngram_max=2).fit(CORPUS)
    X = _roundtrip(enc, tmp_path, CORPUS, _same_sparse)
    np.testing.assert_allclose(sp.linalg.norm(X, axis=1), 1.0, atol=1e-5)


def test_efficientnet_roundtrip(tmp_path, make_jpeg):
    paths = [str(make_jpeg(tmp_path / f"i{k}.jpg", c, size=(30, 40), pattern=k + 1))
             for k, c in enumerate([(200, 30, 30), (20, 200, 40)])]
    enc = EfficientNetLite0Encoder(resolution=96, batch_size=8)
    v = _roundtrip(enc, tmp_path, paths, _allclose)
    assert v.shape == (2, 1280) and np.isfinite(v).all() and not np.allclose(v[0], v[1])
    assert EfficientNetLite0Encoder(resolution=128).signature() != enc.signature()


def test_image_projection_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 16)).astype(np.float32)
    T = rng.normal(size=(40, 8)).astype(np.float32)
    enc = ImageTextProjection(in_dim=16, out_dim=8, hidden=12, epochs=3, batch_size=16, lr=1e-2).fit(X, T)
    assert len(enc.history_) == 3 and all(np.isfinite(h["train_loss"]) for h in enc.history_)
    v = _roundtrip(enc, tmp_path, X[:5], _allclose)
    assert v.shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert ImageTextProjection.load(tmp_path / "image_projection").history_ == enc.history_
    with pytest.raises(FusionrankError, match=r"\(n, 16\)"):
        ImageTextProjection(in_dim=16, out_dim=8).fit(X[:, :10], T)


def test_cross_fitted_projection_never_projects_a_photo_with_a_model_that_saw_its_title(tmp_path):
    """Each fold's model is trained without the fold's pairs: changing a fold's titles leaves its own model unchanged."""
    from fusionrank.encoders import fold_of

    rng = np.random.default_rng(0)
    titles = [f"title {i % 30}" for i in range(90)]  # duplicates of a title share a fold
    folds = np.array([fold_of(t, 3) for t in titles])
    assert fold_of("Title  3", 3) == fold_of("title 3", 3) and set(folds.tolist()) == {0, 1, 2}
    X = rng.normal(size=(90, 16)).astype(np.float32)
    T = rng.normal(size=(90, 8)).astype(np.float32)
    kw = dict(in_dim=16, out_dim=8, hidden=12, epochs=2, batch_size=16, lr=1e-2, folds=3)
    enc = ImageTextProjection(**kw).fit(X, T, folds_of=folds)
    assert [h["fold"] for h in enc.history_] == [0, 1, 2]
    assert all(h["held_out"] == int((folds == h["fold"]).sum()) and h["trained_on"] == 90 - h["held_out"] for h in enc.history_)
    items = [(int(f), x) for f, x in zip(folds[:6], X[:6])]
    v = _roundtrip(enc, tmp_path, items, _allclose)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # other titles for fold 0's pairs: fold 0's model is the same, the other folds' models change
    T2 = T.copy()
    T2[folds == 0] = rng.normal(size=(int((folds == 0).sum()), 8))
    enc2 = ImageTextProjection(**kw).fit(X, T2, folds_of=folds)
    x0 = [(0, X[0])]
    np.testing.assert_allclose(enc2.encode(x0), enc.encode(x0), atol=1e-6)
    assert not np.allclose(enc2.encode([(1, X[0])]), enc.encode([(1, X[0])]))
    assert enc.signature() != enc2.signature()
    with pytest.raises(FusionrankError, match="fold, features"):
        enc.encode(X[:2])
    with pytest.raises(FusionrankError, match="needs folds_of"):
        ImageTextProjection(**kw).fit(X, T)
    with pytest.raises(FusionrankError, match="at least 1"):
        ImageTextProjection(folds=0)


def test_whisper_roundtrip_on_real_speech(tmp_path, real_clips):
    enc = WhisperTranscriber()
    items = [str(p) for p in real_clips]

    def same_text(a, b):
        assert a == b

    texts = _roundtrip(enc, tmp_path, items, same_text)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    # fashion44k clips are spoken product descriptions: recognisable words come out
    assert all(len(t.split()) >= 3 for t in texts), texts
    assert {"skirt", "shirt"} & set(" ".join(texts).lower().replace("-", " ").replace(".", " ").split()), texts
    assert enc.packs_ok >= 1  # the two short clips were packed into one 30 s window
    # packing assigns each clip its own words: each packed text matches its clip transcribed alone
    words = lambda t: set(t.lower().replace("-", " ").replace(".", " ").replace(",", " ").split())  # noqa: E731
    alone = [words(enc.transcribe_one(load_audio(p))) for p in items]
    packed = [words(t) for t in texts]
    jac = [[len(a & b) / len(a | b) for b in packed] for a in alone]
    assert jac[0][0] > max(0.5, jac[0][1]) and jac[1][1] > max(0.5, jac[1][0]), (alone, texts)


def test_logmel_roundtrip(tmp_path, make_audio):
    items = [str(make_audio(tmp_path / "a.ogg", seconds=0.6)), str(make_audio(tmp_path / "b.wav", seconds=0.3, freq=880.0))]
    enc = LogMelStats(n_mels=20, n_mfcc=8)
    v = _roundtrip(enc, tmp_path, items, _allclose)
    assert v.shape == (2, 2 * 20 + 2 * 8 + 1) and np.isfinite(v).all()
    np.testing.assert_allclose(v[:, -1], np.log([0.6, 0.3]), atol=1e-3)  # last dim: log duration


@pytest.mark.parametrize("whiten", [False, True])
def test_pca_roundtrip(tmp_path, whiten):
    rng = np.random.default_rng(1)
    X = (rng.normal(size=(30, 10)) @ rng.normal(size=(10, 10))).astype(np.float32)
    enc = PCAReducer(n_components=4, whiten=whiten).fit(X)
    v = _roundtrip(enc, tmp_path, X, _allclose)
    assert v.shape == (30, 4)
    assert PCAReducer.load(tmp_path / "pca").explained_variance == pytest.approx(enc.explained_variance)
    with pytest.raises(FusionrankError, match="at least"):
        PCAReducer(n_components=40).fit(X)


def test_load_checks_the_encoder_name(tmp_path):
    d = BM25Encoder().fit(CORPUS).save(tmp_path / "b")
    with pytest.raises(FusionrankError, match="holds encoder 'bm25'"):
        TfidfEncoder.load(d)


@pytest.mark.parametrize("enc, call", [
    (BM25Encoder(), lambda e: e.encode(["x"])),
    (BM25Encoder(), lambda e: e.encode_queries(["x"])),
    (TfidfEncoder(), lambda e: e.encode(["x"])),
    (ImageTextProjection(in_dim=4, out_dim=2), lambda e: e.encode(np.zeros((1, 4), np.float32))),
    (PCAReducer(n_components=2), lambda e: e.encode(np.zeros((1, 4), np.float32))),
    (PCAReducer(n_components=2), lambda e: e.explained_variance),
], ids=["bm25", "bm25-queries", "tfidf", "image_projection", "pca", "pca-variance"])
def test_not_fitted(enc, call, tmp_path):
    with pytest.raises(NotFittedError) as ei:
        call(enc)
    msg = str(ei.value)
    assert type(enc).__name__ in msg and "not fitted" in msg and "fit" in msg and "load" in msg
    assert isinstance(ei.value, ValueError)  # sklearn-style: callers catching ValueError still work
    with pytest.raises(NotFittedError):
        enc.save(tmp_path / "unfitted")


# --- visual attribute heads and the photo features they read -----------------------------------------------------
EXPECTED |= {"colour_head", "colour_histogram"}


def test_colour_histogram_roundtrip(tmp_path, make_jpeg):
    from fusionrank.encoders import ColourHistogram

    paths = [str(make_jpeg(tmp_path / f"c{k}.jpg", c, size=(30, 40), pattern=k + 1))
             for k, c in enumerate([(200, 30, 30), (20, 40, 200)])]
    enc = ColourHistogram(resolution=32)
    v = _roundtrip(enc, tmp_path, paths, _allclose)
    assert v.shape == (2, enc.dim) and not np.allclose(v[0], v[1])
    assert ColourHistogram(hue_bins=6).signature() != enc.signature()


def test_colour_head_roundtrip(tmp_path):
    from fusionrank.encoders import ColourHead

    rng = np.random.default_rng(0)
    centres = np.eye(3, 6, dtype=np.float32) * 3
    X = np.concatenate([c + 0.3 * rng.standard_normal((30, 6)).astype(np.float32) for c in centres])
    enc = ColourHead(min_examples=5, C=1.0).fit(X, ["red"] * 30 + ["blue"] * 30 + ["black"] * 30)

    def same(a, b):
        assert a == b and all(isinstance(t, str) for t in a)

    out = _roundtrip(enc, tmp_path, list(X[::15]), same)
    assert set(out) <= {"red", "blue", "black", ""} and "red" in out
    with pytest.raises(NotFittedError):
        ColourHead().save(tmp_path / "unfitted")
EXPECTED |= {"minilm_adapter"}  # its round trip: tests/encoders/test_encoders_adapter.py
