"""PDF files, page by page: text with pypdf, ruled tables with pdfplumber, scanned pages by OCR."""

from __future__ import annotations

import contextlib
import logging
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError

from .base import Block, LoadedDocument, LoaderError
from .common import reason, split_paragraphs, table_blocks
from .ocr import ImageReader

log = logging.getLogger(__name__)

# A page counts as scanned when images cover at least this share of it (and it has little text).
_IMAGE_COVER = 0.5


def load_pdf(path: Path, ocr: ImageReader | None = None) -> LoadedDocument:
    """Return a PDF's text as blocks carrying their 1-based page number, with the page count.

    A page with ruled lines is searched for tables (pdfplumber), whose rows become table-row blocks in
    reading order with the page's other text. A page with (almost) no text layer is read by `ocr`; a
    page that fails OCR is noted in the document's problems and the other pages are kept.
    """
    try:
        reader = PdfReader(path)
        # pypdf has already tried the empty password: it opens PDFs that only restrict printing or copying.
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise LoaderError("PDF is encrypted with a password")
        # Some PDFs' text maps glyphs to NUL; it is never wanted in the index.
        pages = [page.extract_text().replace("\x00", "") for page in reader.pages]
        title = _metadata_title(reader)
    except LoaderError:
        raise
    except DependencyError as exc:
        raise LoaderError(
            "PDF is AES-encrypted; reading it needs the 'cryptography' package, which is not installed"
        ) from exc
    except Exception as exc:
        # pypdf raises many exception types (PdfReadError, KeyError, ValueError, ...) on broken files.
        raise LoaderError(f"not a valid PDF: {reason(exc)}") from exc
    document = LoadedDocument(title=title or path.stem, page_count=len(pages))
    with _Layout(path) as layout:
        for number, text in enumerate(pages, start=1):
            document.blocks.extend(_page_blocks(layout, number, len(pages), text, ocr, document.problems))
    return document


def _page_blocks(
    layout: _Layout, number: int, count: int, text: str, ocr: ImageReader | None, problems: list[str]
) -> Iterator[Block]:
    """Yield one page's blocks: OCR'd when it looks scanned, with its tables when it has ruled lines."""
    if ocr is not None and ocr.available and layout.looks_scanned(number, text, ocr.config.min_page_chars):
        where = f"page {number}/{count}"
        try:
            ocr_text = ocr.read_image(layout.render(number, ocr.config.dpi, where), where)
        except LoaderError as error:
            problems.append(str(error))
        else:
            # A scan wraps its lines where the text layer would have: joined the same way.
            yield from (
                Block(part, page=number, ocr=True) for part in split_paragraphs(unwrap_lines(ocr_text))
            )
            return
    if layout.has_lines(number) and (blocks := layout.table_page_blocks(number)) is not None:
        yield from blocks
        return
    yield from (Block(part, page=number) for part in split_paragraphs(unwrap_lines(text)))


class _Layout:
    """What pypdf's text does not tell about a PDF's pages: images, ruled lines, rendering, tables.

    pdfium (fast, C) answers the cheap questions for every page; pdfplumber (pure Python, slower) is
    opened only for pages with ruled lines. When either cannot open the file, the page is read as text.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stack = contextlib.ExitStack()
        self._pdfium: Any = None
        self._plumber: Any = None

    def __enter__(self) -> _Layout:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _pdfium_page(self, number: int) -> Any:
        """Return pdfium's page `number` (1-based), or None when pdfium cannot open the file."""
        if self._pdfium is None:
            import pypdfium2

            try:
                self._pdfium = pypdfium2.PdfDocument(self.path)
                self._stack.callback(self._pdfium.close)
            except Exception as exc:  # pdfium's PdfiumError, or a password pypdf could decrypt
                log.info("pdfium cannot open the PDF", extra={"path": str(self.path), "error": reason(exc)})
                self._pdfium = False
        return self._pdfium[number - 1] if self._pdfium else None

    def _objects(self, number: int, kind: int) -> list[Any]:
        """Return the page's objects of one pdfium type (those inside form XObjects included)."""
        page = self._pdfium_page(number)
        return [] if page is None else list(page.get_objects(filter=[kind]))

    def looks_scanned(self, number: int, text: str, min_chars: int) -> bool:
        """Return whether a page is an image with no text layer, or with fewer than `min_chars` characters
        over images covering most of it (a scan with a stamp or a page number as text)."""
        chars = sum(not c.isspace() for c in text)
        if chars >= min_chars or self._pdfium_page(number) is None:
            return False
        import pypdfium2.raw as pdfium_c

        images = self._objects(number, pdfium_c.FPDF_PAGEOBJ_IMAGE)
        if chars == 0 or not images:
            # A page without images and text is blank or drawn only with lines: nothing for OCR to read.
            return bool(images)
        width, height = self._pdfium_page(number).get_size()
        covered = 0.0
        for image in images:
            left, bottom, right, top = image.get_bounds()
            covered += max(0.0, min(right, width) - max(left, 0)) * max(
                0.0, min(top, height) - max(bottom, 0)
            )
        return covered >= _IMAGE_COVER * width * height

    def render(self, number: int, dpi: int, where: str) -> Any:
        """Return page `number` rendered at `dpi` as a PIL image; raise LoaderError when it cannot be."""
        page = self._pdfium_page(number)
        if page is None:
            raise LoaderError(f"{where}: cannot render the page for OCR")
        try:
            return page.render(scale=dpi / 72).to_pil()
        except Exception as exc:
            raise LoaderError(f"{where}: cannot render the page for OCR: {reason(exc)}") from exc

    def has_lines(self, number: int) -> bool:
        """Return whether the page draws paths (rules, boxes), without which it has no ruled table."""
        import pypdfium2.raw as pdfium_c

        return bool(self._objects(number, pdfium_c.FPDF_PAGEOBJ_PATH))

    def table_page_blocks(self, number: int) -> list[Block] | None:
        """Return a page's text and ruled tables as blocks in reading order, or None if it has no table."""
        if self._plumber is None:
            import pdfplumber

            try:
                self._plumber = pdfplumber.open(self.path)
                self._stack.callback(self._plumber.close)
            except Exception as exc:  # pdfminer's PDFSyntaxError, PDFPasswordIncorrect, ...
                log.info(
                    "pdfplumber cannot open the PDF", extra={"path": str(self.path), "error": reason(exc)}
                )
                self._plumber = False
        if not self._plumber:
            return None
        page = self._plumber.pages[number - 1]
        try:
            return _table_page_blocks(page, number)
        except Exception as exc:
            # A page pdfminer cannot lay out is still read as plain text by pypdf.
            log.info(
                "no tables read from a page",
                extra={"path": str(self.path), "page": number, "error": reason(exc)},
            )
            return None
        finally:
            page.close()  # pdfplumber keeps each page's parsed objects until then


def _table_page_blocks(page: Any, number: int) -> list[Block] | None:
    """Return a pdfplumber page's ruled tables as row blocks between its lines of text, top to bottom."""
    tables = [table for table in page.find_tables() if _is_table(table)]
    if not tables:
        return None
    boxes = [table.bbox for table in tables]

    def outside_tables(obj: dict[str, Any]) -> bool:
        x, y = (obj["x0"] + obj["x1"]) / 2, (obj["top"] + obj["bottom"]) / 2
        return not any(x0 <= x <= x1 and top <= y <= bottom for x0, top, x1, bottom in boxes)

    lines = page.filter(outside_tables).extract_text_lines(return_chars=False)
    # Each item: (top, order, kind); the text lines before a table (by top) become one run of paragraphs.
    items = sorted(
        [(line["top"], 1, line["text"]) for line in lines] + [(t.bbox[1], 0, t) for t in tables],
        key=lambda item: (item[0], item[1]),
    )
    blocks: list[Block] = []
    pending: list[str] = []

    def flush() -> None:
        text = unwrap_lines("\n".join(pending))
        blocks.extend(Block(part, page=number) for part in split_paragraphs(text))
        pending.clear()

    for _, _, item in items:
        if isinstance(item, str):
            pending.append(item)
            continue
        flush()
        rows = [[_cell_text(cell) for cell in row] for row in item.extract()]
        blocks.extend(table_blocks(rows, page=number))
    flush()
    return blocks


def _is_table(table: Any) -> bool:
    """Return whether a found table has at least two rows and two columns (a box is not a table)."""
    rows = table.extract()
    return len(rows) >= 2 and max(len(row) for row in rows) >= 2


def _cell_text(cell: str | None) -> str:
    """Return a table cell's text with its wrapped lines joined (no space between Chinese lines)."""
    lines = [line.strip() for line in (cell or "").split("\n") if line.strip()]
    text = lines[0] if lines else ""
    for line in lines[1:]:
        text += _joint(text, line) + line
    return text


def _metadata_title(reader: PdfReader) -> str:
    """Return the /Title of the PDF's metadata, or "" when it has none."""
    metadata = reader.metadata
    return str(metadata.title or "").strip() if metadata else ""


# A line at least this share of the page's widest line was wrapped by the layout, not ended by the author.
_FULL_LINE = 0.8


def unwrap_lines(text: str) -> str:
    """Return a page's text with layout line wraps removed, so sentences are not cut mid-way.

    pypdf ends every visual line with a newline. A line nearly as wide as the page's widest one was
    wrapped by the layout, so it is joined to the next; a shorter line ends a paragraph or a heading.
    Chinese lines join without a space; a space stays between Latin words and where the PDF had one.
    """
    lines = text.split("\n")
    widest = max((_width(line) for line in lines), default=0)
    if len(lines) < 3 or widest == 0:
        return text
    out = [lines[0]]
    for previous, line in zip(lines, lines[1:], strict=False):
        if previous.strip() and line.strip() and _width(previous) >= _FULL_LINE * widest:
            out[-1] = out[-1].rstrip() + _joint(previous, line) + line.lstrip()
        else:
            out.append(line)
    return "\n".join(out)


def _width(line: str) -> int:
    """Return the printed width of a line: wide (CJK) characters count twice."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line.rstrip())


def _joint(previous: str, following: str) -> str:
    """Return what goes between a wrapped line and its continuation: a space or nothing."""
    left, right = previous.rstrip()[-1], following.lstrip()[0]
    if previous[-1].isspace() or (left.isascii() and left.isalnum() and right.isascii() and right.isalnum()):
        return " "
    return ""
