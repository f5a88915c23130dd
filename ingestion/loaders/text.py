"""Plain-text and Markdown files."""

from __future__ import annotations

import re
from pathlib import Path

from .base import Block, LoadedDocument
from .common import HeadingTrail, split_paragraphs, table_blocks
from .encoding import read_text

# CommonMark ATX heading: up to 3 spaces, 1-6 '#', then a space (or the line's end), optional closing '#'s.
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_TABLE_DELIMITER = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def load_text(path: Path) -> LoadedDocument:
    """Return a plain-text file as one block per paragraph (paragraphs are split on blank lines)."""
    blocks = [Block(paragraph) for paragraph in split_paragraphs(read_text(path))]
    return LoadedDocument(title=path.stem, blocks=blocks)


def load_markdown(path: Path) -> LoadedDocument:
    """Return a Markdown file as blocks under their headings; table rows and code fences kept whole."""
    lines = read_text(path).split("\n")
    trail = HeadingTrail()
    title = ""
    blocks: list[Block] = []
    pending: list[str] = []

    def flush() -> None:
        # Called before a heading changes the trail, so the text gets the headings it stood under.
        text = "\n".join(pending)
        blocks.extend(Block(paragraph, heading_path=trail.path) for paragraph in split_paragraphs(text))
        pending.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if heading := _HEADING.match(line):
            flush()
            level, text = len(heading.group(1)), (heading.group(2) or "").strip()
            trail.enter(level, text)
            if level == 1 and not title:
                title = text
            i += 1
        elif fence := _FENCE.match(line):
            flush()
            end = _fence_end(lines, i, fence.group(1))
            blocks.append(Block("\n".join(lines[i:end]).strip("\n"), heading_path=trail.path))
            i = end
        elif _starts_table(lines, i):
            flush()
            end = i + 2
            while end < len(lines) and "|" in lines[end]:
                end += 1
            rows = [_cells(row) for row in [lines[i], *lines[i + 2 : end]]]
            blocks.extend(table_blocks(rows, trail.path))
            i = end
        elif _RULE.match(line):
            flush()
            i += 1
        else:
            pending.append(line)
            i += 1
    flush()
    return LoadedDocument(title=title or path.stem, blocks=blocks)


def _starts_table(lines: list[str], i: int) -> bool:
    """Return whether a pipe table (header row, then a delimiter row of as many cells) starts at `i`."""
    if i + 1 >= len(lines) or "|" not in lines[i] or not _TABLE_DELIMITER.match(lines[i + 1]):
        return False
    return len(_cells(lines[i])) == len(_cells(lines[i + 1]))


def _fence_end(lines: list[str], start: int, opener: str) -> int:
    """Return the index just past the fence closing the one opened at `start`, or the end of the file."""
    for j in range(start + 1, len(lines)):
        closer = lines[j].strip()
        if closer.startswith(opener) and set(closer) == {opener[0]}:
            return j + 1
    return len(lines)


def _cells(row: str) -> list[str]:
    """Return the cells of a pipe-table row, outer pipes dropped and escaped pipes restored."""
    row = row.strip().removeprefix("|")
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    return [cell.strip().replace("\\|", "|") for cell in _CELL_SPLIT.split(row)]
