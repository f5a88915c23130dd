"""Question-answer tables (.xlsx sheets and .csv files) to conversations, and single-turn conversations back.

The first row of a table is its header; columns are chosen by header name, or by Excel column letter
(A, B, …, AA) where no header is so named. A row whose question or
answer is empty is skipped and reported by its index among the data rows (0-based), the spreadsheet
row number in the reason.
"""

from __future__ import annotations

import csv
import datetime
from collections.abc import Sequence
from pathlib import Path

from finetune.conversation import Conversation
from finetune.errors import DatasetError
from finetune.records import Malformed, NoValidRecord, ReadReport, Skipped
from llm.types import Message

TABLE_SUFFIXES = (".xlsx", ".csv")
EXPORT_COLUMNS = ("system", "question", "answer")


def read_table(path: Path, sheet: str | None = None) -> list[dict[str, str]]:
    """Return the rows of a .csv file or an .xlsx sheet (the first when not named) by header, as text."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DatasetError(f"{path}: read a table from .xlsx or .csv")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if suffix == ".csv":
        if sheet:
            raise DatasetError(f"{path}: a CSV file has no sheets")
        with path.open(encoding="utf-8-sig", newline="") as file:
            rows = [[cell.strip() for cell in row] for row in csv.reader(file)]
    else:
        rows = _xlsx_rows(path, sheet)
    while rows and not any(rows[-1]):  # formatted but empty rows at the end of a sheet are no records
        rows.pop()
    if not rows:
        raise DatasetError(f"{path}: the table is empty")
    # A column without a header is known by its letter, so `--question C` still finds it.
    header = [name or column_letter(i) for i, name in enumerate(rows[0])]
    return [{name: row[i] if i < len(row) else "" for i, name in enumerate(header)} for row in rows[1:]]


def table_label(path: Path, sheet: str | None = None) -> str:
    """Return how messages name a table: the .csv file, or the .xlsx file with the sheet that was read."""
    if path.suffix.lower() != ".xlsx":
        return str(path)
    from openpyxl import load_workbook

    if sheet is None:
        workbook = load_workbook(path, read_only=True)
        try:
            sheet = workbook.sheetnames[0]
        finally:
            workbook.close()
    return f"{path} (sheet '{sheet}')"


def column_letter(index: int) -> str:
    """Return the spreadsheet letter of a 0-based column index: A, …, Z, AA, AB, …"""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def column_index(letters: str) -> int | None:
    """Return the 0-based index of a spreadsheet column letter (A, b, AA), or None if `letters` is none."""
    if not (1 <= len(letters) <= 3 and letters.isascii() and letters.isalpha()):
        return None
    index = 0
    for letter in letters.upper():
        index = index * 26 + ord(letter) - ord("A") + 1
    return index - 1


def table_conversations(
    rows: Sequence[dict[str, str]],
    file: str,
    question: str,
    answer: str,
    *,
    input: str | None = None,
    system: str = "",
    strict: bool = False,
) -> tuple[list[Conversation], ReadReport]:
    """Return one single-turn conversation per row (question [+ input] → answer, a fixed system text)."""
    header = list(rows[0]) if rows else []
    question, answer = (_column(header, column, file) for column in (question, answer))
    input = _column(header, input, file) if input is not None else None
    conversations: list[Conversation] = []
    report = ReadReport()
    for index, row in enumerate(rows):
        try:
            conversations.append(_row_conversation(row, index, file, question, answer, input, system))
        except Malformed as error:
            report.skip(Skipped(file, index, str(error)), strict)
    report.valid = len(conversations)
    if not conversations:
        raise NoValidRecord(
            f"{file}: no valid record ({len(report.skipped)} rows without a question or answer)", report
        )
    return conversations, report


def table_rows(conversations: Sequence[Conversation]) -> list[dict[str, str]]:
    """Return single-turn conversations as table rows (system, question, answer); Malformed for longer ones."""
    rows = []
    for conversation in conversations:
        roles = [m.role for m in conversation.messages]
        if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
            raise Malformed(f"{conversation.source or 'a conversation'} is not a single question and answer")
        *system, user, assistant = conversation.messages
        rows.append(
            {
                "system": system[0].content if system else "",
                "question": user.content,
                "answer": assistant.content,
            }
        )
    return rows


def write_table(path: Path, rows: Sequence[dict[str, str]], sheet: str = "data") -> None:
    """Write rows under a header of their keys, as .xlsx (one sheet) or .csv (UTF-8 with BOM, for Excel)."""
    header = list(rows[0]) if rows else list(EXPORT_COLUMNS)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        with path.open("w", encoding="utf-8-sig", newline="") as file:
            writer = csv.DictWriter(file, header)
            writer.writeheader()
            writer.writerows(rows)
        return
    if path.suffix.lower() != ".xlsx":
        raise DatasetError(f"{path}: write a table as .xlsx or .csv")
    from openpyxl import Workbook

    workbook = Workbook()
    worksheet = workbook.active
    worksheet.title = sheet
    worksheet.append(header)
    for row in rows:
        worksheet.append([row.get(name, "") for name in header])
    workbook.save(path)


def _xlsx_rows(path: Path, sheet: str | None) -> list[list[str]]:
    """Return the rows of an .xlsx sheet as text cells."""
    from zipfile import BadZipFile

    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except (BadZipFile, InvalidFileException, OSError, KeyError) as error:
        raise DatasetError(f"{path}: not a readable .xlsx file: {error}") from None
    try:
        if sheet is not None and sheet not in workbook.sheetnames:
            raise DatasetError(
                f"{path}: no sheet '{sheet}'; the sheets are: {', '.join(workbook.sheetnames)}"
            )
        worksheet = workbook[sheet] if sheet is not None else workbook.worksheets[0]
        return [[_text(cell) for cell in row] for row in worksheet.iter_rows(values_only=True)]
    finally:
        workbook.close()


def _text(value: object) -> str:
    """Return a cell's value as the text a person sees: 3 for 3.0, ISO dates, "" for an empty cell."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    return str(value).strip()


def _column(header: list[str], column: str, file: str) -> str:
    """Return the header name of a column given by name or by letter; DatasetError naming the columns."""
    if column in header:
        return column
    index = column_index(column)
    if index is not None and index < len(header):
        return header[index]
    letters = f" (or by letter, A to {column_letter(len(header) - 1)})" if header else ""
    raise DatasetError(
        f"{file}: no column '{column}'; the columns are: {', '.join(header) or 'none'}{letters}"
    )


def _row_conversation(
    row: dict[str, str], index: int, file: str, question: str, answer: str, input: str | None, system: str
) -> Conversation:
    """Return one row as a conversation; Malformed when its question or answer is empty."""
    user = "\n".join(part for part in (row.get(question, ""), row.get(input, "") if input else "") if part)
    where = f"spreadsheet row {index + 2}"
    if not user:
        raise Malformed(f"empty question (column '{question}', {where})")
    if not row.get(answer):
        raise Malformed(f"empty answer (column '{answer}', {where})")
    head = [Message("system", system)] if system else []
    return Conversation((*head, Message("user", user), Message("assistant", row[answer])), f"{file}#{index}")
