"""PDF files, page by page, with pypdf."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError

from .base import Block, LoadedDocument, LoaderError
from .common import reason, split_paragraphs


def load_pdf(path: Path) -> LoadedDocument:
    """Return a PDF's text as blocks carrying their 1-based page number, with the page count."""
    try:
        reader = PdfReader(path)
        # pypdf has already tried the empty password: it opens PDFs that only restrict printing or copying.
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise LoaderError("PDF is encrypted with a password")
        pages = [page.extract_text() for page in reader.pages]
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
    blocks = [
        Block(paragraph, page=number)
        for number, text in enumerate(pages, start=1)
        # Some PDFs' text maps glyphs to NUL; it is never wanted in the index.
        for paragraph in split_paragraphs(unwrap_lines(text.replace("\x00", "")))
    ]
    return LoadedDocument(title=title or path.stem, blocks=blocks, page_count=len(pages))


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
