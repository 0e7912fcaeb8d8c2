"""encode_safely: one bad item never fails a batch; the bad ones come back with reasons."""
from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp

from fusionrank.encoders import BM25Encoder, EfficientNetLite0Encoder, ItemError, LogMelStats, encode_safely
from fusionrank.encoders.audio import load_audio
from fusionrank.encoders.image import load_image
from fusionrank.errors import NotFittedError


@pytest.fixture(scope="module")
def effnet():
    return EfficientNetLite0Encoder(resolution=64, batch_size=8)


def test_images_with_corrupt_and_missing_file(tmp_path, make_jpeg, truncate, effnet):
    good = [str(make_jpeg(tmp_path / f"g{k}.jpg", c, size=(30, 40), pattern=k + 1))
            for k, c in enumerate([(200, 30, 30), (30, 60, 200), (20, 160, 60)])]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(500))        # JPEG magic, then garbage
    cut = truncate(make_jpeg(tmp_path / "big.jpg", (9, 99, 199), size=(96, 96), pattern=7), tmp_path / "cut.jpg", keep=0.3)
    missing = tmp_path / "absent.jpg"
    items = [good[0], str(corrupt), good[1], str(missing), good[2], str(cut)]

    out = encode_safely(effnet, items)
    assert out.ok.tolist() == [True, False, True, False, True, False]
    assert out.values.shape == (3, 1280) and out.values.dtype == np.float32
    np.testing.assert_allclose(out.values, effnet.encode(good), rtol=1e-4, atol=1e-5)
    assert set(out.errors) == {1, 3, 5}
    for i, reason in out.errors.items():
        assert reason.startswith("ItemError: ") and items[i] in reason and "cannot decode image" in reason
    assert "FileNotFoundError" in out.errors[3]

    # the whole batch is good -> one call, no errors
    ok = encode_safely(effnet, good)
    assert ok.ok.all() and ok.errors == {} and ok.values.shape == (3, 1280)


def test_all_bad_gives_empty_matrix(tmp_path, effnet):
    (tmp_path / "x.jpg").write_bytes(b"not an image")
    out = encode_safely(effnet, [str(tmp_path / "x.jpg"), str(tmp_path / "nope.jpg")])
    assert out.values.shape == (0, 1280) and not out.ok.any() and len(out.errors) == 2


def test_load_image_pads_on_white(tmp_path, make_jpeg):
    p = make_jpeg(tmp_path / "tall.jpg", (0, 0, 0), size=(10, 40))
    x = load_image(str(p), 16)
    assert x.shape == (16, 16, 3) and x.dtype == np.uint8
    assert x[8, 0].min() > 240 and x[8, 8].max() < 30   # white margin left, black product centre
    with pytest.raises(ItemError, match="cannot decode image"):
        load_image(str(tmp_path / "missing.jpg"), 16)


def test_audio_with_truncated_and_empty_clip(tmp_path, make_audio, truncate):
    enc = LogMelStats()
    good = [str(make_audio(tmp_path / "a.ogg", seconds=0.5)), str(make_audio(tmp_path / "b.wav", seconds=0.3))]
    cut = truncate(make_audio(tmp_path / "long.ogg", seconds=1.0), tmp_path / "cut.ogg", keep=0.5)
    tiny = make_audio(tmp_path / "tiny.wav", seconds=0.01)       # shorter than one analysis window
    items = [good[0], str(cut), str(tiny), good[1]]
    out = encode_safely(enc, items)
    assert out.ok.tolist() == [True, False, False, True]
    np.testing.assert_allclose(out.values, enc.encode(good), rtol=1e-5)
    assert "cannot decode audio" in out.errors[1] and "shorter than one analysis window" in out.errors[2]
    with pytest.raises(ItemError, match="cannot decode audio"):
        load_audio(str(cut))


def test_resampling_to_16k(tmp_path, make_audio):
    x = load_audio(str(make_audio(tmp_path / "a.wav", seconds=0.5, sr=8000)))
    assert x.dtype == np.float32 and len(x) == 8000


def test_sparse_encoder_isolates_bad_item():
    enc = BM25Encoder().fit(["red shirt", "blue jeans", "red jeans"])
    out = encode_safely(enc, ["red shirt", 42, "blue jeans"])
    assert out.ok.tolist() == [True, False, True] and list(out.errors) == [1]
    assert sp.issparse(out.values)
    np.testing.assert_allclose(out.values.toarray(), enc.encode(["red shirt", "blue jeans"]).toarray())


def test_not_fitted_is_not_swallowed():
    with pytest.raises(NotFittedError):
        encode_safely(BM25Encoder(), ["a", "b"])
