"""A Python client of the kbqa HTTP API (httpx; `Client` blocks, `AsyncClient` awaits).

It lives in `app/` because it is one more face of the service (the CLI's `--server` uses it), yet it
imports nothing of kbqa's but its own modules: no FastAPI, no models, so scripts and the LangChain
retriever can use it against a remote server cheaply.
"""

from app.client.aio import AsyncClient
from app.client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    KbqaError,
    NotFound,
    StreamCut,
    TooLarge,
    TransportError,
    Unauthorized,
    Unavailable,
)
from app.client.sync import Client
from app.client.types import (
    Answer,
    AnswerEvent,
    Citation,
    Delta,
    Document,
    Done,
    FileOutcome,
    Hit,
    Job,
    KnowledgeBase,
    Retrieval,
    Sources,
    Span,
    Turn,
    Usage,
)

__all__ = [
    "Answer",
    "AnswerEvent",
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Citation",
    "Client",
    "Conflict",
    "Delta",
    "Document",
    "Done",
    "FileOutcome",
    "Hit",
    "Job",
    "KbqaError",
    "KnowledgeBase",
    "NotFound",
    "Retrieval",
    "Sources",
    "Span",
    "StreamCut",
    "TooLarge",
    "TransportError",
    "Turn",
    "Unauthorized",
    "Unavailable",
    "Usage",
]
