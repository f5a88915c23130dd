"""The models' loading, in a background thread started by the app's lifespan: the server listens (and
`/healthz` answers) from its first second, `/readyz` says which step is still loading and how far the
sample knowledge base has got, and the routes that need a model answer 503 until it is done."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from app.server.errors import ApiError
from app.services import KnowledgeService
from ingestion import FileOutcome

log = logging.getLogger(__name__)

# Seconds a client is told to wait (Retry-After) while the models load.
RETRY_AFTER_S = 5
# Seconds between tries to take the sample knowledge base's builder lock while another process holds it.
BUILDER_POLL_S = 0.5


class LoadingStopped(BaseException):
    """Raised inside the sample knowledge base's ingestion when the server stops while it is built.

    A BaseException, like the ingestion jobs' JobInterrupted, so no loader's `except Exception` turns it
    into a failed file.
    """


class ModelLoading:
    """Loads the embedding model and the answerer, then builds the sample knowledge base, in its own thread;
    `then` (the ingestion worker's start) runs once the models are loaded, unless the server is stopping."""

    def __init__(self, service: KnowledgeService, then: Callable[[], None]) -> None:
        self.service = service
        self.then = then
        self.finished = threading.Event()  # set when loading has ended, well or not
        self.error: str | None = None
        self.seconds: float | None = None
        server = service.settings.server
        self.sample_kb = (
            server.sample_kb if server.sample_kb and not service.exists(server.sample_kb) else None
        )
        self.steps = ["embedding model", "answer model"] + (
            [f"sample knowledge base {self.sample_kb}"] if self.sample_kb else []
        )
        self.done: list[str] = []
        self.files = {"done": 0, "total": 0, "chunks": 0}
        self._started = time.perf_counter()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # between starting what follows the loading and stopping
        self._thread: threading.Thread | None = None

    @property
    def loading(self) -> bool:
        """Return whether the loading has started and not yet ended (not started: the app loads lazily)."""
        return self._thread is not None and not self.finished.is_set()

    def start(self) -> None:
        """Start loading in a background thread; return at once."""
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="kbqa-loading", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop the sample knowledge base's building at its next step and wait up to `timeout` seconds for
        the thread; return whether it has ended (a model half-loaded cannot be interrupted)."""
        with self._lock:
            self._stopping.set()
        return self.finished.wait(timeout) if self._thread is not None else True

    def status(self) -> dict:
        """Return what has loaded, what is still loading, and the sample knowledge base's progress."""
        pending = [step for step in self.steps if step not in self.done]
        body: dict = {"done": list(self.done), "pending": pending, "seconds": self._elapsed()}
        if self.sample_kb and self.files["total"]:
            body["sample_kb"] = {
                "name": self.sample_kb,
                "files_done": self.files["done"],
                "files": self.files["total"],
                "chunks_done": self.files["chunks"],
            }
        return body

    def refuse_while_loading(self) -> None:
        """Raise a 503 (with Retry-After) while the models load; return nothing once they are loaded."""
        if self.loading:
            pending = ", ".join(step for step in self.steps if step not in self.done)
            raise ApiError(
                503,
                "loading",
                f"kbqa is still loading ({pending}); try again in a few seconds (GET /readyz shows progress)",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )

    def _elapsed(self) -> float:
        return round(self.seconds if self.seconds is not None else time.perf_counter() - self._started, 1)

    def _run(self) -> None:
        try:
            _ = self.service.embedder
            self.done.append(self.steps[0])
            _ = self.service.answerer
            self.done.append(self.steps[1])
            if self.sample_kb:
                self._build_sample_kb(self.sample_kb)
                self.done.append(self.steps[2])
            log.info("models loaded", extra={"seconds": self._elapsed()})
        except LoadingStopped:
            log.info("loading stopped: the server is shutting down")
        except Exception as error:  # /readyz says why; /healthz still answers
            log.exception("loading the models failed")
            self.error = str(error)
        with self._lock:
            try:
                if not self._stopping.is_set():
                    self.then()
            except Exception as error:  # e.g. another server holds the data directory: /readyz says so
                log.exception("starting what follows the loading failed")
                self.error = self.error or str(error)
            finally:  # else /readyz would say "loading" for ever
                self.seconds = time.perf_counter() - self._started
                self.finished.set()

    def _build_sample_kb(self, name: str) -> None:
        docs = self.service.settings.server.sample_docs
        if not docs.is_dir():
            log.warning(
                "no sample documents: the sample knowledge base is not built",
                extra={"kb": name, "sample_docs": str(docs)},
            )
            return
        # Replicas that start together (on one PostgreSQL, or one data directory) build it one at a time: the
        # first builds it, the others wait for it, then find it there.
        with self.service.building(name, self._wait_for_builder):
            if self.service.exists(name):
                log.info("the sample knowledge base was built by another process", extra={"kb": name})
                return
            try:
                report = self.service.ingest(name, [docs], _SampleProgress(self))
            except LoadingStopped:
                # Removed, so that the next start builds it whole rather than finding it there, half built.
                if self.service.exists(name):
                    self.service.delete(name)
                raise
        log.info("built the sample knowledge base", extra={"kb": name, "chunks": report.chunks})

    def _wait_for_builder(self) -> None:
        # Between tries to take the builder's lock: the server stopping meanwhile ends the wait.
        if self._stopping.wait(BUILDER_POLL_S):
            raise LoadingStopped


class _SampleProgress:
    """Counts the sample knowledge base's files and chunks for /readyz; stops its ingestion when the
    server stops."""

    def __init__(self, loading: ModelLoading) -> None:
        self.loading = loading

    def start(self, total_files: int) -> None:
        """Note how many files the sample knowledge base has."""
        self.loading.files["total"] = total_files

    def file_done(self, outcome: FileOutcome) -> None:
        """Count one file."""
        self.loading.files["done"] += 1
        self._stop_if_asked()

    def chunks_embedded(self, count: int) -> None:
        """Count chunks embedded."""
        self.loading.files["chunks"] += count
        self._stop_if_asked()

    def chunks_written(self, count: int) -> None:
        """Nothing to note: embedded chunks are counted already."""
        self._stop_if_asked()

    def _stop_if_asked(self) -> None:
        if self.loading._stopping.is_set():
            raise LoadingStopped
