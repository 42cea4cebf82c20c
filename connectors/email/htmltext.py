"""HTML mail → readable plain text (stdlib ``html.parser``; pure).

Used when a mail has no text/plain part. Scripts, styles and the head are
dropped (the head ends where a browser ends it: at text or a body element,
even without ``</head>`` or ``<body>``); block elements become line breaks, list items get a dash, table
cells a tab. Text inside ``<blockquote>`` (how Gmail, Apple Mail and
Thunderbird mark quoted history in HTML) is prefixed with ``> `` so the
reply stripper treats it as any quoted text.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_SKIP = frozenset({"script", "style", "title", "noscript", "template", "xml"})
#: What may stand inside <head>; any other element, or text, ends the head as
#: in a browser (HTML5 "in head" insertion mode): mail that never opens a
#: <body> writes its text straight after the <meta>.
_HEAD_CONTENT = frozenset({"meta", "link", "base", "basefont", "bgsound", "title", "style", "script",
                           "noscript", "template", "xml", "head"})
_BLOCK = frozenset(
    {
        "p", "div", "br", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6",
        "blockquote", "pre", "hr", "section", "article", "header", "footer", "dl", "dt", "dd", "center",
        "address", "form", "fieldset",
    }
)
_PARAGRAPHS = frozenset({"p", "table", "ul", "ol", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6"})
_INLINE_SPACE = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._line: list[str] = []
        self._skip = 0
        self._quote = 0
        self._pre = 0
        self._head = False

    def _break(self, blank: bool = False) -> None:
        """End the current line; an empty one is kept only where ``blank`` asks (br, end of a paragraph)."""
        text = "".join(self._line)
        if not self._pre:
            text = _INLINE_SPACE.sub(" ", text).strip()
        prefix = "> " * self._quote
        if text:
            self.lines.append(prefix + text)
        if blank or (self._pre and not text):
            self.lines.append(prefix.rstrip())
        self._line = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "head":
            self._head = True
            return
        if self._head and tag not in _HEAD_CONTENT:
            self._head = False
        if tag in _SKIP:
            self._skip += 1
        elif tag == "br":
            self._break(blank=not self._line)
        elif tag in _BLOCK:
            self._break()
            if tag == "blockquote":
                self._quote += 1
            elif tag == "pre":
                self._pre += 1
            elif tag == "li":
                self._line.append("- ")
        elif tag in ("td", "th") and self._line:
            self._line.append("\t")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK:
            self._break(blank=tag == "br" and not self._line)

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self._head = False
        elif tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK:
            self._break(blank=tag in _PARAGRAPHS)
            if tag == "blockquote":
                self._quote = max(0, self._quote - 1)
            elif tag == "pre":
                self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._head:
            if data.isspace():
                return
            self._head = False
        if self._pre:
            for i, part in enumerate(data.split("\n")):
                if i:
                    self._break()
                self._line.append(part)
        else:
            self._line.append(data.replace("\n", " "))

    def text(self) -> str:
        self._break()
        joined = "\n".join(line.rstrip() for line in self.lines)
        return _BLANK_LINES.sub("\n\n", joined).strip()


def html_to_text(html: str) -> str:
    """Readable text of an HTML document or fragment; never raises on bad markup."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.text()
