"""The one timestamp format kbqa stores (documents, manifests, jobs): UTC ISO 8601 to the second."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    """Return the current time as UTC ISO 8601 to the second, e.g. 2026-11-30T09:37:21+00:00."""
    return datetime.now(UTC).isoformat(timespec="seconds")
