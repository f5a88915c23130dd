"""What every loader returns: a document as an ordered list of text blocks with their place in it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class LoaderError(Exception):
    """A file that cannot be turned into text; the message says what is wrong with it."""


@dataclass(frozen=True)
class Block:
    """One piece of a document's text and where it stands.

    `page` is 1-based for paged formats (PDF pages, slides) and None elsewhere. `heading_path` holds the titles of
    the headings the block sits under, outermost first. A table row is one block with
    `is_table_row=True`, written as "header: value" lines, so the splitter keeps it whole and a chunk
    of a table keeps its column names. `ocr` is True when the text was read from an image by OCR.
    """

    text: str
    page: int | None = None
    heading_path: tuple[str, ...] = ()
    is_table_row: bool = False
    ocr: bool = False


@dataclass
class LoadedDocument:
    """A file's text as blocks, with the title used to give chunks context."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    page_count: int | None = None
    # What could not be read while the rest could (a page that failed OCR): reported, not fatal.
    problems: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """Return the document's full text, the blocks joined by blank lines (chunk offsets point here)."""
        return BLOCK_SEPARATOR.join(block.text for block in self.blocks)


BLOCK_SEPARATOR = "\n\n"


class LoadStopped(BaseException):
    """Carries the stop asked for (a cancelled job) out of a loader's long loop: a BaseException, so that no
    loader's `except Exception` turns it into a failed file; `stop_checks` raises what it carries."""


_checks = threading.local()


def checkpoint() -> None:
    """Run the stop check of the load under way in this thread (see `stop_checks`), if any; return nothing.

    Loaders call it every so many rows or elements, so a cancel or a server stop reaches a file that
    takes long to read, not only the next file.
    """
    check = getattr(_checks, "check", None)
    if check is None:
        return
    try:
        check()
    except Exception as stop:
        raise LoadStopped(stop) from stop


@contextmanager
def stop_checks(check: Callable[[], None] | None) -> Iterator[None]:
    """Run `check` at every `checkpoint()` of loads in this thread inside the block; what it raises comes out."""
    previous = getattr(_checks, "check", None)
    _checks.check = check
    try:
        yield
    except LoadStopped as stopped:
        raise stopped.args[0] from None
    finally:
        _checks.check = previous
