"""Small pieces the loaders share: heading tracking, paragraph splitting and table rows as blocks."""

from __future__ import annotations

import datetime as dt
import re
import zipfile
from collections.abc import Iterable, Sequence
from itertools import zip_longest
from pathlib import Path

from .base import Block, LoaderError

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


def field_lines(pairs: Iterable[tuple[str, str]]) -> str:
    """Return "name: value" lines for the pairs with a value (a value without a name stands alone)."""
    return "\n".join(f"{name}: {value}" if name else value for name, value in pairs if value)


def table_blocks(
    rows: Iterable[Sequence[object]], heading_path: tuple[str, ...] = (), page: int | None = None
) -> list[Block]:
    """Return one table-row Block per row after the header (the first non-empty row)."""
    cells = [[format_cell(value) for value in row] for row in rows]
    cells = [row for row in cells if any(row)]
    if not cells:
        return []
    header, *body = cells
    if not body:
        # A one-row table is usually layout or a lone header; keep its text rather than drop it.
        body, header = [header], []
    return [
        Block(
            field_lines(zip_longest(header, row, fillvalue="")),
            page=page,
            heading_path=heading_path,
            is_table_row=True,
        )
        for row in body
    ]


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
