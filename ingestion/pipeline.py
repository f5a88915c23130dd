"""Files in, stored chunks out: load → split → embed → write, whole documents at a time."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ingestion.loaders import (
    SUPPORTED_SUFFIXES,
    ImageReader,
    LoadedDocument,
    LoaderError,
    LoadLimits,
    OcrConfig,
)
from ingestion.prepare import PreparedFiles
from ingestion.splitter import ChineseTextSplitter, SplitterConfig
from retrieval import DocumentRecord, Embedder, KnowledgeBase, NewDocument, check_groups, check_metadata

log = logging.getLogger(__name__)

# "updated": the content was already stored under this name and only its metadata changed.
Status = Literal["added", "replaced", "updated", "skipped", "failed"]
ALREADY_STORED = "already in the knowledge base"
# Chunks embedded between two progress reports (stop points): about 5 s of the bundled model on a CPU core.
EMBED_STEP = 16


class IngestionConfig(BaseModel):
    """How ingestion batches its work."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    batch_chunks: int = Field(
        256,
        gt=0,
        description="Chunks gathered, across files, before one database transaction (embedded EMBED_STEP at "
        "a time, the progress and stop points of a job). Each transaction holds whole documents only.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes that read and parse files (PDF, Word, ...) side by side. 1: one thread, "
        "which still reads the next files while a batch is embedded; more helps with many large "
        "documents to parse (each extra process starts in about a second).",
    )
    ocr: OcrConfig = Field(
        default_factory=OcrConfig,
        description="OCR of scanned PDF pages, image files and pictures in documents.",
    )
    max_document_chars: int = Field(
        LoadLimits.max_document_chars, gt=0, description="A file whose text is longer fails with the reason."
    )
    max_unzipped_mb: float = Field(
        LoadLimits.max_unzipped_mb,
        gt=0,
        description="A .docx/.xlsx/.pptx (ZIP package) unpacking to more MiB fails before it is parsed.",
    )
    max_tree_xml_mb: float = Field(
        LoadLimits.max_tree_xml_mb,
        gt=0,
        description="A .docx/.pptx whose XML unpacks to more MiB fails before it is parsed: it is read whole "
        "into a tree of about 35 times its size in memory.",
    )
    max_zip_entries: int = Field(
        LoadLimits.max_zip_entries,
        gt=0,
        description="A ZIP package with more entries fails before it is parsed.",
    )
    max_zip_ratio: float = Field(
        LoadLimits.max_zip_ratio,
        gt=1,
        description="A ZIP package of over 1 MiB unpacked that unpacks to more than this many times its size "
        "fails (a zip bomb); Office XML compresses about 5-20 times.",
    )

    def load_limits(self) -> LoadLimits:
        """Return the limits a file is loaded under."""
        return LoadLimits(
            max_document_chars=self.max_document_chars,
            max_unzipped_mb=self.max_unzipped_mb,
            max_tree_xml_mb=self.max_tree_xml_mb,
            max_zip_entries=self.max_zip_entries,
            max_zip_ratio=self.max_zip_ratio,
        )


@dataclass(frozen=True)
class SourceFile:
    """A file to ingest and the name it is stored under in the knowledge base."""

    path: Path
    source: str


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

        Called after every few chunks (`EMBED_STEP`), inside a large document too: a stop point, where an
        exception stops the run with nothing of the batch at hand written.
        """
        ...

    def chunks_written(self, count: int) -> None:
        """Note that `count` more chunks are stored."""
        ...


# A Progress may also have `check_stop()`, which loaders call every so many rows or elements of a long
# file (it raises to stop the run: a cancelled job, a stopping server).
# A Progress may also have `image_read(source: str, where: str)`, called before each page or picture
# is read by OCR ("page 3/12"), which takes seconds where everything else takes milliseconds.


def collect_files(paths: Iterable[Path]) -> tuple[list[SourceFile], list[FileOutcome]]:
    """Return the files to ingest under `paths`, and outcomes for paths that cannot be ingested.

    A file named directly is stored under its file name; a file found in a folder under its path
    from that folder's parent (`docs/sub/a.pdf`). Inside folders, hidden files and types kbqa cannot
    read are skipped with a reason; a file named directly is always attempted, so a wrong type fails.
    """
    files: list[SourceFile] = []
    outcomes: list[FileOutcome] = []
    for path in paths:
        if path.is_dir():
            root = path.resolve().parent
            for file in sorted(p for p in path.resolve().rglob("*") if p.is_file()):
                relative = file.relative_to(root)
                if any(part.startswith(".") for part in relative.parts):
                    continue
                if file.suffix.lower() not in SUPPORTED_SUFFIXES:
                    reason = f"unsupported file type '{file.suffix or file.name}'"
                    outcomes.append(FileOutcome(relative.as_posix(), "skipped", reason=reason))
                    continue
                files.append(SourceFile(file, relative.as_posix()))
        elif path.is_file():
            files.append(SourceFile(path, path.name))
        else:
            outcomes.append(FileOutcome(str(path), "failed", reason="no such file or folder"))
    seen: set[str] = set()
    unique = []
    for file in files:
        if file.source in seen:
            reason = "another file in this run has the same name"
            outcomes.append(FileOutcome(file.source, "failed", reason=f"{reason} ({file.path})"))
        else:
            seen.add(file.source)
            unique.append(file)
    return unique, outcomes


@dataclass(frozen=True)
class _ToLoad:
    """A file that is to be loaded: its bytes, their hash, and the document it replaces, if any."""

    data: bytes
    content_hash: str
    stored: DocumentRecord | None


@dataclass
class _Pending:
    document: NewDocument
    replaces: bool
    problems: list[str]


class IngestionPipeline:
    """Turns files into a knowledge base's documents, skipping unchanged ones and replacing changed ones."""

    def __init__(
        self,
        kb: KnowledgeBase,
        embedder: Embedder,
        config: IngestionConfig | None = None,
    ) -> None:
        self.kb = kb
        self.embedder = embedder
        self.config = config or IngestionConfig()
        # The knowledge base keeps the splitter settings it was created with, so all its chunks agree.
        splitter_config = SplitterConfig.model_validate(kb.manifest.splitter)
        self.splitter = ChineseTextSplitter(splitter_config, count_tokens=embedder.count_tokens)
        self.embed_seconds = 0.0
        # Chunks split but not yet written, now and at most: memory stays flat in the number of files.
        self.chunks_held = 0
        self.peak_chunks_held = 0
        self._held_lock = threading.Lock()
        self._groups: tuple[str, ...] | None = None  # the access groups of the run at hand (see run)
        # Raises ValueError here, before any file, when OCR is required ("on") but not installed.
        ImageReader(self.config.ocr)

    def run(
        self,
        files: Sequence[SourceFile],
        progress: Progress | None = None,
        metadata: Mapping[str, str] | None = None,
        force: bool = False,
        groups: Sequence[str] | None = None,
    ) -> IngestionReport:
        """Ingest `files` into the knowledge base; return what happened to each. The caller holds `kb.writing()`.

        `groups`, when given, become the access groups of every file of the run as metadata does (an
        unchanged file's are set in place); without them, a replaced document keeps its groups.

        `metadata`, when given, becomes the metadata of every file of the run, unchanged ones included
        (set in place, without embedding them again). Without it, a replaced document keeps the metadata it had.
        `force` loads, splits and embeds files again even when their content is already stored (re-index).
        """
        metadata = None if metadata is None else check_metadata(metadata)
        # Read by _check and _document for this run; written with each document, in its own transaction,
        # so a document is never visible without its groups.
        self._groups = None if groups is None else tuple(check_groups(groups))
        started = time.perf_counter()
        report = IngestionReport()
        pending: list[_Pending] = []
        pending_chunks = 0
        if progress:
            progress.start(len(files))

        def record(outcome: FileOutcome) -> None:
            report.outcomes.append(outcome)
            if progress:
                progress.file_done(outcome)

        # Files are read and split by a background stage while the batch before them is embedded; it
        # runs at most a few files ahead, so memory holds about one batch however many files there are.
        with PreparedFiles(self, files, metadata, force, progress) as prepared:
            for item in prepared:
                if isinstance(item, FileOutcome):
                    record(item)
                    continue
                pending.append(item)
                pending_chunks += len(item.document.chunks)
                if pending_chunks >= self.config.batch_chunks:
                    self._flush(pending, record, progress)
                    pending, pending_chunks = [], 0
            self._flush(pending, record, progress)
        report.seconds = time.perf_counter() - started
        return report

    def _check(
        self, file: SourceFile, run_hashes: set[str], metadata: dict[str, str] | None, force: bool
    ) -> _ToLoad | FileOutcome:
        """Return the file's bytes, hash and stored version when it is to be loaded, else what happened to it."""
        try:
            data = file.path.read_bytes()
        except OSError as error:
            return FileOutcome(file.source, "failed", reason=f"cannot read the file: {error.strerror}")
        content_hash = hashlib.sha256(data).hexdigest()
        stored = self.kb.document_by_source(file.source)
        # Unchanged means unchanged for this source; a new source whose content another document already
        # holds is a copy and skipped, but a changed file always replaces its old version.
        unchanged = stored is not None and stored.content_hash == content_hash
        copy = stored is None and (content_hash in run_hashes or self.kb.has_content_hash(content_hash))
        if not force and (unchanged or copy):
            new_metadata = unchanged and metadata is not None and stored.metadata != metadata
            new_groups = unchanged and self._groups is not None and stored.groups != self._groups
            if new_metadata:
                self.kb.set_metadata(stored.id, metadata)
            if new_groups:
                self.kb.set_groups(stored.id, self._groups)
            if new_metadata or new_groups:
                return FileOutcome(file.source, "updated")
            return FileOutcome(file.source, "skipped", reason=ALREADY_STORED)
        return _ToLoad(data, content_hash, stored)

    def _document(
        self, file: SourceFile, to_load: _ToLoad, loaded: LoadedDocument, metadata: dict[str, str] | None
    ) -> _Pending:
        """Return the split document of a loaded file, ready to embed; raise LoaderError when it has no text."""
        for problem in loaded.problems:
            log.warning("part of a file could not be read", extra={"source": file.source, "problem": problem})
        chunks = self.splitter.split(loaded)
        if not chunks:
            raise LoaderError("no text could be extracted")
        stored = to_load.stored
        document = NewDocument(
            source=file.source,
            title=loaded.title,
            content_hash=to_load.content_hash,
            size=len(to_load.data),
            page_count=loaded.page_count,
            chunks=chunks,
            vectors=np.zeros((0, 0), np.float32),  # filled by _flush: one embedding call for the batch
            metadata=(stored.metadata if stored else {}) if metadata is None else metadata,
            groups=(stored.groups if stored else ()) if self._groups is None else self._groups,
        )
        return _Pending(document, replaces=stored is not None, problems=loaded.problems)

    def _hold_chunks(self, count: int) -> None:
        """Note `count` more chunks held in memory (negative: written and let go)."""
        with self._held_lock:
            self.chunks_held += count
            self.peak_chunks_held = max(self.peak_chunks_held, self.chunks_held)

    def _image_reader(self, source: str, progress: Progress | None) -> ImageReader:
        """Return the OCR reader for one file, which reports each image it reads."""
        image_read = getattr(progress, "image_read", None)

        def on_image(where: str) -> None:
            log.info("OCR reading", extra={"source": source, "image": where})
            if image_read:
                image_read(source, where)

        return ImageReader(self.config.ocr, on_image)

    def _flush(
        self, pending: list[_Pending], record: Callable[[FileOutcome], None], progress: Progress | None
    ) -> None:
        if not pending:
            return
        texts = [chunk.embed_text for item in pending for chunk in item.document.chunks]
        # One large document is embedded piece by piece too, with progress and a stop point after each
        # (at most EMBED_STEP chunks, so a stop never waits for a whole large batch), yet written in one
        # transaction with the batch's other documents: searchers see it whole or not at all. Pieces are
        # taken longest first, so the texts of one forward pass have about the same length and pad little.
        step = min(self.config.batch_chunks, EMBED_STEP)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = np.zeros((len(texts), self.embedder.dimension), np.float32)
        for start in range(0, len(order), step):
            piece = order[start : start + step]
            embed_started = time.perf_counter()
            vectors[piece] = self.embedder.embed_documents([texts[i] for i in piece])
            self.embed_seconds += time.perf_counter() - embed_started
            if progress:
                progress.chunks_embedded(len(piece))
        documents, offset = [], 0
        for item in pending:
            count = len(item.document.chunks)
            documents.append(replace(item.document, vectors=vectors[offset : offset + count]))
            offset += count
        self.kb.add_documents(documents)
        log.info(
            "stored documents", extra={"kb": self.kb.name, "documents": len(documents), "chunks": len(texts)}
        )
        self._hold_chunks(-len(texts))
        if progress:
            progress.chunks_written(len(texts))
        for item in pending:
            status = "replaced" if item.replaces else "added"
            problems = "; ".join(item.problems) or None
            record(FileOutcome(item.document.source, status, len(item.document.chunks), problems))
