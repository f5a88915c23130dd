"""Every error as `{"error": {"code", "message", "request_id"}}` with the status that fits it."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import retrieval
from app.jobs import JobFinished, JobNotFound, JobQueueFull
from app.logs import request_id
from app.model_routing import ModelNotFound
from app.validation import validation_message
from llm import LLMError, ModelBusy, ModelLoadError, ModelUnavailable, PromptTooLong, UnknownAdapter

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of gives its status and code.
STATUS: list[tuple[type[Exception], int, str]] = [
    (retrieval.KnowledgeBaseNotFound, 404, "knowledge_base_not_found"),
    (ModelNotFound, 404, "model_not_found"),
    (retrieval.DocumentNotFound, 404, "document_not_found"),
    (JobNotFound, 404, "job_not_found"),
    (retrieval.KnowledgeBaseExists, 409, "knowledge_base_exists"),
    (retrieval.KnowledgeBaseBusy, 409, "knowledge_base_busy"),
    (retrieval.InvalidName, 400, "invalid_name"),
    (retrieval.EmbeddingMismatch, 409, "embedding_mismatch"),
    # The PostgreSQL store is down (retry shortly), or cannot be used as it is (schema newer, no pgvector).
    (retrieval.DatabaseUnavailable, 503, "database_unavailable"),
    (retrieval.DatabaseError, 503, "database_unavailable"),
    (retrieval.KnowledgeBaseError, 400, "knowledge_base_error"),
    (JobQueueFull, 429, "too_many_jobs"),
    (JobFinished, 409, "job_finished"),
    (ModelBusy, 503, "model_busy"),
    (ModelUnavailable, 503, "model_unavailable"),
    (UnknownAdapter, 400, "unknown_adapter"),
    (PromptTooLong, 400, "prompt_too_long"),
    (ModelLoadError, 500, "model_load_error"),
    (LLMError, 502, "generation_failed"),
    (ValueError, 400, "invalid_request"),  # the lower packages' word for a request they cannot serve
]


class ApiError(Exception):
    """An error a route raises with its own status and code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(code: str, message: str) -> dict:
    """Return the JSON body of an error."""
    return {"error": {"code": code, "message": message, "request_id": request_id.get()}}


def describe(error: Exception) -> tuple[int, str, str]:
    """Return (status, code, message) for an error of a lower package; 500 for anything unexpected."""
    if isinstance(error, ApiError):
        return error.status, error.code, error.message
    for kind, status, code in STATUS:
        if isinstance(error, kind):
            return status, code, str(error)
    return 500, "internal_error", "internal server error; the request id is in the server log"


def install(app: FastAPI) -> None:
    """Register the handlers that turn errors into JSON responses."""

    async def known(request: Request, error: Exception) -> JSONResponse:
        status, code, message = describe(error)
        if status >= 500:
            log.error("request failed", exc_info=error)
        headers = getattr(error, "headers", None) or ({"Retry-After": "5"} if status in (429, 503) else None)
        return JSONResponse(error_body(code, message), status_code=status, headers=headers)

    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = getattr(error, "code", None) or {
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
        }.get(error.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(error.detail)), status_code=error.status_code, headers=error.headers
        )

    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            error_body("invalid_request", validation_message(error.errors())), status_code=422
        )

    for kind in (
        ApiError,
        retrieval.KnowledgeBaseError,
        LLMError,
        JobNotFound,
        JobQueueFull,
        JobFinished,
        ValueError,
    ):
        app.add_exception_handler(kind, known)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
