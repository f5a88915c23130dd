"""The first stage of the ingestion pipeline: files read, loaded and split in the background, a batch ahead."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any

from ingestion.loaders import ImageReader, LoadedDocument, LoaderError, LoadLimits, OcrConfig, load_file
from ingestion.loaders.base import stop_checks

if TYPE_CHECKING:
    from ingestion.pipeline import FileOutcome, IngestionPipeline, Progress, SourceFile

log = logging.getLogger(__name__)

_DONE = object()


def load_in_worker(path: Any, ocr: OcrConfig, limits: LoadLimits) -> LoadedDocument:
    """Return the loaded file (run in a worker process, where OCR progress is logged, not reported)."""
    return load_file(path, ImageReader(ocr), limits)


class PreparedFiles:
    """Yields, in file order, each file's outcome or split document, prepared by a background thread.

    The thread stays at most `limit` chunks ahead of the consumer, so while one batch is embedded the next
    is read and split, and memory holds about two batches however many files there are. With
    `ingestion.workers` above 1, files are parsed by that many processes, a few files ahead.
    """

    def __init__(
        self,
        pipeline: IngestionPipeline,
        files: Sequence[SourceFile],
        metadata: dict[str, str] | None,
        force: bool,
        progress: Progress | None,
    ) -> None:
        self._pipeline = pipeline
        self._files = files
        self._metadata = metadata
        self._force = force
        self._progress = progress
        self._limit = pipeline.config.batch_chunks
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

    def __iter__(self) -> Iterator[Any]:
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
        workers = self._pipeline.config.workers
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
        from ingestion.pipeline import FileOutcome  # the pipeline imports this module

        pipeline, config = self._pipeline, self._pipeline.config
        run_hashes: set[str] = set()
        window: deque[tuple[SourceFile, Any]] = deque()  # files in order, each an outcome or a load
        for file in self._files:
            if self._stopped:
                return
            checked = pipeline._check(file, run_hashes, self._metadata, self._force)
            if isinstance(checked, FileOutcome):
                window.append((file, checked))
            else:
                run_hashes.add(checked.content_hash)  # a later copy of this content in the run is skipped
                if pool is None:
                    reader = pipeline._image_reader(file.source, self._progress)
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
            prepared = self._pipeline._document(file, to_load, loaded, self._metadata)
        except LoaderError as error:
            run_hashes.discard(to_load.content_hash)
            return self._put(_failed(file, str(error)))
        chunks = len(prepared.document.chunks)
        self._pipeline._hold_chunks(chunks)
        return self._put(prepared, chunks)


def _loaded_or_error(load: Any) -> LoadedDocument | LoaderError:
    try:
        return load()
    except LoaderError as error:
        # Kept without its traceback: the loader's frames hold the whole file (22 MB of a page refused for
        # its depth, three times over), and the error, raised again below, would keep them in a cycle
        # until a full garbage collection.
        return error.with_traceback(None)


def _failed(file: SourceFile, reason: str) -> FileOutcome:
    from ingestion.pipeline import FileOutcome

    return FileOutcome(file.source, "failed", reason=reason)
