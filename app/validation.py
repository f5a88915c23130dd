"""The one wording of a pydantic validation error, for the HTTP API and the command line alike."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def validation_message(errors: Iterable[Mapping[str, Any]]) -> str:
    """Return `field.path: message; …` for pydantic's error list (a request body's `body` prefix left out)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc'] if part != 'body') or 'body'}: {error['msg']}"
        for error in errors
    )
