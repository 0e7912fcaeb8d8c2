"""The colour vocabulary, colour phrases in titles, and the photo colour head."""
from __future__ import annotations

import numpy as np
import pytest

from fusionrank.encoders import ENCODERS, Encoder, ItemError, build_encoder
from fusionrank.encoders.attributes import (COLOURS, ColourHead, ColourProbabilities, canonical_colour, colour_classes,
                                            colour_columns, colour_evidence, colour_head_dir, colour_match,
                                            photo_colour_feature, photo_colour_proba_feature, stated_colours,
                                            title_colour)
from fusionrank.errors import FusionrankError, NotFittedError, UnknownNameError


@pytest.mark.parametrize("text, expected", [
    ("Puma Men Navy Blue T-shirt", ["navy blue"]),            # the longest phrase, not "navy" and "blue"
    ("Nike Women Off-White Shoes", ["off white"]),            # a hyphen splits words as the lexical fields do
    ("BLACK & white Striped Dress", ["black", "white"]),       # case-insensitive, in order
    ("Reddish Bluetooth Goldfish Speaker", []),                # whole words only
    ("Turquoise Blue Kurta and a Blue Dupatta", ["turquoise blue", "blue"]),
    ("multi-coloured scarf", ["multi coloured"]),
    ("", []),
    (None, []),
])
def test_stated_colours_are_longest_whole_word_matches(text, expected):
    assert stated_colours(text) == expected


def test_the_vocabulary_is_defined_once_and_matches_itself():
    assert len(set(COLOURS)) == len(COLOURS)
    for c in COLOURS:  # every phrase, written anywhere in a title, is found as itself
        assert stated_colours(f"Brand {c.title()} Shirt") == [c]


def test_title_colour_is_one_class_or_none():
    assert title_colour("Men Gray Jacket") == "grey" == canonical_colour("Gray") == title_colour("men grey jacket")
    assert title_colour("Navy Shirt") == title_colour("Navy Blue Shirt") == "navy blue"
    assert title_colour("Black Grey Shoes") is None  # several different colours: not a training label
    assert title_colour("Grey Gray Shoes") == "grey"  # one colour, spelt twice
    assert title_colour("Leather Wallet") == ""


def test_feature_and_model_names():
    assert photo_colour_feature("title_sparse") == "photo_colour.title_sparse"
    assert photo_colour_proba_feature("title") == "photo_colour_proba.title"
    assert colour_head_dir("/s", "title").as_posix() == "/s/models/colour_head.title"


def blobs(n_per: int, centres: np.ndarray, seed: int = 0, spread: float = 0.3):
    rng = np.random.default_rng(seed)
    X = np.concatenate([c + spread * rng.standard_normal((n_per, centres.shape[1])) for c in centres]).astype(np.float32)
    return X


NAMES = np.array(["red", "blue", "black"], dtype=object)


@pytest.fixture(scope="module")
def centres():
    c = np.zeros((3, 8), np.float32)
    c[0, 0], c[1, 1], c[2, 2] = 4.0, 4.0, 4.0
    return c


@pytest.fixture(scope="module")
def fitted(centres):
    X = blobs(60, centres)
    y = np.repeat(NAMES, 60)
    return ColourHead(threshold=0.9, min_examples=10, C=1.0).fit(X, y)


def test_head_learns_a_separable_problem(fitted, centres):
    assert fitted.classes_ == sorted(NAMES)
    h = fitted.history_
    assert h["examples"] == 180 and h["classes"] == 3 and h["held_out"] == 18 and h["held_out_accuracy"] == 1.0
    X = blobs(20, centres, seed=1)
    assert fitted.encode(list(X)) == [c for c in NAMES for _ in range(20)]


def test_head_abstains_below_its_threshold(fitted, centres):
    between = centres.mean(0, keepdims=True)  # as far from every colour as from the others
    proba = fitted.predict_proba(between)
    assert proba.max() < 0.9
    assert fitted.encode(between) == [""]
    lax = ColourHead(threshold=0.0, min_examples=10, C=1.0)
    lax.model_ = fitted.model_
    assert lax.encode(between) == [fitted.classes_[int(proba.argmax())]]


def test_rare_classes_are_dropped(centres):
    X = np.concatenate([blobs(40, centres[:2]), blobs(5, centres[2:], seed=3)])
    y = np.array(["red"] * 40 + ["blue"] * 40 + ["black"] * 5, dtype=object)
    head = ColourHead(min_examples=10, C=1.0).fit(X, y)
    assert head.classes_ == ["blue", "red"] and head.history_["dropped_classes"] == {"black": 5}
    with pytest.raises(FusionrankError, match="fewer than 2 colours"):
        ColourHead(min_examples=50).fit(X, y)


def test_save_load_round_trip(fitted, centres, tmp_path):
    fitted.trained_on_ = "digest"
    d = fitted.save(tmp_path / "head")
    back = Encoder.load(d)
    assert isinstance(back, ColourHead) and back.config() == fitted.config() and back.trained_on_ == "digest"
    assert back.signature() == fitted.signature() != ColourHead(threshold=0.9, min_examples=10, C=1.0).signature()
    X = np.concatenate([blobs(5, centres, seed=2), centres.mean(0, keepdims=True)])
    assert back.encode(X) == fitted.encode(X) and back.encode(X)[-1] == ""
    np.testing.assert_array_equal(back.predict_proba(X), fitted.predict_proba(X))
    assert back.history_ == fitted.history_


def test_signature_follows_the_learned_state(centres):
    y = np.repeat(NAMES, 40)
    a = ColourHead(min_examples=10).fit(blobs(40, centres, seed=0), y)
    b = ColourHead(min_examples=10).fit(blobs(40, centres, seed=5), y)
    assert a.signature() != b.signature()


def test_registered_and_checked():
    assert ENCODERS.get("colour_head") is ColourHead
    assert isinstance(build_encoder("colour_head", threshold=0.7), ColourHead)
    with pytest.raises(UnknownNameError, match="colour_head"):
        build_encoder("color_head")
    with pytest.raises(ItemError, match=r"\(n, 8\)"):
        ColourHead(min_examples=10, C=1.0).fit(blobs(20, np.eye(3, 8) * 4), np.repeat(NAMES, 20)).predict_proba(np.zeros((1, 5)))
    with pytest.raises(NotFittedError):
        ColourHead().encode([np.zeros(1280)])
    with pytest.raises(FusionrankError, match="threshold"):
        ColourHead(threshold=1.5)
    with pytest.raises(FusionrankError, match="n labels"):
        ColourHead().fit(np.zeros((4, 5)), ["red"] * 3)
    with pytest.raises(FusionrankError, match="inputs"):
        ColourHead(inputs="efficientnet_lite0")


def test_colour_histogram_sees_the_product_not_the_background(tmp_path):
    from PIL import Image

    from fusionrank.encoders.attributes import ColourHistogram

    enc = ColourHistogram(resolution=40)
    paths = []
    for name, rgb in (("red", (220, 20, 30)), ("blue", (20, 40, 210))):
        im = Image.new("RGB", (40, 40), (255, 255, 255))
        im.paste(Image.new("RGB", (20, 20), rgb), (10, 10))
        paths.append(str(tmp_path / f"{name}.png"))
        im.save(paths[-1])
    H = enc.encode(paths)
    assert H.shape == (2, enc.dim) == (2, 12 * 4 * 4 + 1)
    np.testing.assert_allclose(H[:, :-1].sum(1), 1.0, atol=1e-6)       # a distribution over the product's pixels
    np.testing.assert_allclose(H[:, -1], 0.75, atol=1e-6)              # the white share
    hue = H[:, :-1].reshape(2, 12, 16).sum(2).argmax(1)
    assert hue[0] == 0 and hue[1] in (7, 8)                            # red, blue
    assert ENCODERS.get("colour_histogram") is ColourHistogram and ColourHead().inputs == ["efficientnet_lite0", "colour_histogram"]


# --- colour evidence and the colour_match feature ------------------------------------------------------------------

def test_colour_classes_are_the_canonical_vocabulary():
    cls = colour_classes()
    assert list(cls) == sorted(set(cls)) and "grey" in cls and "gray" not in cls and "navy" not in cls
    assert {canonical_colour(c) for c in COLOURS} == set(cls)
    col = {c: j for j, c in enumerate(cls)}
    assert colour_columns("navy tshirt") == (col["navy blue"],) == colour_columns("Navy Blue T-Shirt")
    assert colour_columns("blue tshirt") == (col["blue"],)  # blue is not navy blue: the grades tell them apart
    assert colour_columns("gray and grey black socks") == (col["grey"], col["black"])
    assert colour_columns("running shoes") == () == colour_columns(None)


def test_colour_evidence_prefers_the_title_then_the_transcript_then_the_photo():
    C, col = len(colour_classes()), {c: j for j, c in enumerate(colour_classes())}
    photo = np.full(C, 1.0 / C, np.float32)
    v = colour_evidence("Black & White Shoes", photo)  # the title's colours, the photo ignored
    assert v[col["black"]] == v[col["white"]] == 1.0 and v.sum() == 2.0
    np.testing.assert_array_equal(colour_evidence("Leather Wallet", photo), photo)
    assert colour_evidence("Leather Wallet") is None
    # the product's own words before its photo: the title, then its transcript
    said = colour_evidence("Leather Wallet", photo, "this wallet comes in tan")
    assert said[col["tan"]] == 1.0 and said.sum() == 1.0
    assert colour_evidence("Black Shoes", photo, "these shoes come in red")[col["red"]] == 0.0
    np.testing.assert_array_equal(colour_evidence("Leather Wallet", photo, "a leather wallet"), photo)
    assert colour_evidence("Leather Wallet", None, "a leather wallet") is None
    with pytest.raises(FusionrankError, match="expected"):
        colour_evidence("Leather Wallet", np.ones(3))


def test_colour_match_reads_the_queried_colour_by_hand():
    C, col = len(colour_classes()), {c: j for j, c in enumerate(colour_classes())}
    E = np.zeros((3, 2, C), np.float32)
    E[0, 0, col["red"]], E[0, 1, col["blue"]] = 0.7, 0.9
    E[1, 0, col["navy blue"]], E[1, 1, col["blue"]] = 1.0, 0.2
    E[2, :, col["red"]] = 1.0
    got = colour_match(["red dress", "blue or navy shirt", "dress"], E)
    np.testing.assert_allclose(got, [[0.7, 0.0], [1.0, 0.2], [0.0, 0.0]])


def test_colour_probabilities_are_the_heads_in_the_class_columns(fitted, centres):
    enc = ColourProbabilities(fitted)
    X = blobs(5, centres, seed=3)
    P = enc.encode(X)
    assert P.shape == (15, len(colour_classes())) == (15, enc.dim) and P.dtype == np.float32
    col = {c: j for j, c in enumerate(colour_classes())}
    np.testing.assert_allclose(P[:, [col[c] for c in fitted.classes_]], fitted.predict_proba(X), rtol=1e-6)
    assert np.allclose(P.sum(1), 1.0, atol=1e-5) and (P[:, [j for c, j in col.items() if c not in NAMES]] == 0).all()
    assert enc.signature() != ColourProbabilities(ColourHead(C=0.5, min_examples=10).fit(blobs(20, centres), np.repeat(NAMES, 20))).signature()
    with pytest.raises(NotFittedError):
        ColourProbabilities(ColourHead())
