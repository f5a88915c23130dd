"""Liveness, readiness, metrics and the API's own documentation.

With `server.protect_reads`, everything but `/healthz` needs a key: `/metrics`, the OpenAPI schema and
its pages, and the details of `/readyz` (without a key it says only whether the server is ready, for
health checks).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from app.server.dependencies import may, require_key
from app.server.loading import RETRY_AFTER_S

router = APIRouter(tags=["health"])

# Swagger UI's and ReDoc's files, served by the app itself so /docs works without internet.
DOCS_ASSETS = "/docs-assets"
REDOC_POLICY = "img-src 'self' data: blob:"


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict:
    """Return ok while the process serves requests, from its first second (the models may still load)."""
    return {"status": "ok"}


@router.get("/readyz", summary="Models are loaded", responses={503: {"description": "Still loading"}})
def readyz(request: Request, details: bool = Depends(may)) -> JSONResponse:
    """Return ready once the embedding model (and the chat model, if any) are loaded and the sample knowledge
    base is built; while loading, what is done and pending with the sample's progress; the models' names
    and a loading error only to a request that may read (a key, with protect_reads)."""
    state = request.app.state
    loading = state.loading
    if not loading.finished.is_set():
        body = {"status": "loading", **loading.status()} if details else {"status": "loading"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    if loading.error:
        body = {"status": "failed", "error": loading.error} if details else {"status": "failed"}
        return JSONResponse(body, status_code=503)
    if (problem := state.service.database_problem()) is not None:
        # The PostgreSQL store is down: this node answers nothing useful until it is back (it recovers by itself).
        body = (
            {"status": "database_unavailable", "error": problem}
            if details
            else {"status": "database_unavailable"}
        )
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    if not details:
        return JSONResponse({"status": "ready"})
    settings = state.settings
    return JSONResponse(
        {"status": "ready", "embedding": state.service.embedding_model, "llm": settings.llm.backend}
    )


@router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response, dependencies=[Depends(require_key)]
)
def metrics(request: Request) -> Response:
    """Return request counts and latencies, queue depth, ingestion and generation counters."""
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")


def add_docs(app: FastAPI) -> None:
    """Serve the OpenAPI schema at /openapi.json and its pages at /docs and /redoc, behind the read key."""
    from importlib.resources import files

    protected = [Depends(require_key)]
    app.mount(
        DOCS_ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets"
    )

    @app.get("/openapi.json", include_in_schema=False, dependencies=protected)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=protected)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url="/favicon.ico",
        )

    @app.get("/redoc", include_in_schema=False, dependencies=protected)
    def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - API",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url="/favicon.ico",
            with_google_fonts=False,
        )
        # ReDoc draws its maker's logo from cdn.redoc.ly and has no option against it: the browser is told
        # to load images from here only, so no request leaves (the logo hides itself when it fails).
        page.headers["Content-Security-Policy"] = REDOC_POLICY
        return page
