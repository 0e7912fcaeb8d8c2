"""Document expansion from the photo: the BM25 title text with the photo's colour, and explanations that say so."""
from __future__ import annotations

import pytest

from fusionrank import schema as S
from fusionrank.errors import FusionrankError
from fusionrank.ranking.catalog import INDEXED_TITLE, lexical_texts
from fusionrank.ranking.explain import photo_terms


def test_lexical_texts_append_the_photo_colour_to_the_title():
    titles, desc, tr = ["Nike Men Tshirt", "Puma Red Shoes", "Adidas Watch"], ["soft cotton", None, ""], [None, "hi", None]
    plain = lexical_texts(titles, desc, tr)
    assert plain == lexical_texts(titles, desc, tr, [None, None, None])  # no colours: exactly the texts as before
    assert plain["title"] == ["Nike Men Tshirt soft cotton", "Puma Red Shoes", "Adidas Watch"]
    out = lexical_texts(titles, desc, tr, ["navy blue", None, ""])
    assert out["title"] == ["Nike Men Tshirt navy blue soft cotton", "Puma Red Shoes", "Adidas Watch"]
    assert out["transcript"] == plain["transcript"] == ["", "hi", ""]  # the photo never reaches the spoken field
    with pytest.raises(FusionrankError, match="2 photo colours for 3 titles"):
        lexical_texts(titles, desc, tr, ["red", None])


def test_photo_terms_are_the_matched_title_terms_the_product_text_lacks():
    rec = {S.TITLE: "Nike Men Black Tshirt", INDEXED_TITLE: "Nike Men Tshirt", S.DESCRIPTION: "a navy stripe"}
    matched = {"title": ["black", "navy", "tshirt"], "transcript": ["black"]}
    # "black" is only in the photo's expansion (the indexed title lost it); "navy" is in the description
    assert photo_terms(rec, matched) == ["black"]
    assert photo_terms(rec, {"title": ["tshirt"], "transcript": []}) == []
    assert photo_terms({S.TITLE: "Red Cap", INDEXED_TITLE: None, S.DESCRIPTION: None}, {"title": ["red", "blue"]}) == ["blue"]
