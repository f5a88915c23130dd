"""What routes need from the app: its services, and the API-key check."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.jobs import IngestionJobs
from app.server.errors import ApiError
from app.services import KnowledgeService

_bearer = HTTPBearer(auto_error=False, description="An API key from `server.api_keys`.")


def knowledge(request: Request) -> KnowledgeService:
    """Return the app's knowledge service."""
    return request.app.state.service


def jobs(request: Request) -> IngestionJobs:
    """Return the app's ingestion jobs."""
    return request.app.state.jobs


def loaded(request: Request) -> None:
    """Refuse (503, with Retry-After) a request that needs a model while the models load; return nothing."""
    request.app.state.loading.refuse_while_loading()


def may(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> bool:
    """Return whether the request may go on: keys are off, it is a read without protect_reads, or its key is valid."""
    server = request.app.state.settings.server
    if not server.api_keys:
        return True
    if request.method in ("GET", "HEAD", "OPTIONS") and not server.protect_reads:
        return True
    given = credentials.credentials if credentials else ""
    return any(hmac.compare_digest(given.encode(), key.encode()) for key in server.api_keys)


def require_key(allowed: bool = Depends(may)) -> None:
    """Refuse (401) a write without a valid key when keys are configured, and a read with protect_reads."""
    if not allowed:
        raise ApiError(
            401,
            "unauthorized",
            "a valid API key is required: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
