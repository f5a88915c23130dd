"""An ingestion job as the API shows it, the errors a job queue raises, and a job row's JSON columns."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ingestion import RunOptions

JobKind = Literal["ingest", "reindex"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]

# A job the server went down in this many times (a file that crashes it: out of memory, a parser bug)
# is failed at the next start instead of being run again, and crashing it again, at every start.
MAX_ATTEMPTS = 3


class JobNotFound(LookupError):
    """No job has this id."""


class JobQueueFull(RuntimeError):
    """Too many jobs are waiting; try again later."""


class JobFinished(RuntimeError):
    """The job has already finished, so it cannot be cancelled."""


class JobInterrupted(BaseException):
    """Raised inside a running ingestion, between files, batches or OCR'd pages, when the server is stopping.

    A BaseException, like asyncio's CancelledError, so that no loader's `except Exception` turns it
    into a failed file.
    """


class JobCancelled(Exception):
    """Raised inside a running ingestion, between files or batches, when the job is cancelled."""


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


def job_from_row(row: Sequence) -> Job:
    """Return the job of a row of both queues' columns: id, kb, kind, status, files total, files done,
    chunks done, files (JSON), error, created, started, finished, reading, groups (JSON or NULL)."""
    *facts, files, error, created, started, finished, reading, groups = row
    return Job(
        *facts,
        json.loads(files),
        error,
        created,
        started,
        finished,
        reading if facts[3] == "running" else None,  # facts: id, kb, kind, status, total, done, chunks
        groups=None if groups is None else json.loads(groups),
    )


def to_json(value: object) -> str | None:
    """Return `value` as the JSON a job row keeps (None stays NULL: each document keeps its own)."""
    return None if value is None else json.dumps(value, ensure_ascii=False)


def request_columns(
    metadata: Mapping[str, str] | None, groups: Sequence[str] | None
) -> tuple[str | None, ...]:
    """Return the job row's `metadata` and `access_groups` columns for a job's request."""
    return (
        to_json(None if metadata is None else dict(metadata)),
        to_json(None if groups is None else list(groups)),
    )


def run_options(metadata: str | None, force: object, groups: str | None) -> RunOptions:
    """Return the run options a job row's `metadata`, `force` and `access_groups` columns stand for."""
    return RunOptions(
        metadata=None if metadata is None else json.loads(metadata),
        groups=None if groups is None else json.loads(groups),
        force=bool(force),
    )


def unfinished_sources(job: Job, inputs: str) -> list[str]:
    """Return the sources of a job's inputs (the row's JSON) that it had not finished."""
    done = {outcome["source"] for outcome in job.files}
    return [i["source"] for i in json.loads(inputs) if i["source"] not in done]
