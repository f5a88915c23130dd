"""Spreadsheet-like files: CSV and Excel .xlsx, one block per row."""

from __future__ import annotations

import csv
from pathlib import Path

import openpyxl

from .base import Block, LoadedDocument, LoaderError
from .common import reason, require_zip, table_blocks
from .encoding import read_text

_SNIFF_SAMPLE_CHARS = 8192
_DELIMITERS = ",;\t|"


def load_csv(path: Path) -> LoadedDocument:
    """Return a CSV file as one table-row block per row after the header row."""
    text = read_text(path)
    try:
        dialect: type[csv.Dialect] = csv.Sniffer().sniff(text[:_SNIFF_SAMPLE_CHARS], _DELIMITERS)
    except csv.Error:
        # The sniffer gives up on one-column files and on some irregular ones; comma is the usual case.
        dialect = csv.excel
    try:
        blocks = table_blocks(csv.reader(text.splitlines(keepends=True), dialect))
    except csv.Error as exc:
        raise LoaderError(f"not a valid CSV file: {reason(exc)}") from exc
    return LoadedDocument(title=path.stem, blocks=blocks)


def load_xlsx(path: Path) -> LoadedDocument:
    """Return the rows of every sheet of an .xlsx workbook as blocks, the sheet name as heading path."""
    require_zip(path, ".xlsx", ".xls")
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            blocks: list[Block] = []
            for sheet in workbook.worksheets:
                # The sheet's stated dimension (A1:XFD1048576 in a 1.6 KB file) is not trusted: without it
                # openpyxl yields the rows the sheet holds, each as wide as its own last cell, instead of
                # padding every row, and every missing row, to the stated size.
                sheet.reset_dimensions()
                blocks.extend(table_blocks(sheet.iter_rows(values_only=True), heading_path=(sheet.title,)))
            title = (workbook.properties.title or "").strip()
        finally:
            # A read-only workbook keeps the file open until closed.
            workbook.close()
    except Exception as exc:
        # openpyxl raises InvalidFileException, KeyError, zipfile and XML errors on damaged workbooks,
        # some only while reading a sheet, as read-only mode parses sheets lazily.
        raise LoaderError(f"not a valid .xlsx file: {reason(exc)}") from exc
    return LoadedDocument(title=title or path.stem, blocks=blocks)
