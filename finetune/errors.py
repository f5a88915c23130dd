"""Errors of the finetune package; each message says what went wrong in words a user can act on.

NoValidRecord, a DatasetError carrying the report of the records skipped, lives with that report in
finetune.records.
"""

from __future__ import annotations


class FinetuneError(Exception):
    """Base of every error raised by the finetune package."""


class DatasetError(FinetuneError):
    """A dataset cannot be read: unknown name, missing file, bad checksum, malformed or no valid record."""
