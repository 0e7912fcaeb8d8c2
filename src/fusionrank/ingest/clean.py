"""Text cleaning: strip HTML, normalise Unicode (NFKC) and whitespace.

Each function is pure and returns the cleaned value; :func:`clean_text` also
reports whether it changed anything so validation can count "fixed" rows.
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


def clean_text(text: str) -> tuple[str, bool]:
    """Return ``(cleaned, changed)``: HTML stripped, NFKC, whitespace collapsed."""
    out = collapse_whitespace(normalize_unicode(strip_html(text)))
    return out, out != text
