"""The FastAPI application: `create_app(settings)` builds it; `kbqa serve` runs it under uvicorn.

Models load once, in a background thread the lifespan starts (`loading.py`), so the server listens and
`/healthz` answers while they load; the ingestion worker starts once they are loaded and stops (after the
running job's batch at hand) on shutdown. Routers stay thin over `KnowledgeService` and
`IngestionJobs`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.audit import AuditLog
from app.jobs import SqliteIngestionJobs
from app.keys import KeyStore
from app.logs import request_id
from app.server import errors
from app.server.auditing import Audit
from app.server.dependencies import Access, Authenticate
from app.server.limits import MIB, BodyLimit
from app.server.loading import ModelLoading
from app.server.mcp import mcp_routes, mcp_running, mcp_server
from app.server.metrics import Metrics
from app.server.routers import chat, documents, health, jobs, keys, knowledge_bases, openai_compat, search
from app.server.schemas import ERROR_RESPONSES
from app.services import KnowledgeService
from app.settings import Settings, load_settings

log = logging.getLogger(__name__)

# Seconds the shutdown waits for the models' loading to end before the process exits anyway.
SHUTDOWN_WAIT_S = 10

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Return the kbqa web application over `settings` (by default: config file, environment)."""
    settings = settings or load_settings()
    service = KnowledgeService(settings)
    if settings.store.backend == "postgres":  # the queue every node and `kbqa worker` shares
        from app.jobs import PgIngestionJobs

        ingestion = PgIngestionJobs(service, settings.server.job_queue_size, settings.server.ingest_worker)
    else:
        ingestion = SqliteIngestionJobs(service, settings.server.job_queue_size)
    loading = ModelLoading(service, then=ingestion.start)
    mcp = mcp_server(service)
    key_store = KeyStore(settings.data_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading.start()
        async with mcp_running(mcp):
            yield
        # A model half-loaded cannot be interrupted: the shutdown waits for it no longer than for requests.
        if await run_in_threadpool(loading.stop, SHUTDOWN_WAIT_S):
            await run_in_threadpool(ingestion.stop)
            service.close()
            key_store.close()
        else:
            log.warning("shutting down while the models still load", extra={"waited_s": SHUTDOWN_WAIT_S})

    app = FastAPI(
        title="kbqa",
        version="0.1.0",
        summary="Local knowledge-base question answering with citations.",
        description="Scores are cosine similarities in [-1, 1], higher is better. Errors are "
        '`{"error": {"code", "message", "request_id"}}`.',
        lifespan=lifespan,
        # Served by health.add_docs instead, behind the read key (server.protect_reads).
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.jobs = ingestion
    app.state.metrics = Metrics(ingestion)
    app.state.loading = loading
    app.state.access = Access(settings.server, key_store)
    app.state.audit = AuditLog(
        settings.data_dir, int(settings.server.audit_max_mb * MIB), settings.server.audit_backups
    )
    errors.install(app)
    app.include_router(health.router)
    for module in (knowledge_bases, documents, jobs, search, chat, openai_compat, keys):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    health.add_docs(app)
    if mcp is not None:
        app.router.routes.extend(mcp_routes(mcp))
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )
    server = settings.server
    app.add_middleware(
        BodyLimit,
        max_body=int(server.max_body_mb * MIB),
        max_file=int(server.max_upload_mb * MIB),
        max_files=server.max_upload_files,
    )
    # Outside BodyLimit, so a write without a valid key is refused from its headers, before any of its body is read.
    app.add_middleware(Authenticate, access=app.state.access)
    # Outside Authenticate, so writes it refuses are audited too.
    app.add_middleware(Audit, log=app.state.audit)
    app.add_middleware(RequestContext, metrics=app.state.metrics)
    _web_page(app)
    return app


def _web_page(app: FastAPI) -> None:
    """Serve the single web page at /, its files under /static, its settings at /page-config.json and its icon
    at /favicon.ico, when they are there."""
    index = WEB_DIR / "index.html"
    if not index.is_file():
        return
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(index)

    # What the upload box says it takes, from the one list the server checks uploads against.
    @app.get("/page-config.json", include_in_schema=False)
    def page_config() -> dict:
        return {"upload_types": app.state.settings.server.allowed_types}

    # Browsers ask for /favicon.ico whatever the page links (the API docs pages link it too).
    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")


class RequestContext:
    """Gives each request an id (X-Request-ID, taken from the client when it sends one) and records its
    count and latency per route; pure ASGI, so streamed responses pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if 0 < len(given) <= 64 and given.isprintable() else uuid.uuid4().hex
        token = request_id.set(rid)
        status = 500
        started = time.perf_counter()
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # a bug: logged with the request id, answered 500 with it when still possible
            log.exception("request failed")
            if response_started:
                raise
            body = errors.error_body(
                "internal_error", "internal server error; the request id is in the server log"
            )
            await JSONResponse(body, status_code=500)(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)
            request_id.reset(token)
