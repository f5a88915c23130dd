"""HTML files with BeautifulSoup and the standard library's parser."""

from __future__ import annotations

import codecs
import re
from html.parser import HTMLParser
from pathlib import Path

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PreformattedString
from bs4.exceptions import ParserRejectedMarkup

from .base import Block, LoadedDocument, LoaderError, checkpoint
from .common import HeadingTrail, reason, table_blocks
from .encoding import decode_bytes

_DROPPED = ["script", "style", "nav", "noscript", "template", "svg", "iframe", "head", "title"]
# Tags that flow inside a line of text; every other tag ends the block before it and starts a new one.
_INLINE = {
    "a", "abbr", "b", "bdi", "bdo", "cite", "code", "data", "del", "dfn", "em", "font", "i", "img",
    "ins", "kbd", "label", "mark", "q", "s", "samp", "small", "span", "strong", "sub", "sup", "time",
    "u", "var", "wbr",
}  # fmt: skip
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.IGNORECASE)
# Browsers read a page labelled GB2312 or GBK as GB18030, their superset; pages rely on that.
_CHARSET_ALIASES = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030"}
_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def load_html(path: Path) -> LoadedDocument:
    """Return an HTML page's readable text as blocks under its h1-h6 headings, tables as row blocks."""
    text = _decode(path.read_bytes())
    _check_shape(text)
    try:
        soup = BeautifulSoup(text, "html.parser")
    except ParserRejectedMarkup as exc:
        raise LoaderError(f"not a valid HTML file: {reason(exc)}") from exc
    title = _text(soup.title) if soup.title else ""
    for tag in soup.find_all(_DROPPED):
        tag.decompose()
    if not title and (first_h1 := soup.find("h1")):
        title = _text(first_h1)
    reader = _BlockReader()
    try:
        reader.read(soup.body or soup)
    except RecursionError as exc:
        raise LoaderError("HTML is nested too deeply to read") from exc
    reader.flush()
    return LoadedDocument(title=title or path.stem, blocks=reader.blocks)


class _BlockReader:
    """Walks the element tree, gathering inline text into blocks and following the headings."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self._trail = HeadingTrail()
        self._pending: list[str] = []

    def read(self, node: Tag) -> None:
        """Add the blocks of everything inside `node`."""
        for child in node.children:
            if isinstance(child, NavigableString):
                # Comments, doctypes and CDATA are PreformattedStrings and are not page text.
                if not isinstance(child, PreformattedString):
                    self._pending.append(str(child))
            elif not isinstance(child, Tag):
                continue
            elif child.name == "br":
                self._pending.append("\n")
            elif child.name in _INLINE:
                self.read(child)
            else:
                self.flush()
                self._read_block(child)
                self.flush()

    def flush(self) -> None:
        """Turn the inline text gathered so far into a block, if it holds any."""
        lines = (" ".join(line.split()) for line in "".join(self._pending).split("\n"))
        text = "\n".join(line for line in lines if line)
        if text:
            self.blocks.append(Block(text, heading_path=self._trail.path))
        self._pending.clear()

    def _read_block(self, tag: Tag) -> None:
        """Add the blocks of a block-level element."""
        if tag.name in _HEADINGS:
            self._trail.enter(_HEADINGS[tag.name], _text(tag))
        elif tag.name == "table":
            self.blocks.extend(table_blocks(_table_rows(tag), self._trail.path))
        elif tag.name == "pre":
            text = tag.get_text().strip("\n")
            if text.strip():
                self.blocks.append(Block(text, heading_path=self._trail.path))
        else:
            self.read(tag)


# A page's tree costs about 600 bytes an element in memory, and Python keeps much of it after the tree is
# gone; so the elements are counted, streaming, before any tree is built. Real pages hold thousands of
# elements and nest a few dozen deep; browsers stop nesting at 512.
MAX_HTML_ELEMENTS = 200_000
MAX_HTML_DEPTH = 512
_VOID = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
}  # fmt: skip


class _Shape(HTMLParser):
    """Counts a page's elements and how deep they nest, keeping nothing, and stops at the first limit passed."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.elements = 0
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self.elements += 1
        if self.elements % 10_000 == 0:
            checkpoint()
        if self.elements > MAX_HTML_ELEMENTS:
            raise LoaderError(
                f"the page holds more than {MAX_HTML_ELEMENTS} elements; split it into smaller pages"
            )
        if tag not in _VOID:
            self.depth += 1
            if self.depth > MAX_HTML_DEPTH:
                raise LoaderError(f"HTML is nested more than {MAX_HTML_DEPTH} elements deep")

    def handle_endtag(self, tag: str) -> None:
        if tag not in _VOID:
            self.depth = max(self.depth - 1, 0)


def _check_shape(text: str) -> None:
    """Raise LoaderError when the page holds more than MAX_HTML_ELEMENTS elements or nests deeper than MAX_HTML_DEPTH."""
    shape = _Shape()
    shape.feed(text)
    shape.close()


def _decode(data: bytes) -> str:
    """Return the page decoded by its <meta> charset when that works, else as any text file is."""
    declared = _declared_encoding(data)
    if declared and not data.startswith(_BOMS):
        try:
            return data.decode(declared)
        except UnicodeDecodeError:
            pass
    return decode_bytes(data)


def _declared_encoding(data: bytes) -> str | None:
    """Return the Python codec named by the page's <meta charset>, or None if absent or unknown."""
    match = _META_CHARSET.search(data[:4096])
    if not match:
        return None
    name = match.group(1).decode("ascii").lower()
    try:
        return codecs.lookup(_CHARSET_ALIASES.get(name, name)).name
    except LookupError:
        return None


def _table_rows(table: Tag) -> list[list[str]]:
    """Return the cell texts of a table's own rows (not those of nested tables), spans repeated."""
    rows = []
    for row in table.find_all("tr"):
        if row.find_parent("table") is not table:
            continue
        cells = row.find_all(["td", "th"], recursive=False)
        rows.append([_text(cell) for cell in cells for _ in range(_colspan(cell))])
    return rows


def _colspan(cell: Tag) -> int:
    """Return how many columns a cell spans; a missing or absurd colspan counts as 1."""
    span = str(cell.get("colspan", "1")).strip()
    # Browsers cap colspan at 1000; a smaller cap keeps a hostile page from making huge rows.
    return int(span) if span.isdigit() and 0 < int(span) <= 100 else 1


def _text(tag: Tag) -> str:
    """Return a tag's text with its whitespace collapsed as a browser shows it."""
    return " ".join(tag.get_text().split())
