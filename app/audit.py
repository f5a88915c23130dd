"""The audit log: every write (knowledge bases, documents, groups, jobs, keys) as one JSON line.

`<data_dir>/audit.log`, rotated by size to `audit.log.1` … `audit.log.N`. A line holds the time, the key's
name (never its secret), the client, the method and route, the target (the route's parameters and what
the route adds), the status and the outcome: `ok` (2xx), `denied` (401, 403, 429) or `failed`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

AUDIT_FILE = "audit.log"


def outcome(status: int) -> str:
    """Return the audit outcome of an HTTP status."""
    if 200 <= status < 300:
        return "ok"
    return "denied" if status in (401, 403, 429) else "failed"


class AuditLog:
    """Appends JSON lines to `<data_dir>/audit.log`, rotating it once it passes `max_bytes`."""

    def __init__(self, data_dir: Path, max_bytes: int, backups: int) -> None:
        self.path = data_dir / AUDIT_FILE
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()

    def write(self, **entry: Any) -> None:
        """Append one entry, with the time, as a JSON line; return nothing."""
        line = json.dumps(
            {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **entry}, ensure_ascii=False
        )
        data = (line + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size + len(data) > self.max_bytes:
                self._rotate()
            with self.path.open("ab") as out:
                out.write(data)

    def _rotate(self) -> None:
        if self.backups < 1:
            self.path.unlink(missing_ok=True)
            return
        for number in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{AUDIT_FILE}.{number}")
            if older.exists():
                older.replace(self.path.with_name(f"{AUDIT_FILE}.{number + 1}"))
        self.path.replace(self.path.with_name(f"{AUDIT_FILE}.1"))

    def files(self) -> list[Path]:
        """Return the log's files, oldest first."""
        rotated = [self.path.with_name(f"{AUDIT_FILE}.{n}") for n in range(self.backups, 0, -1)]
        return [p for p in [*rotated, self.path] if p.exists()]

    def entries(self) -> Iterator[dict]:
        """Yield every entry, oldest first (a line that is not JSON, as a crash can leave, is skipped)."""
        for path in self.files():
            with path.open(encoding="utf-8", errors="replace") as lines:
                for line in lines:
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue


def matches(
    entry: dict, key: str | None, kb: str | None, action: str | None, result: str | None, since: str | None
) -> bool:
    """Return whether an audit entry passes the filters given (None: any)."""
    target = entry.get("target") or {}
    return (
        (key is None or entry.get("key") == key)
        and (kb is None or target.get("kb") == kb)
        and (action is None or entry.get("action") == action)
        and (result is None or entry.get("outcome") == result)
        and (since is None or str(entry.get("time", "")) >= since)
    )
