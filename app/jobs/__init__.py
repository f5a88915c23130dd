"""Ingestion jobs: uploads queued, run by a worker in the background, their progress kept in a job row.

`IngestionJobs` is the face the routers use; `SqliteIngestionJobs` keeps one server's jobs in
`<data_dir>/jobs.sqlite`, `PgIngestionJobs` shares them between nodes through PostgreSQL. The files of an
upload, staged and then kept as originals, are `app/uploads.py`'s.
"""

from app.jobs.memory import map_large_blocks, return_freed_memory
from app.jobs.model import (
    MAX_ATTEMPTS,
    Job,
    JobCancelled,
    JobFinished,
    JobInterrupted,
    JobKind,
    JobNotFound,
    JobQueueFull,
    JobStatus,
)
from app.jobs.pg_queue import PgIngestionJobs
from app.jobs.progress import JobControl, JobProgress
from app.jobs.server_lock import DataDirectoryInUse, ServerLock
from app.jobs.sqlite_queue import SqliteIngestionJobs
from app.jobs.worker import WRITE_LOCK_WAIT_S, IngestionJobs

__all__ = [
    "MAX_ATTEMPTS",
    "WRITE_LOCK_WAIT_S",
    "DataDirectoryInUse",
    "IngestionJobs",
    "Job",
    "JobCancelled",
    "JobControl",
    "JobFinished",
    "JobInterrupted",
    "JobKind",
    "JobNotFound",
    "JobProgress",
    "JobQueueFull",
    "JobStatus",
    "PgIngestionJobs",
    "ServerLock",
    "SqliteIngestionJobs",
    "map_large_blocks",
    "return_freed_memory",
]
