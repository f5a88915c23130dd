"""What routes need from the app: its services, who the caller is, and what the caller may do.

`Authenticate` (pure ASGI) finds the caller from the `Authorization: Bearer` header once per request,
before any body is read, and answers 401 for a wrong or expired key, 429 to a client that sent too many;
the routes' dependencies (`reader`, `editor`, `admin`, …) then answer 401 (a key is needed) or 403 (this
key may not) for what the caller's role does not cover.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict, deque
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.jobs import IngestionJobs
from app.keys import Caller, KeyStore, config_key
from app.server.errors import ApiError, error_body
from app.services import KnowledgeService
from app.settings import ServerConfig

# Declared on the routes so the OpenAPI document (and Swagger's Authorize button) shows the bearer key.
bearer = HTTPBearer(
    auto_error=False, description="An API key: `kbqa keys create`, or one of `server.api_keys`."
)

UNAUTHORIZED = "a valid API key is required: Authorization: Bearer <key>"
_READS = ("GET", "HEAD", "OPTIONS")
# Paths whose requests are judged by their key: a wrong key there is a 401 (elsewhere it is ignored;
# /readyz only shows its details to a good one).
_PROTECTED = re.compile(r"^/(v1/|mcp|metrics$|readyz$|openapi\.json$|docs$|redoc$)")
_UPLOAD = re.compile(r"^/v1/kbs/([^/]+)/documents/?$")
MAX_CLIENTS_TRACKED = 10_000


def knowledge(request: Request) -> KnowledgeService:
    """Return the app's knowledge service."""
    return request.app.state.service


def jobs(request: Request) -> IngestionJobs:
    """Return the app's ingestion jobs."""
    return request.app.state.jobs


def loaded(request: Request) -> None:
    """Refuse (503, with Retry-After) a request that needs a model while the models load; return nothing."""
    request.app.state.loading.refuse_while_loading()


class FailedAuth:
    """Counts each client's wrong keys in a sliding window; past the limit, its keyed requests wait (429)."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def retry_after(self, client: str) -> int:
        """Return the seconds `client` must wait before its next key is looked at (0: none)."""
        now = time.monotonic()
        times = self._recent(client, now)
        if len(times) < self.limit:
            return 0
        return max(1, int(times[-self.limit] + self.window_s - now + 0.999))

    def failed(self, client: str) -> None:
        """Note one wrong key from `client`; return nothing."""
        now = time.monotonic()
        times = self._recent(client, now)
        times.append(now)
        self._failures[client] = times
        self._failures.move_to_end(client)
        while len(self._failures) > MAX_CLIENTS_TRACKED:  # memory stays bounded under a spray of addresses
            self._failures.popitem(last=False)


class Access:
    """The server's keys (stored and flat) and the failed-auth throttle: who a key is."""

    def __init__(self, server: ServerConfig, keys: KeyStore) -> None:
        self.server = server
        self.keys = keys
        self.throttle = FailedAuth(server.auth_failures, server.auth_window_s)

    def keys_configured(self) -> bool:
        """Return whether any key exists (else the server is open, as it was before keys)."""
        return bool(self.server.api_keys) or self.keys.any()

    def identify(self, given: str | None, client: str) -> Caller:
        """Return the caller bearing `given` (None: no key); raise ApiError 401 for a wrong or expired key,
        429 when `client` sent too many wrong keys lately."""
        configured = self.keys_configured()
        if (
            not given or not configured
        ):  # a server without keys ignores one (the openai client always sends one)
            return Caller.anonymous(configured, self.server.protect_reads)
        if wait := self.throttle.retry_after(client):
            raise ApiError(
                429,
                "too_many_failed_keys",
                f"too many wrong API keys from this client; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        key = config_key(self.server.api_keys, given) or self.keys.find(given)
        if key is None:
            self.throttle.failed(client)
            raise ApiError(
                401, "unauthorized", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"}
            )
        if key.expired():
            self.throttle.failed(client)
            raise ApiError(
                401,
                "key_expired",
                f"the API key '{key.name}' expired at {key.expires_at}; ask an admin for a new one",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Caller.of(key)


def _bearer_of(scope: Scope) -> str | None:
    header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
    scheme, _, given = header.partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


class Authenticate:
    """Finds each request's caller from its key, before any of its body is read.

    A wrong or expired key on the API is a 401 (429 once its client sent too many), and a write with no
    key on a server with keys is a 401, answered from the headers: an unauthenticated 90 MiB upload costs
    nothing but the connection, closed at once. So is an upload by a key that may not write there (403).
    """

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        protected = bool(_PROTECTED.match(scope["path"]))
        try:
            given = _bearer_of(scope) if protected else None
            try:
                caller = self.access.identify(given, _client(scope))
            except ApiError:
                if scope["path"] != "/readyz":
                    raise
                # A health check stays a health check: a bad key there only loses the details.
                caller = self.access.identify(None, _client(scope))
            if protected and scope["method"] not in _READS:
                if not caller.authenticated:
                    raise ApiError(401, "unauthorized", UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
                upload = _UPLOAD.match(scope["path"])
                if upload and scope["method"] == "POST" and not caller.writes(upload.group(1)):
                    raise ApiError(403, "forbidden", f"this key may not upload to '{upload.group(1)}'")
        except ApiError as error:
            headers = {**(error.headers or {}), "Connection": "close"}  # the body is never read
            await JSONResponse(
                error_body(error.code, error.message), status_code=error.status, headers=headers
            )(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


def caller(request: Request) -> Caller:
    """Return who makes the request (found by `Authenticate`)."""
    return request.scope["state"]["caller"]


def deny(who: Caller, message: str) -> ApiError:
    """Return the error refusing `who`: 401 without a key (one is needed), 403 with one (it does not cover this)."""
    if not who.authenticated:
        return ApiError(401, "unauthorized", UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    return ApiError(403, "forbidden", message)


def reader(kb: str, request: Request) -> Caller:
    """Return the caller when it may read knowledge base `kb` (401/403 otherwise)."""
    who = caller(request)
    if not who.reads(kb, request.method):
        raise deny(who, f"this key may not read knowledge base '{kb}'")
    return who


def editor(kb: str, request: Request) -> Caller:
    """Return the caller when it may change the documents of knowledge base `kb` (401/403 otherwise)."""
    who = caller(request)
    if not who.writes(kb):
        raise deny(who, f"this key may not change documents of knowledge base '{kb}' (an editor's key may)")
    return who


def any_editor(request: Request) -> Caller:
    """Return the caller when it edits some knowledge base (jobs are theirs to follow; 401/403 otherwise)."""
    who = caller(request)
    if not who.edits_any():
        raise deny(who, "only an editor's or an admin's key may see ingestion jobs")
    return who


def admin(request: Request) -> Caller:
    """Return the caller when it is an admin (401/403 otherwise)."""
    who = caller(request)
    if not who.is_admin:
        raise deny(who, "only an admin's key may do this")
    return who


def authenticated(request: Request) -> Caller:
    """Return the caller when it bears a valid key, or the server has none (401 otherwise)."""
    who = caller(request)
    if not who.authenticated:
        raise deny(who, UNAUTHORIZED)
    return who


# What most routes take, declared once (FastAPI's Annotated form): `service: Service, who: Reader`.
Service = Annotated[KnowledgeService, Depends(knowledge)]
Reader = Annotated[Caller, Depends(reader)]  # may read the path's knowledge base
Authenticated = Annotated[Caller, Depends(authenticated)]
AnyCaller = Annotated[Caller, Depends(caller)]  # whoever it is, a key or none


def may(request: Request) -> bool:
    """Return whether the request may see what `server.protect_reads` guards: the metrics, the API's
    documentation, the details of /readyz."""
    who = request.scope.get("state", {}).get("caller")
    return who is not None and (who.authenticated or who.open_reads)


def require_key(request: Request) -> None:
    """Refuse (401) a request for what `server.protect_reads` guards when it may not see it; return nothing."""
    if not may(request):
        raise ApiError(401, "unauthorized", UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


def reads_everything(who: Caller) -> bool:
    """Return whether `who` may read every document of every knowledge base (what the MCP server serves)."""
    return who.is_admin or (who.role is not None and "*" in who.kbs and who.groups is None)
