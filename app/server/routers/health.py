"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict:
    """Return ok while the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", summary="Models are loaded", responses={503: {"description": "Still loading"}})
def readyz(request: Request) -> JSONResponse:
    """Return ready once the embedding model (and the chat model, if any) are loaded."""
    state = request.app.state
    if not state.ready.is_set():
        return JSONResponse({"status": "loading"}, status_code=503)
    if state.load_error:
        return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
    settings = state.settings
    return JSONResponse(
        {"status": "ready", "embedding": state.service.embedder.model_name, "llm": settings.llm.backend}
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Return request counts and latencies, queue depth, ingestion and generation counters."""
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")
