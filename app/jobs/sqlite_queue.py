"""Ingestion jobs of one server: uploads indexed by a background worker, their progress kept in SQLite.

An upload returns at once with a job; one worker thread runs the jobs in order, so two uploads into a
knowledge base are never interleaved (the knowledge base's own write lock would refuse that anyway),
and search and chat stay responsive on the request threads meanwhile. Jobs live in
`<data_dir>/jobs.sqlite`: a job that was queued or running when the server stopped is queued again at
the next start — ingestion skips what is already stored, so finishing it twice is harmless — and is
never lost silently. So a server told to stop does not wait for a long upload: the running job stops
after the file or batch at hand, with what it stored committed, and goes on at the next start. Uploaded
files wait in `<data_dir>/uploads/<job>/`; once indexed they are kept as the documents' originals
(`app/uploads.py`) and a failed file is dropped.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from app.jobs.memory import map_large_blocks, return_freed_memory
from app.jobs.model import MAX_ATTEMPTS, Job, JobFinished, JobInterrupted, JobKind, JobNotFound, run_options
from app.jobs.server_lock import ServerLock
from app.jobs.worker import IngestionJobs, JobEnd
from app.services import KnowledgeService
from ingestion import SourceFile
from retrieval import utc_now

log = logging.getLogger(__name__)

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

# The columns of `job_from_row`; what OCR reads now is kept in memory only (NULL here, see `_with_reading`).
_COLUMNS = (
    "id, kb, kind, status, json_array_length(inputs), files_done, chunks_done, files, error, "
    "created_at, started_at, finished_at, NULL, access_groups"
)


class SqliteIngestionJobs(IngestionJobs):
    """The job table of one server's data directory (`jobs.sqlite`) and the worker thread that runs it."""

    def __init__(self, service: KnowledgeService, queue_size: int) -> None:
        super().__init__(service, queue_size)
        data_dir = service.settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
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
        self.uploads.remove_leftovers({job_id for job_id, _, _ in rows})
        for job_id, status, attempts in rows:
            if status == "running" and attempts >= MAX_ATTEMPTS:
                self._give_up(job_id, attempts)
                continue
            log.info("job resumed after a restart", extra={"job": job_id})
            self._queue.put(job_id)
        self.uploads.remove_orphan_originals()
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

    def _store_job(
        self, job_id: str, kb: str, kind: JobKind, files: Sequence[SourceFile], request: tuple, force: bool
    ) -> None:
        """Store a queued job's row (its files stay where they were staged) and hand it to the worker."""
        inputs = [{"source": f.source, "path": str(f.path)} for f in files]
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, kb, kind, status, inputs, metadata, access_groups, force, created_at, seq) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs))",
                (job_id, kb, kind, json.dumps(inputs, ensure_ascii=False), *request, int(force), utc_now()),
            )
        self._queue.put(job_id)

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
            self.uploads.discard(job_id)
        return self.get(job_id)

    def _job_row(self, job_id: str) -> tuple | None:
        with self._lock:
            return self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()

    def _job_rows(self, kb: str | None, limit: int) -> list[tuple]:
        where, args = ("WHERE kb = ?", (kb,)) if kb else ("", ())
        with self._lock:
            return self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ?", (*args, limit)
            ).fetchall()

    def _inputs(self, job_id: str) -> str:
        with self._lock:
            return self._db.execute("SELECT inputs FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]

    def _shown(self, job: Job) -> Job:
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
                self.update_row(job_id, status="failed", error="internal error", finished_at=utc_now())
            self._cancelled.discard(job_id)  # asked too late: it had finished
            return_freed_memory()

    def _run(self, job_id: str) -> None:
        with self._lock:
            kb, inputs, metadata, force, groups, chunks_before = self._db.execute(
                "SELECT kb, inputs, metadata, force, access_groups, chunks_stored FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
        files = [SourceFile(Path(i["path"]), i["source"]) for i in json.loads(inputs)]
        with self._lock:  # one statement: a job seen running has its attempt counted
            started = self._db.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, files_done = 0, files = '[]', "
                "attempts = attempts + 1 WHERE id = ? AND status = 'queued'",
                (utc_now(), job_id),
            ).rowcount
        if not started:  # cancelled while it waited
            return
        try:
            end = self._run_job(job_id, kb, files, run_options(metadata, force, groups), chunks_before)
        except JobInterrupted:
            # Left 'running' with its staged files: the next start queues it again (see `start`). A
            # stop asked for is not an attempt the server failed to survive.
            with self._lock:
                self._db.execute("UPDATE jobs SET attempts = attempts - 1 WHERE id = ?", (job_id,))
            log.info("job interrupted by shutdown; it goes on at the next start", extra={"job": job_id})
            return
        except Exception as error:  # the knowledge base was deleted, is locked, a disk is full …
            self.update_row(job_id, status="failed", error=str(error), finished_at=utc_now())
            self.uploads.discard(job_id)
            return
        finally:
            self._cancelled.discard(job_id)
        self._end(job_id, kb, end)

    def _end(self, job_id: str, kb: str, end: JobEnd) -> None:
        """Keep the originals of a job that ran (to its end or a cancel), drop its staged files, and say how it ended."""
        self.uploads.keep_originals(kb, end.kept)
        self.uploads.discard(job_id)
        if end.outcomes is None:  # cancelled: its files say what it did before it stopped
            self.update_row(
                job_id, status=end.status, error=end.error, finished_at=utc_now(), chunks_done=end.chunks_done
            )
            log.info("job cancelled", extra={"job": job_id})
            return
        self.update_row(
            job_id,
            status=end.status,
            error=end.error,
            finished_at=utc_now(),
            files=json.dumps(end.outcomes, ensure_ascii=False),
        )

    def _give_up(self, job_id: str, attempts: int) -> None:
        """Fail a job the server went down in `attempts` times, naming the files it had not finished."""
        reason = (
            f"the server went down {attempts} times while running this job; given up. One of the files "
            f"it had not finished may crash the server: {self._unfinished(job_id)}"
        )
        log.error("job given up", extra={"job": job_id, "attempts": attempts})
        self.update_row(job_id, status="failed", error=reason, finished_at=utc_now())
        self.uploads.discard(job_id)

    def update_row(self, job_id: str, **values: object) -> None:
        """Set these columns of the job's row; return nothing."""
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))
