"""The types ingestion shares with its callers: the files of a run, what it does to each, and its progress."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

# "updated": the content was already stored under this name and only its metadata changed.
Status = Literal["added", "replaced", "updated", "skipped", "failed"]
ALREADY_STORED = "already in the knowledge base"


@dataclass(frozen=True)
class SourceFile:
    """A file to ingest and the name it is stored under in the knowledge base."""

    path: Path
    source: str


@dataclass(frozen=True)
class RunOptions:
    """What one run sets on every file it handles, and whether it loads stored files again.

    `metadata` and `groups`, when given, become the metadata and access groups of every file of the run,
    unchanged ones included (set in place, without embedding them again); without them, a replaced
    document keeps its own. Metadata is checked (`check_metadata`) where it comes in, by the router or
    `KnowledgeService.ingest`, and the store refuses bad metadata again as it writes; the run checks the
    groups. `force` loads, splits and embeds files again even when their content is already stored (re-index).
    """

    metadata: Mapping[str, str] | None = None
    groups: Sequence[str] | None = None
    force: bool = False


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file."""

    source: str
    status: Status
    chunks: int = 0
    reason: str | None = None  # why it failed or was skipped; for a stored file, what of it could not be read


@dataclass
class IngestionReport:
    """What an ingestion run did to each file, and how long it took."""

    outcomes: list[FileOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: Status) -> int:
        """Return how many files ended with `status`."""
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    @property
    def chunks(self) -> int:
        """Return how many chunks were written."""
        return sum(outcome.chunks for outcome in self.outcomes)

    @property
    def failures(self) -> list[FileOutcome]:
        """Return the outcomes of the files that failed."""
        return [outcome for outcome in self.outcomes if outcome.status == "failed"]


class Progress(Protocol):
    """Receives progress as files are handled (the CLI draws a bar from it; the server fills a job)."""

    def start(self, total_files: int) -> None:
        """Note how many files the run will handle."""
        ...

    def file_done(self, outcome: FileOutcome) -> None:
        """Note that one file is finished."""
        ...

    def chunks_embedded(self, count: int) -> None:
        """Note that `count` more chunks are embedded (stored with the rest of their batch's documents).

        Called after every few chunks (`EMBED_STEP` of `ingestion/pipeline.py`), inside a large document
        too: a stop point, where an exception stops the run with nothing of the batch at hand written.
        """
        ...

    def chunks_written(self, count: int) -> None:
        """Note that `count` more chunks are stored."""
        ...


# A Progress may also have `check_stop()`, which loaders call every so many rows or elements of a long
# file (it raises to stop the run: a cancelled job, a stopping server).
# A Progress may also have `image_read(source: str, where: str)`, called before each page or picture
# is read by OCR ("page 3/12"), which takes seconds where everything else takes milliseconds.
