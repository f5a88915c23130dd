"""Small pieces the loaders share: heading tracking, paragraph splitting and table rows as blocks."""

from __future__ import annotations

import datetime as dt
import re
import zipfile
from collections.abc import Iterable, Sequence
from itertools import zip_longest
from pathlib import Path

from retrieval.text_rules import field_lines

from .base import Block, LoaderError, checkpoint

_BLANK_LINES = re.compile(r"\n[ \t]*\n")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
# Integers stored as floats (Excel keeps every number as a double) print without ".0" up to here;
# beyond it a float no longer holds every integer exactly.
_EXACT_INT_LIMIT = 2**53


class HeadingTrail:
    """The headings above the current point of a document, outermost first."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []

    def enter(self, level: int, title: str) -> None:
        """Record a heading of `level` (smaller is outer), replacing those at its level or deeper."""
        if not title:
            return
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, title))

    @property
    def path(self) -> tuple[str, ...]:
        """Return the titles of the current headings, outermost first."""
        return tuple(title for _, title in self._stack)


def split_paragraphs(text: str) -> list[str]:
    """Return the non-empty paragraphs of `text` (split on blank lines), trailing spaces removed."""
    text = _TRAILING_SPACE.sub("", text)
    return [part.strip("\n") for part in _BLANK_LINES.split(text) if part.strip()]


def format_cell(value: object) -> str:
    """Return a cell value as text: integral floats without ".0", dates in ISO form, None as ""."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_INT_LIMIT:
        return str(int(value))
    if isinstance(value, dt.datetime):
        if value.time() == dt.time():
            return value.date().isoformat()
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value).strip()


def table_blocks(
    rows: Iterable[Sequence[object]], heading_path: tuple[str, ...] = (), page: int | None = None
) -> list[Block]:
    """Return one table-row Block per row after the header (the first non-empty row).

    Rows are taken one at a time and empty ones dropped before anything is kept: a spreadsheet whose
    stated size is a million rows of 16,384 columns holds in memory only the rows it really has.
    """
    header: list[str] | None = None
    blocks: list[Block] = []
    for number, row in enumerate(rows):
        if number % _CHECK_EVERY_ROWS == 0:
            checkpoint()
        cells = _trimmed([format_cell(value) for value in row])
        if not cells:
            continue
        if header is None:
            header = cells
            continue
        blocks.append(_row_block(header, cells, heading_path, page))
    if header is not None and not blocks:
        # A one-row table is usually layout or a lone header; keep its text rather than drop it.
        blocks.append(_row_block([], header, heading_path, page))
    return blocks


_CHECK_EVERY_ROWS = 4096


def _trimmed(cells: list[str]) -> list[str]:
    """Return the cells without the empty ones at the end (an empty list for an empty row)."""
    while cells and not cells[-1]:
        cells.pop()
    return cells


def _row_block(header: list[str], cells: list[str], heading_path: tuple[str, ...], page: int | None) -> Block:
    return Block(
        field_lines(zip_longest(header, cells, fillvalue="")),
        page=page,
        heading_path=heading_path,
        is_table_row=True,
    )


def require_zip(path: Path, kind: str, old_format: str) -> None:
    """Raise LoaderError unless `path` is a ZIP package, as every Office Open XML file is."""
    if not zipfile.is_zipfile(path):
        raise LoaderError(
            f"not a valid {kind} file: it is not a ZIP package "
            f"(an old binary {old_format} file must be saved as {kind} first)"
        )


def reason(exc: BaseException) -> str:
    """Return an exception's message, or its class name when it has none."""
    return str(exc) or type(exc).__name__
