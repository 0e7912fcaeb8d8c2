"""Text cleaning: HTML, entities, NFKC, whitespace."""
from __future__ import annotations

import pytest

from fusionrank.ingest.clean import clean_text, collapse_whitespace, normalize_unicode, strip_html


@pytest.mark.parametrize("raw, want", [
    ("a<br>b", "a b"),
    ("a<br/>b", "a b"),
    ("<p>one</p><p>two</p>", "one two"),
    ("<ul><li>x</li><li>y</li></ul>", "x y"),
    ("<b>bold</b> and <i>italic</i>", "bold and italic"),
    ("Tom &amp; Jerry", "Tom & Jerry"),
    ("<p>5 &lt; 6 &gt; 4 &quot;ok&quot; &#169; &eacute;</p>", '5 < 6 > 4 "ok" © é'),
    ("x<script>alert(1)</script>y<style>p{}</style>z", "xyz"),
    ("size 5 < 6 but no tag", "size 5 < 6 but no tag"),
    ("ＡＢＣ １２３", "ABC 123"),           # full-width -> ASCII (NFKC)
    ("ﬁne ﬂour", "fine flour"),            # ligatures (NFKC)
    ("zero\u200bwidth\u00a0space", "zerowidth space"),
    ("  lots \t of\n\n  space  ", "lots of space"),
    ("<br>", ""),
])
def test_clean_text(raw, want):
    out, changed = clean_text(raw)
    assert out == want
    assert changed == (raw != want)


def test_clean_text_unchanged():
    assert clean_text("already clean") == ("already clean", False)


def test_parts():
    assert strip_html("a<br>b") == "a b"
    assert strip_html("no tags &amp; entity") == "no tags & entity"
    assert normalize_unicode("e\u0301") == "é" and normalize_unicode("a\x00b") == "ab"
    assert collapse_whitespace(" a \n b ") == "a b"
