"""Chinese-aware splitting of a loaded document into chunks that keep their page, section and offsets."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ingestion.loaders.base import BLOCK_SEPARATOR, Block, LoadedDocument

if TYPE_CHECKING:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

# Regexes tried in order, coarsest first. They are wrapped in a capturing group by langchain
# (re.split(f"({sep})")), so they must not hold capturing groups of their own. Punctuation is kept at
# the end of the piece before it, so closing quotes and brackets are matched with it: a chunk should
# not start with 。 or ”.
SEPARATORS: tuple[str, ...] = (
    r"\n\s*\n",  # paragraph: a blank line, possibly holding spaces
    r"\n",  # line
    r"[。！？…]+[”’」』）】]*",  # Chinese sentence end, the ellipsis …… included
    r"[.!?]+[\"'”’)\]]*(?= )",  # Western sentence end: only before a space, so 3.14 and e.g. stay whole
    r"；|;(?= )",  # semicolon
    r"[，、]|,(?= )",  # Chinese and Western commas (not 1,000)
    r"[ \t\u3000]+",  # spaces, the ideographic one included
    "",  # characters, the last resort
)


class SplitterConfig(BaseModel):
    """How documents are cut into chunks (stored in a knowledge base's manifest)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(
        500,
        gt=0,
        description="Largest length of a chunk, in `length_unit`s (the context prefix not counted).",
    )
    chunk_overlap: int = Field(
        50,
        ge=0,
        description="Largest overlap between consecutive chunks of one run of text; less than chunk_size. "
        "It repeats whole pieces (sentences, clauses), so it is smaller, or none, when they are longer.",
    )
    length_unit: Literal["chars", "tokens"] = Field(
        "chars",
        description="Unit of chunk_size and chunk_overlap: characters, or tokens of the embedding model "
        "(the splitter then needs a token counter).",
    )
    context_prefix: bool = Field(
        True,
        description="Prefix the text each chunk is embedded with by the document title and heading path.",
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> SplitterConfig:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        return self


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: its text, what is embedded for it, and where it stands.

    `document.text[start:end] == text` holds exactly. `embed_text` is `text` preceded by a line
    "title > heading > sub-heading" when the splitter's config asks for a context prefix. `ocr` is True
    when the text was read from an image by OCR.
    """

    text: str
    embed_text: str
    page: int | None
    heading_path: tuple[str, ...]
    start: int
    end: int
    ocr: bool = False


@dataclass(frozen=True)
class _Run:
    """Consecutive blocks of one kind under one page and heading: the first of them and their spans."""

    first: Block
    spans: tuple[tuple[int, int], ...]

    @property
    def start(self) -> int:
        return self.spans[0][0]

    @property
    def end(self) -> int:
        return self.spans[-1][1]


class ChineseTextSplitter:
    """Splits a LoadedDocument into Chunks along paragraphs, lines, then Chinese and Western punctuation.

    A chunk never spans two pages or two sections, nor mixes OCR'd text with other text, and a table
    row is never cut. Lengths are counted with `len` or, for `length_unit="tokens"`, with `count_tokens`
    (which should count without special tokens); every chunk fits `chunk_size` except a table row that
    is longer on its own. The context prefix of `embed_text` does not count toward `chunk_size`: it is
    for the embedder only.
    """

    def __init__(self, config: SplitterConfig, count_tokens: Callable[[str], int] | None = None) -> None:
        if config.length_unit == "chars":
            self._length: Callable[[str], int] = len
        elif count_tokens is None:
            raise ValueError('length_unit "tokens" needs a count_tokens function (the embedding tokenizer)')
        else:
            self._length = count_tokens
        self._config = config
        self._splitter = self._text_splitter(config.chunk_size, config.chunk_overlap)

    def split(self, document: LoadedDocument) -> list[Chunk]:
        """Return the document's chunks in document order."""
        text = document.text
        chunks = []
        for run in _runs(document.blocks):
            spans = self._pack_rows(text, run) if run.first.is_table_row else self._split_text_run(text, run)
            for start, end in spans:
                chunk = self._chunk(document.title, run.first, text, start, end)
                if chunk is not None:
                    chunks.append(chunk)
        return chunks

    def _text_splitter(self, chunk_size: int, chunk_overlap: int) -> RecursiveCharacterTextSplitter:
        """Return a langchain splitter with the Chinese-aware separators and this length function."""
        # Imported here: the module costs ~0.2 s to import and `import app` must stay fast.
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        return RecursiveCharacterTextSplitter(
            separators=list(SEPARATORS),
            keep_separator="end",
            is_separator_regex=True,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            length_function=self._length,
        )

    def _split_text_run(self, text: str, run: _Run) -> Iterator[tuple[int, int]]:
        """Yield the (start, end) offsets in `text` of the chunks of a run of text blocks."""
        run_text = text[run.start : run.end]
        for start, end in self._fit(self._splitter, run_text, self._config.chunk_size):
            yield run.start + start, run.start + end

    def _fit(
        self, splitter: RecursiveCharacterTextSplitter, text: str, size: int
    ) -> Iterator[tuple[int, int]]:
        """Yield the (start, end) offsets in `text` of its chunks, cutting again any over chunk_size."""
        budget = self._config.chunk_size
        # langchain returns bare strings, in order, each starting no earlier than the one before, so
        # searching from the previous start finds each one's place (or an identical earlier copy).
        cursor = 0
        for piece in splitter.split_text(text):
            cursor = text.index(piece, cursor)
            length = self._length(piece)
            if length <= budget or size <= 1:
                yield cursor, cursor + len(piece)
                continue
            # langchain adds up the lengths of the parts it merges; with a token counter for which a
            # joined text has more tokens than its parts together, a chunk can overshoot: cut it smaller.
            tighter = max(1, min(size - 1, size * budget // length))
            overlap = self._config.chunk_overlap * tighter // budget
            for start, end in self._fit(self._text_splitter(tighter, overlap), piece, tighter):
                yield cursor + start, cursor + end

    def _pack_rows(self, text: str, run: _Run) -> Iterator[tuple[int, int]]:
        """Yield the (start, end) offsets in `text` of table rows packed greedily into chunks."""
        # Rows are adjacent in `text`, so a slice from one row to a later one is them joined by blank lines.
        pack_start, pack_end = run.spans[0]
        for start, end in run.spans[1:]:
            if self._length(text[pack_start:end]) <= self._config.chunk_size:
                pack_end = end
            else:
                yield pack_start, pack_end
                pack_start, pack_end = start, end
        yield pack_start, pack_end

    def _chunk(self, title: str, block: Block, text: str, start: int, end: int) -> Chunk | None:
        """Return the chunk for text[start:end], stripped, or None if that is only whitespace."""
        raw = text[start:end]
        stripped = raw.strip()
        if not stripped:
            return None
        start += len(raw) - len(raw.lstrip())
        prefix = " > ".join(part for part in (title, *block.heading_path) if part.strip())
        embed_text = f"{prefix}\n{stripped}" if self._config.context_prefix and prefix else stripped
        return Chunk(
            text=stripped,
            embed_text=embed_text,
            page=block.page,
            heading_path=block.heading_path,
            start=start,
            end=start + len(stripped),
            ocr=block.ocr,
        )


def _runs(blocks: list[Block]) -> Iterator[_Run]:
    """Yield runs of consecutive blocks sharing kind (text or table row), page and heading path."""
    # One start more than blocks (the last is past the end), hence strict=False.
    starts = itertools.accumulate((len(b.text) + len(BLOCK_SEPARATOR) for b in blocks), initial=0)
    placed = zip(blocks, starts, strict=False)
    for _, group in itertools.groupby(placed, key=lambda placed_block: _run_key(placed_block[0])):
        members = list(group)
        yield _Run(first=members[0][0], spans=tuple((s, s + len(b.text)) for b, s in members))


def _run_key(block: Block) -> tuple[bool, int | None, tuple[str, ...], bool]:
    """Return what consecutive blocks must share to be split together."""
    return block.is_table_row, block.page, block.heading_path, block.ocr
