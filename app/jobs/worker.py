"""What both job queues share: their public face, and how a worker runs one job (`IngestionJobs`).

The SQLite queue (`sqlite_queue.py`, one server) and the PostgreSQL queue (`pg_queue.py`, any number of
nodes and workers) differ in where jobs and their files are kept and how a worker takes one; how a job
runs — the pipeline with its progress in the row, a wait for a busy knowledge base, a cancel or a stop
at a stop point, and what the job's end says — is written here once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from app.jobs.model import (
    Job,
    JobCancelled,
    JobKind,
    JobNotFound,
    JobQueueFull,
    JobStatus,
    job_from_row,
    request_columns,
    unfinished_sources,
)
from app.jobs.progress import JobProgress
from app.services import KnowledgeService
from app.uploads import Uploads
from ingestion import IngestionReport, RunOptions, SourceFile
from retrieval import KnowledgeBaseBusy

log = logging.getLogger(__name__)

# How long a job waits for a knowledge base another writer holds (a DELETE, `kbqa index build` in another
# process) before it fails; its files are kept meanwhile, and a cancel or a stop ends the wait.
WRITE_LOCK_WAIT_S = 600.0
_WRITE_LOCK_POLL_S = 0.25


@dataclass
class JobEnd:
    """How a job that ran to its end (or to a cancel) ended: what its row is to say and which files to keep."""

    status: JobStatus
    error: str | None
    kept: list[SourceFile]  # files that did not fail: those whose document is stored become originals
    outcomes: list[dict] | None  # every file's outcome, when the run got to the end
    chunks_done: int  # chunks committed


class IngestionJobs(ABC):
    """A queue of ingestion jobs and (when started) the worker that runs them; the routers' one view of it."""

    def __init__(self, service: KnowledgeService, queue_size: int) -> None:
        self.service = service
        self.queue_size = queue_size
        self.uploads = Uploads(service, service.settings.data_dir)
        self._stopping = threading.Event()
        # Per running job, the page OCR is reading: progress within a file.
        self._reading: dict[str, str] = {}
        self._cancelled: set[str] = set()  # running jobs asked to stop

    # --- the face: lifecycle and requests ----------------------------------------------------------

    @abstractmethod
    def start(self) -> None:
        """Start the worker; return nothing."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the worker once the running job has stored the file or batch at hand; return nothing."""

    def submit(
        self,
        kb: str,
        files: Sequence[SourceFile],
        kind: JobKind = "ingest",
        metadata: Mapping[str, str] | None = None,
        force: bool = False,
        job_id: str | None = None,
        groups: Sequence[str] | None = None,
    ) -> Job:
        """Queue a job that ingests `files` into `kb` (with these access `groups`, when given); return it.
        JobQueueFull when too many wait."""
        if self.depth() >= self.queue_size:
            raise JobQueueFull(f"{self.queue_size} ingestion jobs are already waiting; try again later")
        job_id = job_id or uuid.uuid4().hex
        self._store_job(job_id, kb, kind, files, request_columns(metadata, groups), force)
        return self.get(job_id)

    @abstractmethod
    def _store_job(
        self, job_id: str, kb: str, kind: JobKind, files: Sequence[SourceFile], request: tuple, force: bool
    ) -> None:
        """Store a queued job's row, with its `request` columns (metadata, access_groups), and its files."""

    @abstractmethod
    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one at its next stop point; return it."""

    def get(self, job_id: str) -> Job:
        """Return the job with this id; JobNotFound if there is none."""
        row = self._job_row(job_id)
        if row is None:
            raise JobNotFound(f"job '{job_id}' does not exist")
        return self._shown(job_from_row(row))

    def list(self, kb: str | None = None, limit: int = 100) -> list[Job]:
        """Return the newest jobs, of one knowledge base or all."""
        return [self._shown(job_from_row(row)) for row in self._job_rows(kb, limit)]

    def _shown(self, job: Job) -> Job:
        """Return the job as it is shown (a queue may add what is kept outside its row)."""
        return job

    @abstractmethod
    def _job_row(self, job_id: str) -> Sequence | None:
        """Return the columns of `job_from_row` of the job with this id, or None."""

    @abstractmethod
    def _job_rows(self, kb: str | None, limit: int) -> list[Sequence]:
        """Return the columns of `job_from_row` of the newest jobs, of one knowledge base or all."""

    @abstractmethod
    def _inputs(self, job_id: str) -> str:
        """Return the job row's `inputs` column (JSON [{source, ...}])."""

    def _unfinished(self, job_id: str) -> str:
        """Return the first few sources of a job's files that it had not finished, comma-separated."""
        return ", ".join(unfinished_sources(self.get(job_id), self._inputs(job_id))[:5])

    @abstractmethod
    def depth(self) -> int:
        """Return how many jobs wait to run."""

    @abstractmethod
    def totals(self) -> tuple[dict[str, int], int]:
        """Return files handled by finished jobs per outcome, and the chunks they wrote."""

    def staging_dir(self) -> tuple[str, Path]:
        """Return a new job id and the empty folder its uploaded files go to."""
        return self.uploads.staging_dir()

    # --- what a running job's progress needs of its queue (JobControl) -----------------------------

    @abstractmethod
    def update_row(self, job_id: str, **values: object) -> None:
        """Set these columns of the job's row; return nothing."""

    def show_reading(self, job_id: str, reading: str | None) -> None:
        """Show what the job reads now (None: nothing in particular); return nothing."""
        if reading is None:
            self._reading.pop(job_id, None)
        else:
            self._reading[job_id] = reading

    def cancel_asked(self, job_id: str) -> bool:
        """Return whether the running job has been asked to stop."""
        return job_id in self._cancelled

    def is_stopping(self) -> bool:
        """Return whether the worker is stopping."""
        return self._stopping.is_set()

    # --- running one job ---------------------------------------------------------------------------

    def _run_job(
        self, job_id: str, kb: str, files: Sequence[SourceFile], options: RunOptions, chunks_before: int
    ) -> JobEnd:
        """Return how the job ended once it ran through or was cancelled; JobInterrupted when the worker
        stops (the job goes on later), and the run's error when it could not run."""
        # A resumed job keeps the chunks it stored before (those files are now skipped).
        progress = JobProgress(self, job_id, chunks_before)
        try:
            report = self._ingest_when_free(job_id, progress, kb, files, options)
        except JobCancelled:
            stored = progress.stored_sources()
            error = f"cancelled; {len(stored)} of {len(files)} files were stored before it stopped"
            kept = [f for f in files if f.source in stored]
            return JobEnd("cancelled", error, kept, None, progress.committed)
        finally:
            self.show_reading(job_id, None)
        failures = report.failures
        error = None
        if failures:
            reasons = "; ".join(f"{f.source}: {f.reason}" for f in failures[:5])
            error = f"{len(failures)} of {len(files)} files failed: {reasons}"
        failed = {f.source for f in failures}
        return JobEnd(
            "failed" if failures else "succeeded",
            error,
            [f for f in files if f.source not in failed],
            [asdict(o) for o in report.outcomes],
            progress.committed,
        )

    def _ingest_when_free(
        self, job_id: str, progress: JobProgress, kb: str, files: Sequence[SourceFile], options: RunOptions
    ) -> IngestionReport:
        """Return the report of ingesting `files` with the job's options, waiting up to WRITE_LOCK_WAIT_S
        while another writer holds the knowledge base (KnowledgeBaseBusy after that), rather than failing
        and dropping the files."""
        deadline = time.monotonic() + WRITE_LOCK_WAIT_S
        while True:
            try:
                # The write lock is taken before anything is read or stored, so a busy refusal changed nothing.
                return self.service.ingest_files(kb, files, progress, options)
            except KnowledgeBaseBusy:
                if time.monotonic() >= deadline:
                    raise
            finally:
                self.show_reading(job_id, None)
            self.show_reading(job_id, "waiting for another writer of the knowledge base to finish")
            progress.check_stop()
            time.sleep(_WRITE_LOCK_POLL_S)
