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
    # entity-encoded HTML is decoded, then stripped like any HTML: never a live tag in the output
    ("&lt;script&gt;alert(1)&lt;/script&gt;Shirt", "Shirt"),
    ("a &lt;b&gt;bold&lt;/b&gt; c", "a bold c"),
    ("&#60;img src=x onerror=alert(1)&#62;ok", "ok"),
    ("<<script>script>alert(1)<</script>/script>x", "x"),
    ("\uff1cscript\uff1ealert(1)\uff1c/script\uff1ey", "y"),   # full-width < > become tags under NFKC
    ("&amp;lt;script&amp;gt;", "&lt;script&gt;"),              # one level of entities decoded: text, no tag
    ("5 &lt; 6 and 7&gt;3", "5 < 6 and 7>3"),                 # a < that opens no tag is text
])
def test_clean_text(raw, want):
    out, changed = clean_text(raw)
    assert out == want
    assert changed == (raw != want)


@pytest.mark.parametrize("raw", [
    "&lt;script&gt;x&lt;/script&gt;", "&amp;lt;b&amp;gt;", "&lt;&lt;a&gt;a&gt;", "&#x3c;a href=x&#x3e;",
    "\ufe64b\ufe65", "&lt;!--x--&gt;", "&lt;" * 50 + "a&gt;", "<a<b>>c",
])
def test_no_live_tag_after_cleaning(raw):
    from fusionrank.ingest.clean import has_tag

    assert not has_tag(clean_text(raw)[0])


def test_clean_text_unchanged():
    assert clean_text("already clean") == ("already clean", False)


def test_parts():
    assert strip_html("a<br>b") == "a b"
    assert strip_html("no tags &amp; entity") == "no tags & entity"
    assert normalize_unicode("e\u0301") == "é" and normalize_unicode("a\x00b") == "ab"
    assert collapse_whitespace(" a \n b ") == "a b"
