"""Ingestion jobs shared by every node through PostgreSQL: a queue any worker claims, and the uploaded files.

With `store.backend: postgres`, an upload through any node becomes a job row with its files (bytea, in the
same transaction), and any worker (`kbqa serve` with `server.ingest_worker`, or `kbqa worker`) claims
it with `SELECT … FOR UPDATE SKIP LOCKED`. The claim is a lease the worker renews by heartbeats; a
worker that dies (kill -9, a lost machine) stops renewing, and once its lease has run out another
worker claims the job again. Running it again stores nothing twice: a document is one row per source,
files already stored are skipped as unchanged, and one knowledge base has one writer at a time (an
advisory lock). When the job ends, its stored files become the documents' originals (table
`originals`, which every node reads) and its uploads are dropped, in the transaction that finishes it.
A cancel from any node marks the row; the worker running it sees the mark at its next heartbeat.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Sequence

from app.jobs.memory import map_large_blocks, return_freed_memory
from app.jobs.model import MAX_ATTEMPTS, Job, JobFinished, JobInterrupted, JobKind, JobNotFound, run_options
from app.jobs.worker import IngestionJobs
from app.services import KnowledgeService
from ingestion import SourceFile
from retrieval import DatabaseUnavailable, KnowledgeBaseError, utc_now

log = logging.getLogger(__name__)

# How often an idle worker looks for a job another node queued.
POLL_S = 1.0

_COLUMNS = (
    "id, kb, kind, status, jsonb_array_length(inputs), files_done, chunks_done, files::text, error, "
    "created_at, started_at, finished_at, reading, access_groups::text"
)


class PgIngestionJobs(IngestionJobs):
    """The job table and uploaded files in PostgreSQL, and (with `run_worker`) a worker thread claiming jobs."""

    def __init__(self, service: KnowledgeService, queue_size: int, run_worker: bool = True) -> None:
        if service.database is None:
            raise ValueError("the shared job queue needs store.backend postgres")
        # Uploads are staged in `uploads` only until `submit` has them in the database; workers unpack theirs.
        super().__init__(service, queue_size)
        self.run_worker = run_worker
        self.database = service.database
        self.lease_s = service.settings.store.job_lease_s
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        self._heart: threading.Thread | None = None
        self._running: str | None = None  # the job this worker holds the lease of
        self._lost: set[str] = set()  # running jobs whose lease another worker took: left to it

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start claiming jobs (when this process runs a worker); return nothing. Nothing is requeued at start:
        a job whose worker died is claimed again when its lease runs out."""
        if not self.run_worker:
            return
        map_large_blocks()
        self.uploads.clear_work()  # what a killed worker of this node unpacked
        self._worker = threading.Thread(target=self._work, name="kbqa-ingestion", daemon=True)
        self._heart = threading.Thread(target=self._heartbeat, name="kbqa-job-lease", daemon=True)
        self._worker.start()
        self._heart.start()

    def stop(self) -> None:
        """Stop once the running job has stored the file or batch at hand, and hand it back to the queue."""
        self._stopping.set()
        self._wake.set()
        for thread in (self._worker, self._heart):
            if thread is not None:
                thread.join()
        self._worker = self._heart = None

    # --- requests ----------------------------------------------------------------------------------

    def _store_job(
        self, job_id: str, kb: str, kind: JobKind, files: Sequence[SourceFile], request: tuple, force: bool
    ) -> None:
        """Store a queued job's row with its files (copied into the database, one transaction) for any worker
        to claim; the local staging folder is removed once the files are in."""
        inputs = [{"source": f.source, "name": f.path.name} for f in files]
        with self.database.connection() as conn:
            conn.execute(
                "INSERT INTO jobs (id, kb, kind, status, inputs, metadata, access_groups, force, created_at)"
                " VALUES (%s, %s, %s, 'queued', %s, %s, %s, %s, %s)",
                (job_id, kb, kind, json.dumps(inputs, ensure_ascii=False), *request, force, utc_now()),
            )
            for ordinal, file in enumerate(files):
                conn.execute(
                    "INSERT INTO uploads (job_id, ordinal, source, content) VALUES (%s, %s, %s, %s)",
                    (job_id, ordinal, file.source, file.path.read_bytes()),
                )
        self.uploads.discard(job_id)
        self._wake.set()

    def cancel(self, job_id: str) -> Job:
        """Cancel a job from any node: a queued one at once, a running one at its worker's next heartbeat and
        stop point, keeping what it stored; return it. JobFinished if it has ended."""
        with self.database.connection() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"job '{job_id}' does not exist")
            if row[0] == "queued":
                conn.execute(
                    "UPDATE jobs SET status = 'cancelled', error = 'cancelled before it ran', finished_at = %s"
                    " WHERE id = %s",
                    (utc_now(), job_id),
                )
                conn.execute("DELETE FROM uploads WHERE job_id = %s", (job_id,))
            elif row[0] == "running":
                conn.execute("UPDATE jobs SET cancel_requested = TRUE WHERE id = %s", (job_id,))
            else:
                raise JobFinished(f"job '{job_id}' has already finished ({row[0]})")
        if row[0] == "running" and job_id == self._running:
            self._cancelled.add(job_id)
        return self.get(job_id)

    def _job_row(self, job_id: str) -> tuple | None:
        with self.database.connection() as conn:
            return conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = %s", (job_id,)).fetchone()

    def _job_rows(self, kb: str | None, limit: int) -> list[tuple]:
        where, args = ("WHERE kb = %s", (kb,)) if kb else ("", ())
        with self.database.connection() as conn:
            return conn.execute(
                f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT %s", (*args, limit)
            ).fetchall()

    def _inputs(self, job_id: str) -> str:
        with self.database.connection() as conn:
            return conn.execute("SELECT inputs::text FROM jobs WHERE id = %s", (job_id,)).fetchone()[0]

    def depth(self) -> int:
        """Return how many jobs wait to run, on every node."""
        with self.database.connection() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0])

    def totals(self) -> tuple[dict[str, int], int]:
        """Return files handled by finished jobs per outcome, and the chunks they wrote."""
        with self.database.connection() as conn:
            files = conn.execute(
                "SELECT f ->> 'status', COUNT(*) FROM jobs, jsonb_array_elements(jobs.files) AS f GROUP BY 1"
            ).fetchall()
            (chunks,) = conn.execute("SELECT COALESCE(SUM(chunks_done), 0) FROM jobs").fetchone()
        return dict(files), int(chunks)

    # --- the worker --------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                claimed = self._claim()
            except KnowledgeBaseError as error:  # the database is down: try again shortly
                log.warning("cannot claim ingestion jobs", extra={"reason": str(error)})
                claimed = None
            if claimed is None:
                self._wake.wait(POLL_S)
                self._wake.clear()
                continue
            job_id, attempts, status = claimed
            try:
                if status == "running" and attempts > MAX_ATTEMPTS:
                    self._give_up_claimed(job_id, attempts - 1)
                else:
                    self._run_claimed(job_id)
            except DatabaseUnavailable as error:  # lost between the steps of a job: it goes on later
                self._hand_back(job_id, error)
            except Exception:  # a bug in one job must not stop the worker
                log.exception("ingestion job crashed", extra={"job": job_id})
                self._finish(job_id, [], status="failed", error="internal error")
            finally:
                self._running = None
                self._cancelled.discard(job_id)
                self._lost.discard(job_id)
                self.show_reading(job_id, None)
                self.uploads.clear_work(job_id)
            return_freed_memory()

    def _claim(self) -> tuple[str, int, str] | None:
        """Take the oldest queued job, or a running one whose worker's lease ran out; return (id, attempts,
        status it had), or None."""
        with self.database.connection() as conn:
            row = conn.execute(
                "SELECT id, status FROM jobs WHERE status = 'queued'"
                " OR (status = 'running' AND lease_until < now()) ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED"
            ).fetchone()
            if row is None:
                return None
            job_id, status = row
            (attempts,) = conn.execute(
                "UPDATE jobs SET status = 'running', worker = %s, lease_until = now() + make_interval(secs => %s),"
                " started_at = COALESCE(started_at, %s), attempts = attempts + 1 WHERE id = %s RETURNING attempts",
                (self.worker_id, self.lease_s, utc_now(), job_id),
            ).fetchone()
        self._running = job_id
        if status == "running":
            log.warning("job taken over from a worker whose lease ran out", extra={"job": job_id})
        return job_id, int(attempts), status

    def _heartbeat(self) -> None:
        """Renew the lease of the running job every third of it, and learn of a cancel asked on another node."""
        while not self._stopping.wait(self.lease_s / 3):
            job_id = self._running
            if job_id is None:
                continue
            try:
                with self.database.connection() as conn:
                    row = conn.execute(
                        "UPDATE jobs SET lease_until = now() + make_interval(secs => %s), reading = %s"
                        " WHERE id = %s AND worker = %s AND status = 'running' RETURNING cancel_requested",
                        (self.lease_s, self._reading.get(job_id), job_id, self.worker_id),
                    ).fetchone()
            except KnowledgeBaseError as error:
                log.warning("cannot renew the job's lease", extra={"job": job_id, "reason": str(error)})
                continue
            if (
                row is None
            ):  # the lease ran out and another worker has the job: stop, and leave it to that one
                self._lost.add(job_id)
            if row is None or row[0]:  # or it was cancelled from some node: stop at the next stop point
                self._cancelled.add(job_id)

    def _run_claimed(self, job_id: str) -> None:
        with self.database.connection() as conn:
            kb, inputs, metadata, force, chunks_before, groups = conn.execute(
                "SELECT kb, inputs::text, metadata::text, force, chunks_stored, access_groups::text FROM jobs"
                " WHERE id = %s",
                (job_id,),
            ).fetchone()
            uploads = conn.execute(
                "SELECT ordinal, source, content FROM uploads WHERE job_id = %s ORDER BY ordinal", (job_id,)
            ).fetchall()
        files = self.uploads.unpack(job_id, [i["name"] for i in json.loads(inputs)], uploads)
        del uploads
        try:
            end = self._run_job(job_id, kb, files, run_options(metadata, force, groups), chunks_before)
        except JobInterrupted:
            # Handed back to the queue, its attempt not counted: another worker (or this one, later) goes on.
            self._requeue(job_id)
            log.info("job handed back to the queue at shutdown", extra={"job": job_id})
            return
        except DatabaseUnavailable as error:
            self._hand_back(job_id, error)
            return
        except Exception as error:  # the knowledge base was deleted, is locked, …
            self._finish(job_id, [], status="failed", error=str(error))
            return
        if end.status == "cancelled" and job_id in self._lost:
            log.warning("job left to the worker that took over its lease", extra={"job": job_id})
            return
        kept = [f.source for f in end.kept]
        self._finish(job_id, kept, status=end.status, error=end.error, kb=kb, outcomes=end.outcomes)
        if end.status == "cancelled":
            log.info("job cancelled", extra={"job": job_id})

    def _hand_back(self, job_id: str, error: Exception) -> None:
        """Queue a job again whose database went away under it (what it committed stays; the rest is done again
        by whichever worker claims it); if the database is still away, its lease runs out instead."""
        log.warning(
            "database lost during a job; it goes back to the queue",
            extra={"job": job_id, "reason": str(error)},
        )
        with contextlib.suppress(DatabaseUnavailable):  # still away: its lease runs out instead
            self._requeue(job_id)
        self._stopping.wait(POLL_S)  # not straight back into a database that is still coming up

    def _requeue(self, job_id: str) -> None:
        """Put a job this worker holds back in the queue, its attempt not counted; return nothing."""
        with self.database.connection() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'queued', worker = NULL, lease_until = NULL,"
                " attempts = GREATEST(attempts - 1, 0), chunks_done = chunks_stored WHERE id = %s AND worker = %s",
                (job_id, self.worker_id),
            )

    def _finish(
        self,
        job_id: str,
        kept: Sequence[str],
        status: str,
        error: str | None,
        kb: str | None = None,
        outcomes: list[dict] | None = None,
    ) -> None:
        """End a job in one transaction: its stored files become originals, its uploads go, its row says how it ended."""
        with self.database.connection() as conn:
            if kept and kb is not None:
                # Only sources stored as documents: a file skipped as unchanged keeps its original as it is.
                conn.execute(
                    "INSERT INTO originals (kb_id, source, content)"
                    " SELECT k.id, u.source, u.content FROM uploads u, knowledge_bases k"
                    " WHERE u.job_id = %s AND k.name = %s AND u.source = ANY(%s)"
                    " AND EXISTS (SELECT 1 FROM documents d WHERE d.kb_id = k.id AND d.source = u.source)"
                    " ON CONFLICT (kb_id, source) DO UPDATE SET content = EXCLUDED.content",
                    (job_id, kb, list(kept)),
                )
            conn.execute("DELETE FROM uploads WHERE job_id = %s", (job_id,))
            assignments = "status = %s, error = %s, finished_at = %s, lease_until = NULL, reading = NULL"
            values: list = [status, error, utc_now()]
            if outcomes is not None:
                assignments += ", files = %s"
                values.append(json.dumps(outcomes, ensure_ascii=False))
            # Only while this worker holds it: a job taken over meanwhile is the other worker's to end.
            conn.execute(
                f"UPDATE jobs SET {assignments} WHERE id = %s AND worker = %s",
                (*values, job_id, self.worker_id),
            )

    def _give_up_claimed(self, job_id: str, attempts: int) -> None:
        """Fail a job whose workers died `attempts` times running it, naming the files it had not finished."""
        reason = (
            f"the workers running this job went down {attempts} times; given up. One of the files it had "
            f"not finished may crash them: {self._unfinished(job_id)}"
        )
        log.error("job given up", extra={"job": job_id, "attempts": attempts})
        self._finish(job_id, [], status="failed", error=reason)

    def show_reading(self, job_id: str, reading: str | None) -> None:
        """Show what the job reads now, written into its row too, for every node to show (an OCR'd page takes
        seconds); return nothing."""
        super().show_reading(job_id, reading)
        if reading is not None:
            with contextlib.suppress(
                DatabaseUnavailable
            ):  # progress only: the next heartbeat writes it again
                self.update_row(job_id, reading=reading)

    def update_row(self, job_id: str, **values: object) -> None:
        """Set these columns of the job's row; return nothing."""
        assignments = ", ".join(f"{name} = %s" for name in values)
        with self.database.connection() as conn:
            conn.execute(f"UPDATE jobs SET {assignments} WHERE id = %s", (*values.values(), job_id))
