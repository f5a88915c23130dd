"""Errors of the finetune package; each message says what went wrong in words a user can act on."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from finetune.readers import ReadReport


class FinetuneError(Exception):
    """Base of every error raised by the finetune package."""


class DatasetError(FinetuneError):
    """A dataset cannot be read: unknown name, missing file, bad checksum, malformed or no valid record."""


class NoValidRecord(DatasetError):
    """A file holds no valid record; `report` says why each one was skipped."""

    def __init__(self, message: str, report: ReadReport) -> None:
        super().__init__(message)
        self.report = report
