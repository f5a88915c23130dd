"""Ingestion jobs: uploads indexed by a background worker, their progress kept in SQLite.

An upload returns at once with a job; one worker thread runs the jobs in order, so two uploads into a
knowledge base are never interleaved (the knowledge base's own write lock would refuse that anyway),
and search and chat stay responsive on the request threads meanwhile. Jobs live in
`<data_dir>/jobs.sqlite`: a job that was queued or running when the server stopped is queued again at
the next start — ingestion skips what is already stored, so finishing it twice is harmless — and is
never lost silently. So a server told to stop does not wait for a long upload: the running job stops
after the file or batch at hand, with what it stored committed, and goes on at the next start. Uploaded files wait in `<data_dir>/uploads/<job>/`; once indexed they are kept as
the documents' originals (`KnowledgeService.original_path`) and a failed file is dropped.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import json
import logging
import os
import queue
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from app.services import KnowledgeService
from ingestion import FileOutcome, IngestionReport, RunOptions, SourceFile
from retrieval import KnowledgeBaseBusy, utc_now

log = logging.getLogger(__name__)

# Heap blocks of this many bytes or more are mapped on their own, so freeing one returns it (map_large_blocks).
LARGE_BLOCK = 4 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number

# A job the server went down in this many times (a file that crashes it: out of memory, a parser bug)
# is failed at the next start instead of being run again, and crashing it again, at every start.
MAX_ATTEMPTS = 3
# How long a job waits for a knowledge base another writer holds (a DELETE, `kbqa index build` in another
# process) before it fails; its files are kept meanwhile, and a cancel or a stop ends the wait.
WRITE_LOCK_WAIT_S = 600.0
_WRITE_LOCK_POLL_S = 0.25
SERVER_LOCK_FILE = "server.lock"

JobKind = Literal["ingest", "reindex"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kb TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    inputs TEXT NOT NULL,            -- JSON [{source, path}]
    metadata TEXT,                   -- JSON object, or NULL to keep the documents' own
    force INTEGER NOT NULL,
    files_done INTEGER NOT NULL DEFAULT 0,
    chunks_done INTEGER NOT NULL DEFAULT 0,
    files TEXT NOT NULL DEFAULT '[]', -- JSON [{source, status, chunks, reason}]
    error TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, -- runs that began; one the server did not survive stays counted
    chunks_stored INTEGER NOT NULL DEFAULT 0 -- of chunks_done, those committed (a resumed job starts there)
);
CREATE INDEX IF NOT EXISTS jobs_by_kb ON jobs(kb, seq);
"""


class JobNotFound(LookupError):
    """No job has this id."""


class JobQueueFull(RuntimeError):
    """Too many jobs are waiting; try again later."""


class JobFinished(RuntimeError):
    """The job has already finished, so it cannot be cancelled."""


class DataDirectoryInUse(RuntimeError):
    """Another live server runs on this data directory."""


class ServerLock:
    """The claim of one server on a data directory: an exclusive lock on `<data_dir>/server.lock`.

    Two servers on one directory would each requeue the other's running jobs at start and delete their
    staged files, so the second is refused. The lock is the kernel's (flock): it goes with the process,
    so a server killed with -9 leaves nothing to clean up.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._file: object | None = None

    def acquire(self) -> None:
        """Hold the data directory; raise DataDirectoryInUse, naming the other server's pid, when one holds it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.data_dir / SERVER_LOCK_FILE, "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise DataDirectoryInUse(
                f"another kbqa server (pid {holder}) is running on the data directory {self.data_dir.resolve()}; "
                "one server per data directory: stop that one first, or give this one its own --data-dir"
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        self._file = lock_file

    def release(self) -> None:
        """Let the data directory go; return nothing."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


@dataclass
class Job:
    """An ingestion job and how far it got."""

    id: str
    kb: str
    kind: JobKind
    status: JobStatus
    files_total: int
    files_done: int
    chunks_done: int
    files: list[dict] = field(default_factory=list)
    error: str | None = None
    created_at: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    reading: str | None = None  # the page OCR is reading now ("scan.pdf page 3/12"), while running
    groups: list[str] | None = None  # the access groups its documents get (None: each keeps its own)


class IngestionJobs:
    """The job table and the worker that runs it."""

    def __init__(self, service: KnowledgeService, queue_size: int) -> None:
        self.service = service
        self.queue_size = queue_size
        data_dir = service.settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.uploads = data_dir / "uploads"
        self._db = sqlite3.connect(data_dir / "jobs.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column in ("attempts", "chunks_stored"):  # a table made by an older kbqa lacks them
            if column not in columns:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
        if "access_groups" not in columns:
            self._db.execute("ALTER TABLE jobs ADD COLUMN access_groups TEXT")  # JSON list, or NULL
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        # Per running job, the page OCR is reading: progress within a file, kept in memory only.
        self._reading: dict[str, str] = {}
        self._cancelled: set[str] = set()  # running jobs asked to stop
        self._server_lock = ServerLock(data_dir)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Claim the data directory (DataDirectoryInUse when another server holds it), queue again the jobs a
        previous run left unfinished, remove originals whose delete a crash cut short, and start the worker."""
        # Before any job is touched: a second server must not requeue the first one's running jobs.
        self._server_lock.acquire()
        map_large_blocks()
        with self._lock:
            rows = self._db.execute(
                "SELECT id, status, attempts FROM jobs WHERE status IN ('queued', 'running') ORDER BY seq"
            ).fetchall()
            self._db.execute("UPDATE jobs SET status = 'queued' WHERE status = 'running'")
        self._remove_leftovers({job_id for job_id, _, _ in rows})
        for job_id, status, attempts in rows:
            if status == "running" and attempts >= MAX_ATTEMPTS:
                self._give_up(job_id, attempts)
                continue
            log.info("job resumed after a restart", extra={"job": job_id})
            self._queue.put(job_id)
        self._remove_orphan_originals()
        self._worker = threading.Thread(target=self._work, name="kbqa-ingestion", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Stop the worker once the running job has stored the file or batch at hand; return nothing.

        The running job and the queued ones stay in the table and run at the next start.
        """
        if self._worker is not None:
            self._stopping.set()
            self._queue.put(None)
            self._worker.join()
            self._worker = None
        self._db.close()
        self._server_lock.release()

    # --- requests ----------------------------------------------------------------------------------

    def staging_dir(self) -> tuple[str, Path]:
        """Return a new job id and the empty folder its uploaded files go to."""
        job_id = uuid.uuid4().hex
        folder = self.uploads / job_id
        folder.mkdir(parents=True)
        return job_id, folder

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
        inputs = [{"source": f.source, "path": str(f.path)} for f in files]
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, kb, kind, status, inputs, metadata, force, created_at, access_groups, seq) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs))",
                (
                    job_id,
                    kb,
                    kind,
                    json.dumps(inputs, ensure_ascii=False),
                    None if metadata is None else json.dumps(dict(metadata), ensure_ascii=False),
                    int(force),
                    utc_now(),
                    None if groups is None else json.dumps(list(groups), ensure_ascii=False),
                ),
            )
        self._queue.put(job_id)
        return self.get(job_id)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one at its next stop point (a few chunks embedded),
        keeping what it stored before; return it. JobFinished if it has ended.
        """
        with self._lock:
            row = self._db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"job '{job_id}' does not exist")
            if row[0] == "queued":
                self._db.execute(
                    "UPDATE jobs SET status = 'cancelled', error = 'cancelled before it ran', finished_at = ? "
                    "WHERE id = ?",
                    (utc_now(), job_id),
                )
            elif row[0] == "running":
                self._cancelled.add(job_id)
            else:
                raise JobFinished(f"job '{job_id}' has already finished ({row[0]})")
        if row[0] == "queued":
            self._discard_staged(job_id)
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        """Return the job with this id; JobNotFound if there is none."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"job '{job_id}' does not exist")
        return self._with_reading(_job(row))

    def list(self, kb: str | None = None, limit: int = 100) -> list[Job]:
        """Return the newest jobs, of one knowledge base or all."""
        where, args = ("WHERE kb = ?", (kb,)) if kb else ("", ())
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ?", (*args, limit)
            ).fetchall()
        return [self._with_reading(_job(row)) for row in rows]

    def _with_reading(self, job: Job) -> Job:
        """Return the job with the page OCR is reading for it now, if any."""
        job.reading = self._reading.get(job.id)
        return job

    def depth(self) -> int:
        """Return how many jobs wait to run."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]

    def totals(self) -> tuple[dict[str, int], int]:
        """Return files handled by finished jobs per outcome, and the chunks they wrote."""
        with self._lock:
            files = self._db.execute(
                "SELECT json_extract(f.value, '$.status'), COUNT(*) FROM jobs, json_each(jobs.files) AS f "
                "GROUP BY 1"
            ).fetchall()
            chunks = self._db.execute("SELECT COALESCE(SUM(chunks_done), 0) FROM jobs").fetchone()[0]
        return dict(files), chunks

    # --- the worker --------------------------------------------------------------------------------

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None and not self._stopping.is_set():
            try:
                self._run(job_id)
            except Exception:  # a bug in one job must not stop the worker
                log.exception("ingestion job crashed", extra={"job": job_id})
                self._update(job_id, status="failed", error="internal error", finished_at=utc_now())
            self._cancelled.discard(job_id)  # asked too late: it had finished
            return_freed_memory()

    def _run(self, job_id: str) -> None:
        with self._lock:
            kb, inputs, metadata, force, groups = self._db.execute(
                "SELECT kb, inputs, metadata, force, access_groups FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        files = [SourceFile(Path(i["path"]), i["source"]) for i in json.loads(inputs)]
        # A resumed job keeps the chunks it stored before the restart (those files are now skipped).
        with self._lock:
            (chunks_before,) = self._db.execute(
                "SELECT chunks_stored FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        with self._lock:  # one statement: a job seen running has its attempt counted
            started = self._db.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, files_done = 0, files = '[]', "
                "attempts = attempts + 1 WHERE id = ? AND status = 'queued'",
                (utc_now(), job_id),
            ).rowcount
        if not started:  # cancelled while it waited
            return
        progress = _JobProgress(self, job_id, chunks_before)
        try:
            report = self._ingest_when_free(
                job_id,
                progress,
                kb,
                files,
                metadata,
                force,
                groups,
            )
        except JobCancelled:
            self._cancelled.discard(job_id)
            self._reading.pop(job_id, None)
            stored = [FileOutcome(**o) for o in progress.outcomes if o["status"] != "failed"]
            self._keep_originals(kb, [f for f in files if f.source in {o.source for o in stored}], stored)
            self._discard_staged(job_id)
            self._update(
                job_id,
                status="cancelled",
                error=f"cancelled; {len(stored)} of {len(files)} files were stored before it stopped",
                finished_at=utc_now(),
                chunks_done=progress.committed,
            )
            log.info("job cancelled", extra={"job": job_id})
            return
        except JobInterrupted:
            self._reading.pop(job_id, None)
            # Left 'running' with its staged files: the next start queues it again (see `start`). A
            # stop asked for is not an attempt the server failed to survive.
            with self._lock:
                self._db.execute("UPDATE jobs SET attempts = attempts - 1 WHERE id = ?", (job_id,))
            log.info("job interrupted by shutdown; it goes on at the next start", extra={"job": job_id})
            return
        except Exception as error:  # the knowledge base was deleted, is locked, a disk is full …
            self._reading.pop(job_id, None)
            self._update(job_id, status="failed", error=str(error), finished_at=utc_now())
            self._discard_staged(job_id)
            return
        self._keep_originals(kb, files, report.outcomes)
        self._discard_staged(job_id)
        failures = report.failures
        error = None
        if failures:
            reasons = "; ".join(f"{f.source}: {f.reason}" for f in failures[:5])
            error = f"{len(failures)} of {len(files)} files failed: {reasons}"
        self._update(
            job_id,
            status="failed" if failures else "succeeded",
            error=error,
            finished_at=utc_now(),
            files=json.dumps([asdict(o) for o in report.outcomes], ensure_ascii=False),
        )

    def _ingest_when_free(
        self,
        job_id: str,
        progress: _JobProgress,
        kb: str,
        files: Sequence[SourceFile],
        metadata: str | None,
        force: int,
        groups: str | None,
    ) -> IngestionReport:
        """Return the report of ingesting `files` with the job row's stored `metadata` and `groups` (JSON or
        NULL) and `force`, waiting up to WRITE_LOCK_WAIT_S while another writer holds the knowledge base
        (KnowledgeBaseBusy after that), rather than failing and dropping the files."""
        options = RunOptions(
            metadata=None if metadata is None else json.loads(metadata),
            groups=None if groups is None else json.loads(groups),
            force=bool(force),
        )
        deadline = time.monotonic() + WRITE_LOCK_WAIT_S
        while True:
            try:
                # The write lock is taken before anything is read or stored, so a busy refusal changed nothing.
                return self.service.ingest_files(kb, files, progress, options)
            except KnowledgeBaseBusy:
                if time.monotonic() >= deadline:
                    raise
            finally:
                self._reading.pop(job_id, None)
            self._reading[job_id] = "waiting for another writer of the knowledge base to finish"
            progress._stop_if_asked()
            time.sleep(_WRITE_LOCK_POLL_S)

    def _remove_orphan_originals(self) -> None:
        """Delete kept originals whose document is gone: a delete commits, then unlinks, and a crash between
        the two would leave the file for ever (nothing else runs on the data directory at start)."""
        for name in self.service.names():
            folder = self.service.catalog.path(name) / "originals"
            if not folder.is_dir():
                continue
            try:
                kept = {self.service.original_path(name, d.source) for d in self.service.documents(name)}
            except Exception:  # a knowledge base that does not open is reported when it is used
                log.exception("could not list the documents of a knowledge base", extra={"kb": name})
                continue
            for path in folder.rglob("*"):
                if path.is_file() and path not in kept:
                    log.info(
                        "removing the original of a deleted document", extra={"kb": name, "path": str(path)}
                    )
                    path.unlink(missing_ok=True)

    def _keep_originals(self, kb: str, files: Sequence[SourceFile], outcomes: Sequence[FileOutcome]) -> None:
        """Move each file whose document is stored under its name to where that document's original is kept.

        A file skipped as unchanged counts too: a job resumed after a crash finds its first files stored.
        """
        failed = {o.source for o in outcomes if o.status == "failed"}
        stored = {d.source for d in self.service.documents(kb)}
        for file in files:
            target = self.service.original_path(kb, file.source)
            if file.source in stored and file.source not in failed and file.path != target:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(file.path, target)

    def _remove_leftovers(self, unfinished: set[str]) -> None:
        """Delete staging folders no unfinished job needs: an upload a crash cut short, before its job was saved."""
        if not self.uploads.is_dir():
            return
        for folder in self.uploads.iterdir():
            if folder.name not in unfinished:
                log.info("removing an interrupted upload", extra={"folder": str(folder)})
                shutil.rmtree(folder, ignore_errors=True)

    def _give_up(self, job_id: str, attempts: int) -> None:
        """Fail a job the server went down in `attempts` times, naming the files it had not finished."""
        job = self.get(job_id)
        with self._lock:
            (inputs,) = self._db.execute("SELECT inputs FROM jobs WHERE id = ?", (job_id,)).fetchone()
        done = {outcome["source"] for outcome in job.files}
        unfinished = [i["source"] for i in json.loads(inputs) if i["source"] not in done]
        reason = (
            f"the server went down {attempts} times while running this job; given up. One of the files "
            f"it had not finished may crash the server: {', '.join(unfinished[:5])}"
        )
        log.error("job given up", extra={"job": job_id, "attempts": attempts})
        self._update(job_id, status="failed", error=reason, finished_at=utc_now())
        self._discard_staged(job_id)

    def _discard_staged(self, job_id: str) -> None:
        shutil.rmtree(self.uploads / job_id, ignore_errors=True)

    def _update(self, job_id: str, **values: object) -> None:
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))


def map_large_blocks() -> None:
    """Have glibc give every block of `LARGE_BLOCK` bytes or more its own mapping, for the rest of the
    process; return nothing.

    By default glibc raises its mmap threshold (up to 32 MiB) each time it frees a mapped block, so the
    buffers of the next large upload come from the heap instead, where malloc_trim cannot always return
    them: a server that had served other requests kept about 40 MiB more after every second or third
    2e6-deep HTML page (8 pages: +157 MiB), and none with the threshold fixed at 4 MiB
    (tests/app/server/test_under_load.py). A fixed threshold costs a mapping per large block, which is
    nothing beside what such a block is for. Elsewhere than glibc there is no mallopt, and nothing to do.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK)


def return_freed_memory() -> None:
    """Hand the heap memory a job freed back to the system; return nothing.

    glibc keeps freed memory for reuse, and raises its mmap threshold after large blocks are freed, so a
    22 MB page read once stayed resident (+71 MiB 10 s after its job ended, `bench/abuse.py`) until
    trimmed. Elsewhere than glibc there is no malloc_trim, and nothing to do.
    """
    gc.collect()  # what a job left in reference cycles (an exception and the frames it holds) goes first
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


class JobInterrupted(BaseException):
    """Raised inside a running ingestion, between files, batches or OCR'd pages, when the server is stopping.

    A BaseException, like asyncio's CancelledError, so that no loader's `except Exception` turns it
    into a failed file.
    """


class JobCancelled(Exception):
    """Raised inside a running ingestion, between files or batches, when the job is cancelled."""


class _JobProgress:
    """Writes a running ingestion's progress into its job row, and stops it when the server stops or the
    job is cancelled.

    `chunks_done` counts chunks stored plus those embedded for the batch at hand, so a large document
    shows progress before it is written (whole) at the end of its batch.
    """

    def __init__(self, jobs: IngestionJobs, job_id: str, chunks: int = 0) -> None:
        self.jobs, self.job_id = jobs, job_id
        self.outcomes: list[dict] = []
        self.committed = chunks
        self.embedded = 0  # of the batch at hand, not yet stored

    def start(self, total_files: int) -> None:
        """Nothing to note: the job knows its files."""

    def file_done(self, outcome: FileOutcome) -> None:
        """Record one finished file."""
        self.jobs._reading.pop(self.job_id, None)
        self.outcomes.append(asdict(outcome))
        self.jobs._update(
            self.job_id, files_done=len(self.outcomes), files=json.dumps(self.outcomes, ensure_ascii=False)
        )
        self._stop_if_asked()

    def chunks_embedded(self, count: int) -> None:
        """Record chunks embedded for the batch at hand."""
        self.embedded += count
        self.jobs._update(self.job_id, chunks_done=self.committed + self.embedded)
        self._stop_if_asked()

    def chunks_written(self, count: int) -> None:
        """Record chunks stored."""
        self.committed += count
        self.embedded = max(0, self.embedded - count)
        self.jobs._update(
            self.job_id, chunks_done=self.committed + self.embedded, chunks_stored=self.committed
        )
        self._stop_if_asked()

    def image_read(self, source: str, where: str) -> None:
        """Show the page OCR is about to read; stop first when asked (a long scan takes many minutes)."""
        self._stop_if_asked()
        self.jobs._reading[self.job_id] = f"{source} {where}"

    def check_stop(self) -> None:
        """Raise JobCancelled or JobInterrupted when the job is cancelled or the server stops (a loader's
        checkpoint in a long loop calls it); return nothing otherwise."""
        self._stop_if_asked()

    def _stop_if_asked(self) -> None:
        # Called only after a write has committed or while a file is being read (nothing of it written
        # yet), so the knowledge base is consistent where it stops; a batch embedded but not written is
        # dropped, and done again when the job resumes.
        if self.job_id in self.jobs._cancelled:
            raise JobCancelled
        if self.jobs._stopping.is_set():
            self.jobs._update(self.job_id, chunks_done=self.committed)
            raise JobInterrupted


_COLUMNS = (
    "id, kb, kind, status, json_array_length(inputs), files_done, chunks_done, files, error, "
    "created_at, started_at, finished_at, access_groups"
)


def _job(row: tuple) -> Job:
    (job_id, kb, kind, status, total, done, chunks, files, error, created, started, finished, groups) = row
    return Job(
        job_id,
        kb,
        kind,
        status,
        total,
        done,
        chunks,
        json.loads(files),
        error,
        created,
        started,
        finished,
        groups=None if groups is None else json.loads(groups),
    )
