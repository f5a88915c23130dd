"""Request and response bodies of the HTTP API, with the examples OpenAPI shows, and the limits every
request is checked against; the OpenAI-compatible face's are in `openai_schemas.py`, the keys' in
`key_schemas.py`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.request_limits import (
    MAX_HISTORY_CHARS,
    MAX_HISTORY_TURNS,
    MAX_NAME_CHARS,
    MAX_QUERY_CHARS,
    MAX_QUESTION_CHARS,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    MAX_TURN_CHARS,
)
from llm import Citation, Message
from retrieval import SearchOptions

StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


class Strict(BaseModel):
    """A request body that refuses unknown fields, so a typo is an error rather than silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str = Field(examples=["invalid_request"])
    message: str
    request_id: str | None = Field(description="The X-Request-ID of the request, repeated in the server log.")


class ErrorOut(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


# The errors any route may answer with, listed in the OpenAPI schema (docs/usage.md, "The web service").
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": description}
    for status, description in {
        400: "Bad input (a name, a filter, a file)",
        401: "An API key is needed (server.api_keys)",
        404: "No such knowledge base, document, job or model",
        409: "Exists already, busy being written, or finished",
        413: "A body, an upload or a file over its limit",
        422: "A malformed body or a field over its documented maximum",
        429: "Too many ingestion jobs waiting (Retry-After)",
        503: "The models are still loading, or the model is busy or its server unavailable (Retry-After)",
    }.items()
}


class CreateKnowledgeBase(Strict):
    """A knowledge base to create."""

    # Checked by the catalog (400 invalid_name, at most 64 characters); bounded here only against abuse.
    name: str = Field(
        ...,
        max_length=MAX_NAME_CHARS,
        examples=["员工手册"],
        description="Letters (Chinese too), digits, '-', '_'.",
    )
    store: Literal["faiss", "milvus", "pgvector"] | None = Field(
        None, description="Where its vectors are searched; unset, the server's vector_store.backend setting."
    )
    uri: str | None = Field(
        None,
        max_length=MAX_NAME_CHARS,
        description="Milvus only: a server URI (http://host:19530), or a Milvus Lite file name ending in .db, "
        "kept inside the knowledge base; unset, the server's vector_store.milvus_uri setting (milvus.db).",
    )


class StoreOut(BaseModel):
    """Where a knowledge base's vectors are searched."""

    backend: Literal["faiss", "milvus", "pgvector"]  # pgvector: the knowledge base is on the PostgreSQL store
    uri: str | None = Field(
        description="Milvus: the server URI or the Milvus Lite file in the knowledge base."
    )
    collection: str | None = Field(description="Milvus: the collection holding the vectors.")


class KnowledgeBaseOut(BaseModel):
    """A knowledge base and what it holds."""

    name: str
    documents: int
    chunks: int
    embedding_model: str
    store: StoreOut
    size_bytes: int
    created_at: str
    metadata: dict[str, list[str]]
    answerability_calibrated: bool = Field(
        description="Its embedding model has an answerability calibration; without one, answers are not "
        "refused on answerability (only an explicit score_threshold filters chunks)."
    )


class DocumentOut(BaseModel):
    """A stored document."""

    id: int
    source: str
    title: str
    status: str
    size: int
    page_count: int | None
    chunk_count: int
    created_at: str
    updated_at: str
    metadata: dict[str, str]
    groups: list[str] = Field(
        default_factory=list, description="Access groups: only keys sharing one see it; none: every reader."
    )


class FileOutcomeOut(BaseModel):
    """What an ingestion job did with one file."""

    source: str
    status: str
    chunks: int = 0
    reason: str | None = None


class JobOut(BaseModel):
    """An ingestion job and its progress."""

    id: str
    kb: str
    kind: Literal["ingest", "reindex"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    files_total: int
    files_done: int
    chunks_done: int
    files: list[FileOutcomeOut]
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    reading: str | None = Field(
        None,
        description='While running: the page OCR is reading ("scan.pdf page 3/12"), which takes seconds.',
    )
    groups: list[str] | None = Field(
        None, description="The access groups its documents get (null: their own)."
    )


class JobAccepted(BaseModel):
    """The job an upload or re-index started."""

    job: JobOut


class SearchRequest(SearchOptions):
    """A search: the query and the retriever's options."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"query": "报销需要多久到账？", "k": 5, "mode": "hybrid"}]},
    )
    query: str = Field(..., min_length=1, max_length=MAX_QUERY_CHARS, description="What to look for.")

    def options(self) -> SearchOptions:
        """Return the search options without the query."""
        return SearchOptions.model_validate(self.model_dump(exclude={"query"}))


class HitOut(BaseModel):
    """A chunk that matches; `score` is its cosine similarity to the query, in [-1, 1], higher is better."""

    chunk_id: int
    score: float
    text: str
    document_id: int
    source: str
    title: str
    page: int | None
    heading_path: list[str]
    lexical_score: float | None
    fusion_score: float | None
    rerank_score: float | None
    context_before: list[str]
    context_after: list[str]
    metadata: dict[str, str]
    ocr: bool = Field(False, description="The text was read from an image by OCR (a scanned page, a photo).")


class ListOf(BaseModel):
    """A list response."""

    data: list[Any]


class SearchOut(ListOf):
    """The hits of a search (`data`) and how likely they hold the answer."""

    answerability: float | None = Field(
        None,
        description="Probability in [0, 1] that the hits hold the answer to the query, as /chat judges it; "
        "null when the embedding model has no calibration.",
    )


class Turn(Strict):
    """One earlier turn of the conversation."""

    role: Literal["user", "assistant"]
    content: str = Field(..., max_length=MAX_TURN_CHARS)

    def message(self) -> Message:
        """Return the turn as an llm Message."""
        return Message(self.role, self.content)


class GenerationOptions(Strict):
    """Generation parameters a request may set; unset ones come from the `llm.generation` settings."""

    max_new_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    stop: list[StopString] | None = Field(None, max_length=MAX_STOP_STRINGS)
    seed: int | None = None
    adapter: str | None = Field(
        None, max_length=MAX_NAME_CHARS, description="LoRA adapter by name; 'base' for none."
    )


class ChatRequest(Strict):
    """A question to answer from a knowledge base."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"question": "报销需要多久到账？", "stream": False}]},
    )
    question: str = Field(..., min_length=1, max_length=MAX_QUESTION_CHARS)
    history: list[Turn] = Field(
        default_factory=list, max_length=MAX_HISTORY_TURNS, description="Earlier turns, oldest first."
    )
    stream: bool = Field(False, description="Answer as server-sent events: citations, deltas, done.")
    retrieval: SearchOptions = Field(default_factory=SearchOptions, description="How chunks are found.")
    generation: GenerationOptions = Field(default_factory=GenerationOptions)

    @model_validator(mode="after")
    def _history_bounded(self) -> ChatRequest:
        check_history_chars(turn.content for turn in self.history)
        return self


def check_history_chars(contents: Iterable[str]) -> None:
    """Return nothing; raise ValueError when the earlier turns hold more than `MAX_HISTORY_CHARS` together."""
    if sum(len(content) for content in contents) > MAX_HISTORY_CHARS:
        raise ValueError(f"the history may hold at most {MAX_HISTORY_CHARS} characters in all")


@dataclass(frozen=True)
class CitationOut(Citation):
    """A chunk an answer cites as [n]."""

    # The answerer's `Citation` owns the fields; on the wire its heading path is a list.
    heading_path: Annotated[
        list[str], Field(description="The titles above the chunk; a spreadsheet's: the sheet name.")
    ] = field(default_factory=list)


class UsageOut(BaseModel):
    """Token counts."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class SpanOut(BaseModel):
    """Characters [start, end) of an answer that answer the question, and their text."""

    start: int
    end: int
    text: str


class AnswerOut(BaseModel):
    """An answer with the citations it uses, token counts and timings (milliseconds)."""

    answer: str
    citations: list[CitationOut]
    usage: UsageOut
    timings: dict[str, float | None]
    finish_reason: str
    grounded: bool
    refused: bool = Field(
        description="The answer is the refusal sentence: the documents do not hold the answer."
    )
    answerability: float | None = Field(
        description="Probability in [0, 1] that the retrieved chunks hold the answer (calibrated per embedding "
        "model); null when the embedding model has no calibration. Below `llm.min_answerability` kbqa refuses."
    )
    closest: list[CitationOut] = Field(
        description="When nothing was cited (a refusal): the closest chunks found, which the answer did not use."
    )
    searched_question: str = Field(
        "",
        description="The question that was searched and judged: a follow-up made standalone from the history "
        '(docs/usage.md, "Conversations"), else the question as typed.',
    )
    spans: list[SpanOut] = Field(
        default_factory=list,
        description="The words of the answer that answer the question (the 12 天 of a sick-leave rule, the "
        "2.1 kg of 重量：2.1 kg): character offsets [start, end) into `answer`, in order. Extractive answers "
        "only; empty when none is marked.",
    )


# --- access groups (issue 26) --------------------------------------------------------------------------


class GroupsIn(Strict):
    """A document's new access groups."""

    groups: list[str] = Field(
        ...,
        max_length=32,
        description="Only keys sharing one of these see the document; [] for every reader.",
    )
