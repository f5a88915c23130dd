"""A running job's progress, written into its row as the pipeline reports it, and the stop points of the job."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Protocol

from app.jobs.model import JobCancelled, JobInterrupted
from ingestion import FileOutcome


class JobControl(Protocol):
    """What a job's progress needs of its queue: its row to write, what it reads now, and whether to stop."""

    def update_row(self, job_id: str, **values: object) -> None:
        """Set these columns of the job's row."""
        ...

    def show_reading(self, job_id: str, reading: str | None) -> None:
        """Show what the job reads now (None: nothing in particular)."""
        ...

    def cancel_asked(self, job_id: str) -> bool:
        """Return whether the job has been asked to stop."""
        ...

    def is_stopping(self) -> bool:
        """Return whether the worker is stopping (the job goes on later)."""
        ...


class JobProgress:
    """Writes a running ingestion's progress into its job row, and stops it when the server stops or the
    job is cancelled (an `ingestion.Progress`).

    `chunks_done` counts chunks stored plus those embedded for the batch at hand, so a large document
    shows progress before it is written (whole) at the end of its batch.
    """

    def __init__(self, control: JobControl, job_id: str, chunks: int = 0) -> None:
        self.control, self.job_id = control, job_id
        self.outcomes: list[dict] = []
        self.committed = chunks
        self.embedded = 0  # of the batch at hand, not yet stored

    def start(self, total_files: int) -> None:
        """Nothing to note: the job knows its files."""

    def file_done(self, outcome: FileOutcome) -> None:
        """Record one finished file."""
        self.control.show_reading(self.job_id, None)
        self.outcomes.append(asdict(outcome))
        self.control.update_row(
            self.job_id, files_done=len(self.outcomes), files=json.dumps(self.outcomes, ensure_ascii=False)
        )
        self.check_stop()

    def chunks_embedded(self, count: int) -> None:
        """Record chunks embedded for the batch at hand."""
        self.embedded += count
        self.control.update_row(self.job_id, chunks_done=self.committed + self.embedded)
        self.check_stop()

    def chunks_written(self, count: int) -> None:
        """Record chunks stored."""
        self.committed += count
        self.embedded = max(0, self.embedded - count)
        self.control.update_row(
            self.job_id, chunks_done=self.committed + self.embedded, chunks_stored=self.committed
        )
        self.check_stop()

    def image_read(self, source: str, where: str) -> None:
        """Show the page OCR is about to read; stop first when asked (a long scan takes many minutes)."""
        self.check_stop()
        self.control.show_reading(self.job_id, f"{source} {where}")

    def stored_sources(self) -> set[str]:
        """Return the sources of the files finished so far that did not fail."""
        return {o["source"] for o in self.outcomes if o["status"] != "failed"}

    def check_stop(self) -> None:
        """Raise JobCancelled or JobInterrupted when the job is cancelled or the server stops (a loader's
        checkpoint in a long loop calls it); return nothing otherwise."""
        # Called only after a write has committed or while a file is being read (nothing of it written
        # yet), so the knowledge base is consistent where it stops; a batch embedded but not written is
        # dropped, and done again when the job resumes.
        if self.control.cancel_asked(self.job_id):
            raise JobCancelled
        if self.control.is_stopping():
            self.control.update_row(self.job_id, chunks_done=self.committed)
            raise JobInterrupted
