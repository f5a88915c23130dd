"""What routes need from the app: its services, and the API-key check."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.jobs import IngestionJobs
from app.server.errors import ApiError, error_body
from app.services import KnowledgeService
from app.settings import ServerConfig

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
    return key_allows(
        request.app.state.settings.server, request.method, credentials.credentials if credentials else ""
    )


def key_allows(server: ServerConfig, method: str, given: str) -> bool:
    """Return whether a request of `method` bearing key `given` ("" for none) may go on under `server`'s keys."""
    if not server.api_keys:
        return True
    if method in ("GET", "HEAD", "OPTIONS") and not server.protect_reads:
        return True
    return any(hmac.compare_digest(given.encode(), key.encode()) for key in server.api_keys)


class KeyFirst:
    """Refuses (401) a write to the API without a valid key before any of its body is read.

    The routes' own check (`require_key`) runs only once FastAPI has parsed the body, which for an
    upload means spooling every file to disk first; this pure ASGI layer answers from the headers, so
    an unauthenticated 90 MiB upload costs nothing but the connection, closed at once.
    """

    def __init__(self, app: ASGIApp, server: ServerConfig) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one request."""
        if scope["type"] != "http" or not scope["path"].startswith("/v1/") or scope["method"] in _READS:
            await self.app(scope, receive, send)
            return
        scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1").partition(" ")
        if key_allows(self.server, scope["method"], given.strip() if scheme.lower() == "bearer" else ""):
            await self.app(scope, receive, send)
            return
        body = error_body("unauthorized", UNAUTHORIZED)
        headers = {"WWW-Authenticate": "Bearer", "Connection": "close"}  # the body is never read
        await JSONResponse(body, status_code=401, headers=headers)(scope, receive, send)


_READS = ("GET", "HEAD", "OPTIONS")
UNAUTHORIZED = "a valid API key is required: Authorization: Bearer <key>"


def require_key(allowed: bool = Depends(may)) -> None:
    """Refuse (401) a write without a valid key when keys are configured, and a read with protect_reads."""
    if not allowed:
        raise ApiError(
            401,
            "unauthorized",
            UNAUTHORIZED,
            headers={"WWW-Authenticate": "Bearer"},
        )
