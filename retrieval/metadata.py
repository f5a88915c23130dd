"""Document metadata: a small map of string keys to string values, stored as JSON beside each document.

Searches filter on it in SQL with `json_extract(metadata, path)`. The path is a bound parameter, and
keys are restricted to letters, digits, '_' and '-', so a key can never break out of its quoted path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

# Letters (CJK included), digits, '_' and '-': never a quote, backslash, dot or bracket of a JSON path.
KEY_PATTERN = re.compile(r"[\w-]{1,64}")


def check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Return `metadata` as a plain dict, or raise ValueError naming the first bad key or value."""
    checked = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
            raise ValueError(
                f"invalid metadata key {key!r}: use 1 to 64 letters (Chinese too), digits, '_' or '-'"
            )
        if not isinstance(value, str):
            raise ValueError(f"metadata value of {key!r} must be a string, not {type(value).__name__}")
        checked[key] = value
    return checked


def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """Return the metadata given as `key=value` strings, or raise ValueError naming a malformed one."""
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise ValueError(f"malformed metadata {pair!r}: write key=value")
        if key in metadata:
            raise ValueError(f"metadata key {key!r} is given twice")
        metadata[key] = value
    return check_metadata(metadata)


def json_path(key: str) -> str:
    """Return the JSON path of `key` for SQLite's json_extract (the key is checked first)."""
    check_metadata({key: ""})
    return f'$."{key}"'


def to_json(metadata: Mapping[str, str]) -> str:
    """Return checked metadata as the JSON text stored in the `documents.metadata` column."""
    return json.dumps(check_metadata(metadata), ensure_ascii=False, sort_keys=True)


# Access groups: the same characters as a metadata key, so a group can be bound into SQL and JSON safely.
MAX_GROUPS = 32


def check_groups(groups: Iterable[str]) -> list[str]:
    """Return `groups` checked, without repeats and sorted (the stored form), or raise ValueError naming a bad one."""
    checked = set()
    for group in groups:
        if not isinstance(group, str) or not KEY_PATTERN.fullmatch(group):
            raise ValueError(
                f"invalid group {group!r}: use 1 to 64 letters (Chinese too), digits, '_' or '-'"
            )
        checked.add(group)
    if len(checked) > MAX_GROUPS:
        raise ValueError(f"at most {MAX_GROUPS} groups")
    return sorted(checked)


def groups_visible(document_groups: Iterable[str], allowed: frozenset[str] | None) -> bool:
    """Return whether a document with `document_groups` may be seen by a caller limited to `allowed` groups
    (None: not limited): it has no groups, or shares one with the caller."""
    if allowed is None:
        return True
    held = set(document_groups)
    return not held or bool(held & allowed)
