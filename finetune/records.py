"""Raw records of a data file, and the rule for a bad one: skip it, count it with its reason, go on.

A reader (finetune.readers, finetune.tables, finetune.rag, finetune.convert) turns each raw record into an
example or raises Malformed; the record is then skipped and counted in the file's ReadReport (with
`strict`, the first one raises DatasetError), and a file with no valid record is NoValidRecord.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from finetune.errors import DatasetError

READABLE_SUFFIXES = (".json", ".jsonl", ".csv")


@dataclass(frozen=True)
class Skipped:
    """A malformed record: its file, its index and why it was skipped."""

    file: str
    index: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: record {self.index}: {self.reason}"


@dataclass
class ReadReport:
    """How many records were read, and each one skipped with its reason."""

    valid: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    def merge(self, other: ReadReport) -> None:
        """Add another report's counts to this one."""
        self.valid += other.valid
        self.skipped.extend(other.skipped)

    def skip(self, skipped: Skipped, strict: bool) -> None:
        """Count a malformed record as skipped; with `strict`, raise DatasetError naming it instead."""
        if strict:
            raise DatasetError(str(skipped)) from None
        self.skipped.append(skipped)

    def reasons(self) -> Counter[str]:
        """Return how many records were skipped for each reason."""
        return Counter(skip.reason for skip in self.skipped)


class NoValidRecord(DatasetError):
    """A file holds no valid record; `report` says why each one was skipped."""

    def __init__(self, message: str, report: ReadReport) -> None:
        super().__init__(message)
        self.report = report


class Malformed(ValueError):
    """One record is malformed; the reader adds its file and index."""


@dataclass(frozen=True)
class Unparsable:
    """A JSONL line that is not JSON, kept in place so the records after it keep their index."""

    reason: str


def load_records(path: Path) -> list[object]:
    """Return the raw records of a .json (a list), .jsonl or .csv file; DatasetError if it cannot be read."""
    suffix = path.suffix.lower()
    if suffix not in READABLE_SUFFIXES:
        raise DatasetError(
            f"{path}: cannot read {suffix or 'files without a suffix'}; use .json, .jsonl or .csv"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read: {error}") from None
    if suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    try:
        return json_records(text, lines=suffix == ".jsonl")
    except ValueError as error:
        raise DatasetError(f"{path}: {error}") from None


def json_records(text: str, lines: bool) -> list[object]:
    """Return the records of JSON text: one JSON list, else one value a line; ValueError when it is neither.

    Either suffix may hold either layout: XTuner's recipe writes one JSON list into a .jsonl file, and
    Multi-Doc-QA-Chinese ships JSON Lines as .json files. With `lines`, a lone JSON object is one record.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if lines or error.msg == "Extra data":  # "Extra data": a first value, then more of them
            return [_json_line(line) for line in text.splitlines() if line.strip()]
        raise ValueError(f"not valid JSON: {error}") from None
    if isinstance(data, list):
        return data
    if lines:
        return [data]
    raise ValueError(f"expected a JSON list of records, found a {json_kind(data)}")


def _json_line(line: str) -> object:
    """Return one JSONL line's value, or a placeholder saying why it is not JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        return Unparsable(f"not valid JSON: {error}")


def json_kind(value: object) -> str:
    """Return a JSON value's kind in JSON's words."""
    kinds = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)
