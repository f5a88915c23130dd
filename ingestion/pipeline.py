"""Files in, stored chunks out: load → split → embed → write, whole documents at a time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from ingestion.config import IngestionConfig
from ingestion.loaders import SUPPORTED_SUFFIXES, ImageReader
from ingestion.prepare import DocumentPreparer, PreparedDocument, PreparedFiles
from ingestion.splitter import ChineseTextSplitter, SplitterConfig
from ingestion.types import FileOutcome, IngestionReport, Progress, RunOptions, SourceFile
from retrieval import Embedder, KnowledgeBase, check_groups, chunk_terms

log = logging.getLogger(__name__)

# Chunks embedded between two progress reports (stop points): about 5 s of the bundled model on a CPU core.
EMBED_STEP = 16


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
        splitter = ChineseTextSplitter(splitter_config, count_tokens=embedder.count_tokens)
        self.preparer = DocumentPreparer(kb, splitter, self.config)
        self.embed_seconds = 0.0
        # Raises ValueError here, before any file, when OCR is required ("on") but not installed.
        ImageReader(self.config.ocr)

    @property
    def chunks_held(self) -> int:
        """Return how many chunks are split but not yet written: memory stays flat in the number of files."""
        return self.preparer.chunks_held

    @property
    def peak_chunks_held(self) -> int:
        """Return the most chunks ever split but not yet written at once."""
        return self.preparer.peak_chunks_held

    def run(
        self,
        files: Sequence[SourceFile],
        progress: Progress | None = None,
        options: RunOptions | None = None,
    ) -> IngestionReport:
        """Ingest `files` into the knowledge base; return what happened to each. The caller holds `kb.writing()`.

        `options` give every file of the run its metadata and access groups, or load stored files again
        (see `RunOptions`); without them, unchanged files are skipped and replaced documents keep theirs.
        """
        options = options or RunOptions()
        # Written with each document, in its own transaction, so a document is never visible without its groups.
        options = RunOptions(
            metadata=None if options.metadata is None else dict(options.metadata),
            groups=None if options.groups is None else tuple(check_groups(options.groups)),
            force=options.force,
        )
        started = time.perf_counter()
        report = IngestionReport()
        pending: list[PreparedDocument] = []
        pending_chunks = 0
        if progress:
            progress.start(len(files))

        def record(outcome: FileOutcome) -> None:
            report.outcomes.append(outcome)
            if progress:
                progress.file_done(outcome)

        # Files are read and split by a background stage while the batch before them is embedded; it
        # runs at most a few files ahead, so memory holds about one batch however many files there are.
        with PreparedFiles(self.preparer, files, options, progress) as prepared:
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

    def _flush(
        self,
        pending: list[PreparedDocument],
        record: Callable[[FileOutcome], None],
        progress: Progress | None,
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
        # The chunks' lexical terms (jieba, single-threaded Python) are made on a thread of their own while
        # the model runs, not after it in the write: 4-6% of the wall time of ingesting plain text.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kbqa-terms") as terms_worker:
            terms = terms_worker.map(chunk_terms, [item.document for item in pending])
            for start in range(0, len(order), step):
                piece = order[start : start + step]
                embed_started = time.perf_counter()
                vectors[piece] = self.embedder.embed_documents([texts[i] for i in piece])
                self.embed_seconds += time.perf_counter() - embed_started
                if progress:
                    progress.chunks_embedded(len(piece))
            documents, offset = [], 0
            for item, indexed_terms in zip(pending, terms, strict=True):
                count = len(item.document.chunks)
                vectors_of_item = vectors[offset : offset + count]
                documents.append(replace(item.document, vectors=vectors_of_item, indexed_terms=indexed_terms))
                offset += count
        self.kb.add_documents(documents)
        log.info(
            "stored documents", extra={"kb": self.kb.name, "documents": len(documents), "chunks": len(texts)}
        )
        self.preparer.hold_chunks(-len(texts))
        if progress:
            progress.chunks_written(len(texts))
        for item in pending:
            status = "replaced" if item.replaces else "added"
            problems = "; ".join(item.problems) or None
            record(FileOutcome(item.document.source, status, len(item.document.chunks), problems))
