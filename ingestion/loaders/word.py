"""Word (.docx) files with python-docx: paragraphs and tables in body order."""

from __future__ import annotations

import re
from pathlib import Path

import docx
from docx.document import Document
from docx.table import Table
from docx.text.paragraph import Paragraph

from .base import Block, LoadedDocument, LoaderError
from .common import HeadingTrail, reason, require_zip, split_paragraphs, table_blocks
from .ocr import ImageReader

# Built-in heading styles are "Heading N" whatever the UI language, but documents made by some Chinese
# editions and by WPS name them "标题 N"; "Title" and "标题" are the document title.
_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*([1-9])$", re.IGNORECASE)
_TITLE_STYLES = {"title", "标题"}


def load_docx(path: Path, ocr: ImageReader | None = None) -> LoadedDocument:
    """Return a .docx file as paragraph and table-row blocks under their headings.

    Pictures in the body's paragraphs are read by `ocr` when it reads embedded images.
    """
    require_zip(path, ".docx", ".doc")
    try:
        document = docx.Document(str(path))
        pictures = _Pictures(document, ocr) if ocr is not None and ocr.reads_embedded_images else None
        blocks, first_heading = _read_body(document, pictures)
        core_title = (document.core_properties.title or "").strip()
    except Exception as exc:
        # python-docx raises KeyError, ValueError, lxml and zipfile errors on damaged packages.
        raise LoaderError(f"not a valid .docx file: {reason(exc)}") from exc
    problems = pictures.problems if pictures else []
    return LoadedDocument(title=core_title or first_heading or path.stem, blocks=blocks, problems=problems)


def _read_body(document: Document, pictures: _Pictures | None) -> tuple[list[Block], str]:
    """Return the body's blocks in order and the text of its first Title or Heading 1 ("" if none)."""
    trail = HeadingTrail()
    first_heading = ""
    blocks: list[Block] = []
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            blocks.extend(table_blocks(_table_rows(item), trail.path))
            continue
        text = item.text.strip()
        level = _heading_level(item)
        if level is None:
            if text:
                blocks.append(Block(text, heading_path=trail.path))
            if pictures is not None:
                blocks.extend(pictures.blocks(item, trail.path))
            continue
        trail.enter(level, text)
        if level <= 1 and not first_heading:
            first_heading = text
    return blocks, first_heading


class _Pictures:
    """Reads the pictures of a document's paragraphs by OCR, keeping what fails as problems."""

    def __init__(self, document: Document, ocr: ImageReader) -> None:
        self.document, self.ocr = document, ocr
        self.count = 0
        self.problems: list[str] = []

    def blocks(self, paragraph: Paragraph, heading_path: tuple[str, ...]) -> list[Block]:
        """Return the OCR'd text of the pictures in a paragraph as blocks."""
        blocks = []
        # python-docx has no public API for a paragraph's pictures: they are <a:blip r:embed="rIdN"/>.
        for embed in paragraph._element.xpath(".//a:blip/@r:embed"):
            part = self.document.part.related_parts.get(embed)
            if part is None:  # a linked, not embedded, picture
                continue
            self.count += 1
            text = self.ocr.read_picture(part.blob, f"picture {self.count}", self.problems)
            blocks.extend(Block(p, heading_path=heading_path, ocr=True) for p in split_paragraphs(text))
        return blocks


def _heading_level(paragraph: Paragraph) -> int | None:
    """Return a paragraph's heading level (0 for the Title style, so headings nest under it), else None."""
    name = (paragraph.style.name or "").strip() if paragraph.style is not None else ""
    if name.lower() in _TITLE_STYLES:
        return 0
    match = _HEADING_STYLE.match(name)
    return int(match.group(1)) if match else None


def _table_rows(table: Table) -> list[list[str]]:
    """Return the text of every cell of a table, row by row (a merged cell repeats in each column)."""
    return [[cell.text for cell in row.cells] for row in table.rows]
