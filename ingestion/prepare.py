"""The first stage of the ingestion pipeline: files checked against the store, loaded and split, a batch ahead.

`DocumentPreparer` turns one file into a document ready to embed (or says what happened to it);
`PreparedFiles` runs it over a run's files in a background thread while the batch before is embedded.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from typing import Any

import numpy as np

from ingestion.config import IngestionConfig
from ingestion.loaders import ImageReader, LoadedDocument, LoaderError, LoadLimits, OcrConfig, load_file
from ingestion.loaders.base import stop_checks
from ingestion.splitter import ChineseTextSplitter
from ingestion.types import ALREADY_STORED, FileOutcome, Progress, RunOptions, SourceFile
from retrieval import DocumentRecord, KnowledgeBase, NewDocument

log = logging.getLogger(__name__)

_DONE = object()


@dataclass(frozen=True)
class ToLoad:
    """A file that is to be loaded: its bytes, their hash, and the document it replaces, if any."""

    data: bytes
    content_hash: str
    stored: DocumentRecord | None


@dataclass
class PreparedDocument:
    """A file's split document, ready to embed, and what of the file could not be read."""

    document: NewDocument
    replaces: bool
    problems: list[str]


class DocumentPreparer:
    """Checks files against a knowledge base, and splits the loaded new or changed ones into documents.

    Each call takes the run's `RunOptions`, its metadata a dict and its groups a checked tuple. It counts the chunks split and not yet written (`chunks_held`, and at most `peak_chunks_held`): the
    pipeline lets them go as it writes them, so memory stays flat in the number of files.
    """

    def __init__(
        self,
        kb: KnowledgeBase,
        splitter: ChineseTextSplitter,
        config: IngestionConfig,
    ) -> None:
        self.kb, self.splitter, self.config = kb, splitter, config
        self.chunks_held = 0
        self.peak_chunks_held = 0
        self._held_lock = threading.Lock()

    def check(self, file: SourceFile, run_hashes: set[str], options: RunOptions) -> ToLoad | FileOutcome:
        """Return the file's bytes, hash and stored version when it is to be loaded, else what happened to it.

        An unchanged file given new metadata or groups by the run has them set in place ("updated").
        """
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
        metadata, groups = options.metadata, options.groups
        if not options.force and (unchanged or copy):
            new_metadata = unchanged and metadata is not None and stored.metadata != metadata
            new_groups = unchanged and groups is not None and stored.groups != groups
            if new_metadata:
                self.kb.set_metadata(stored.id, metadata)
            if new_groups:
                self.kb.set_groups(stored.id, groups)
            if new_metadata or new_groups:
                return FileOutcome(file.source, "updated")
            return FileOutcome(file.source, "skipped", reason=ALREADY_STORED)
        return ToLoad(data, content_hash, stored)

    def image_reader(self, source: str, progress: Progress | None) -> ImageReader:
        """Return the OCR reader for one file, which reports each image it reads."""
        image_read = getattr(progress, "image_read", None)

        def on_image(where: str) -> None:
            log.info("OCR reading", extra={"source": source, "image": where})
            if image_read:
                image_read(source, where)

        return ImageReader(self.config.ocr, on_image)

    def document(
        self, file: SourceFile, to_load: ToLoad, loaded: LoadedDocument, options: RunOptions
    ) -> PreparedDocument:
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
            vectors=np.zeros((0, 0), np.float32),  # filled by the pipeline: one embedding call for the batch
            metadata=(stored.metadata if stored else {}) if options.metadata is None else options.metadata,
            groups=(stored.groups if stored else ()) if options.groups is None else tuple(options.groups),
        )
        return PreparedDocument(document, replaces=stored is not None, problems=loaded.problems)

    def hold_chunks(self, count: int) -> None:
        """Note `count` more chunks held in memory (negative: written and let go); return nothing."""
        with self._held_lock:
            self.chunks_held += count
            self.peak_chunks_held = max(self.peak_chunks_held, self.chunks_held)


def load_in_worker(path: Any, ocr: OcrConfig, limits: LoadLimits) -> LoadedDocument:
    """Return the loaded file (run in a worker process, where OCR progress is logged, not reported)."""
    return load_file(path, ImageReader(ocr), limits)


class PreparedFiles:
    """Yields, in file order, each file's outcome or split document, prepared by a background thread.

    The thread stays at most `ingestion.batch_chunks` chunks ahead of the consumer, so while one batch is
    embedded the next is read and split, and memory holds about two batches however many files there
    are. With `ingestion.workers` above 1, files are parsed by that many processes, a few files ahead.
    """

    def __init__(
        self,
        preparer: DocumentPreparer,
        files: Sequence[SourceFile],
        options: RunOptions,
        progress: Progress | None,
    ) -> None:
        self._preparer = preparer
        self._files = files
        self._options = options
        self._progress = progress
        self._limit = preparer.config.batch_chunks
        self._items: deque[tuple[Any, int]] = deque()
        self._queued_chunks = 0
        self._stopped = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._produce, name="kbqa-ingest-prepare", daemon=True)

    def __enter__(self) -> PreparedFiles:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        # A stop (an exception, a cancelled job) ends the stage after the file at hand; nothing of it is kept.
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        self._thread.join()

    def __iter__(self) -> Iterator[FileOutcome | PreparedDocument]:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._items)
                item, chunks = self._items.popleft()
                self._queued_chunks -= chunks
                self._changed.notify_all()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, item: Any, chunks: int = 0) -> bool:
        """Queue `item` once there is room; return False when the stage was stopped instead."""
        with self._changed:
            self._changed.wait_for(lambda: self._stopped or self._queued_chunks < self._limit)
            if self._stopped:
                return False
            self._items.append((item, chunks))
            self._queued_chunks += chunks
            self._changed.notify_all()
            return True

    def _produce(self) -> None:
        workers = self._preparer.config.workers
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 else None
        try:
            self._prepare_all(pool, ahead=2 * workers)
            self._put(_DONE)
        except BaseException as error:  # handed to the consumer, which raises it in its own thread
            with self._changed:
                self._items.append((error, 0))
                self._changed.notify_all()
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _prepare_all(self, pool: ProcessPoolExecutor | None, ahead: int) -> None:
        preparer, config = self._preparer, self._preparer.config
        run_hashes: set[str] = set()
        window: deque[tuple[SourceFile, Any]] = deque()  # files in order, each an outcome or a load
        for file in self._files:
            if self._stopped:
                return
            checked = preparer.check(file, run_hashes, self._options)
            if isinstance(checked, FileOutcome):
                window.append((file, checked))
            else:
                run_hashes.add(checked.content_hash)  # a later copy of this content in the run is skipped
                if pool is None:
                    reader = preparer.image_reader(file.source, self._progress)
                    # A cancel or a stop reaches a loader in a long loop (rows, elements), not only between files.
                    with stop_checks(getattr(self._progress, "check_stop", None)):
                        load: Any = _loaded_or_error(
                            partial(load_file, file.path, reader, config.load_limits())
                        )
                else:
                    load = pool.submit(load_in_worker, file.path, config.ocr, config.load_limits())
                window.append((file, (checked, load)))
            while len(window) > (ahead if pool else 0) or (window and not isinstance(window[0][1], tuple)):
                if not self._finish(*window.popleft(), run_hashes):
                    return
        while window:
            if not self._finish(*window.popleft(), run_hashes):
                return

    def _finish(self, file: SourceFile, entry: Any, run_hashes: set[str]) -> bool:
        """Queue the outcome or split document of one file; return False when the stage was stopped."""
        if not isinstance(entry, tuple):
            return self._put(entry)
        to_load, load = entry
        loaded = _loaded_or_error(load.result) if isinstance(load, Future) else load
        try:
            if isinstance(loaded, LoaderError):
                raise loaded
            prepared = self._preparer.document(file, to_load, loaded, self._options)
        except LoaderError as error:
            run_hashes.discard(to_load.content_hash)
            return self._put(FileOutcome(file.source, "failed", reason=str(error)))
        chunks = len(prepared.document.chunks)
        self._preparer.hold_chunks(chunks)
        return self._put(prepared, chunks)


def _loaded_or_error(load: Any) -> LoadedDocument | LoaderError:
    try:
        return load()
    except LoaderError as error:
        # Kept without its traceback: the loader's frames hold the whole file (22 MB of a page refused for
        # its depth, three times over), and the error, raised again below, would keep them in a cycle
        # until a full garbage collection.
        return error.with_traceback(None)
