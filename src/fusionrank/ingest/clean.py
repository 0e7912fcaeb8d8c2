"""Text cleaning: strip HTML, normalise Unicode (NFKC) and whitespace.

Each function is pure and returns the cleaned value; :func:`clean_text` also
reports whether it changed anything so validation can count "fixed" rows.

Cleaned text never holds a live HTML tag. Entities are decoded as tags are
stripped, so text that was entity-encoded HTML (``&lt;script&gt;``), or full-width
look-alikes that NFKC turns into ``<`` and ``>``, would come out as tags; such
text is cleaned again (decoded, then stripped like any HTML) until no tag is left,
at most :data:`MAX_ROUNDS` times, after which whatever still looks like a tag is
removed. ``5 &lt; 6`` stays ``5 < 6``: a ``<`` not followed by a tag name is text.
"""
from __future__ import annotations

import html
import re
import unicodedata
from html.parser import HTMLParser

_TAG_HINT = re.compile(r"<[a-zA-Z/!][^>]*>")
_WS = re.compile(r"\s+")
# Block-level tags become a space so "a<br>b" does not glue words together.
_BREAK_TAGS = {"br", "p", "div", "li", "ul", "ol", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "table"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in _BREAK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in _BREAK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """Remove HTML tags (keeping their text) and decode entities."""
    if _TAG_HINT.search(text) is None:
        return html.unescape(text) if "&" in text else text
    p = _TextExtractor()
    p.feed(text)
    p.close()
    return "".join(p.parts)


def normalize_unicode(text: str) -> str:
    """NFKC-normalise and drop control / zero-width characters."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if ch in "\t\n " or unicodedata.category(ch)[0] != "C")


def collapse_whitespace(text: str) -> str:
    return _WS.sub(" ", text).strip()


MAX_ROUNDS = 4


def has_tag(text: str) -> bool:
    """Whether ``text`` holds something an HTML parser would take for a tag."""
    return _TAG_HINT.search(text) is not None


def clean_text(text: str) -> tuple[str, bool]:
    """Return ``(cleaned, changed)``: HTML stripped (entities decoded), NFKC, whitespace collapsed; no tag left."""
    out = normalize_unicode(strip_html(normalize_unicode(text)))
    rounds = 1
    while has_tag(out) and rounds < MAX_ROUNDS:  # decoded entities formed new tags: strip those too
        out = normalize_unicode(strip_html(out))
        rounds += 1
    if has_tag(out):
        out = _TAG_HINT.sub(" ", out)
    out = collapse_whitespace(out)
    return out, out != text
