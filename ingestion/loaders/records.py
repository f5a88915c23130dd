"""JSON and JSON Lines files: each object is one record block of "key: value" lines."""

from __future__ import annotations

import json
from pathlib import Path

from .base import Block, LoadedDocument, LoaderError
from .common import field_lines, format_cell
from .encoding import read_text


def load_json(path: Path) -> LoadedDocument:
    """Return a JSON file (objects in a list, in a list under one key, or alone) as record blocks."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise LoaderError(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    except RecursionError as exc:
        raise LoaderError("not valid JSON: nested too deeply") from exc
    records, heading_path = _records(data)
    return LoadedDocument(title=path.stem, blocks=_blocks(records, heading_path))


def load_jsonl(path: Path) -> LoadedDocument:
    """Return a JSON Lines file (one object a line) as one record block per line."""
    records: list[dict] = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoaderError(f"not valid JSON Lines: line {number}: {exc.msg}") from exc
        except RecursionError as exc:
            raise LoaderError(f"not valid JSON Lines: line {number} is nested too deeply") from exc
        if not isinstance(record, dict):
            raise LoaderError(f"not valid JSON Lines: line {number} is {_kind(record)}, not an object")
        records.append(record)
    return LoadedDocument(title=path.stem, blocks=_blocks(records, ()))


def _records(data: object) -> tuple[list[dict], tuple[str, ...]]:
    """Return the records a parsed JSON file holds and the key they sit under (as a heading path)."""
    if isinstance(data, list):
        return _checked_objects(data), ()
    if not isinstance(data, dict):
        raise LoaderError(f"JSON must be an object or a list of objects, not {_kind(data)}")
    lists = [(key, value) for key, value in data.items() if _is_object_list(value)]
    if len(lists) == 1:
        key, value = lists[0]
        return value, (key,)
    return [data], ()


def _checked_objects(items: list) -> list[dict]:
    """Return `items`, raising LoaderError when one of them is not an object."""
    for index, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise LoaderError(f"JSON list item {index} is {_kind(item)}; expected a list of objects")
    return items


def _is_object_list(value: object) -> bool:
    """Return whether `value` is a non-empty list of JSON objects."""
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def _blocks(records: list[dict], heading_path: tuple[str, ...]) -> list[Block]:
    """Return one table-row block per record that has any value."""
    texts = (_record_text(record) for record in records)
    return [Block(text, heading_path=heading_path, is_table_row=True) for text in texts if text]


def _record_text(record: dict) -> str:
    """Return a record as "key: value" lines, keys without a value left out."""
    return field_lines((str(key), _value_text(value)) for key, value in record.items())


def _value_text(value: object) -> str:
    """Return a JSON value as text: scalars plainly, lists and objects as compact JSON."""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")) if value else ""
    return format_cell(value)


def _kind(value: object) -> str:
    """Return the JSON name of a parsed value's type, with its article, for error messages."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
