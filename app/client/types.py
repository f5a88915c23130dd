"""What the kbqa API answers, as typed objects; fields a newer server adds are kept, never refused."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Wire(BaseModel):
    """A response object: unknown fields are kept (a newer server may add some), none is required twice."""

    model_config = ConfigDict(extra="allow")


class Store(Wire):
    """Where a knowledge base's vectors are searched."""

    backend: str
    uri: str | None = None
    collection: str | None = None


class KnowledgeBase(Wire):
    """A knowledge base and what it holds."""

    name: str
    documents: int
    chunks: int
    embedding_model: str
    store: Store | None = None
    size_bytes: int = 0
    created_at: str = ""
    metadata: dict[str, list[str]] = Field(default_factory=dict)
    answerability_calibrated: bool = False


class Document(Wire):
    """A stored document."""

    id: int
    source: str
    title: str = ""
    status: str = ""
    size: int = 0
    page_count: int | None = None
    chunk_count: int = 0
    created_at: str = ""
    updated_at: str = ""
    metadata: dict[str, str] = Field(default_factory=dict)
    groups: list[str] = Field(default_factory=list)  # access groups (none: every reader sees it)


class FileOutcome(Wire):
    """What an ingestion job did with one file."""

    source: str
    status: str
    chunks: int = 0
    reason: str | None = None


class Job(Wire):
    """An ingestion job and its progress."""

    id: str
    kb: str
    kind: str = "ingest"
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | str
    files_total: int = 0
    files_done: int = 0
    chunks_done: int = 0
    files: list[FileOutcome] = Field(default_factory=list)
    error: str | None = None
    created_at: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    reading: str | None = None

    @property
    def finished(self) -> bool:
        """Return whether the job has ended, well or not."""
        return self.status in ("succeeded", "failed", "cancelled")


class Hit(Wire):
    """A chunk that matches a search; `score` is its cosine similarity in [-1, 1], higher is better."""

    chunk_id: int
    score: float
    text: str
    document_id: int
    source: str
    title: str = ""
    page: int | None = None
    heading_path: list[str] = Field(default_factory=list)
    lexical_score: float | None = None
    fusion_score: float | None = None
    rerank_score: float | None = None
    context_before: list[str] = Field(default_factory=list)
    context_after: list[str] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)
    ocr: bool = False


class Retrieval(Wire):
    """A search's hits with the probability in [0, 1] that they hold the answer (None: no calibration)."""

    hits: list[Hit] = Field(validation_alias="data")
    answerability: float | None = None


class Citation(Wire):
    """A chunk an answer cites as [n] (or, in `closest`, one it found but did not use)."""

    n: int
    chunk_id: int
    document_id: int
    source: str
    title: str = ""
    page: int | None = None
    score: float
    text: str
    heading_path: list[str] = Field(default_factory=list)


class Usage(Wire):
    """Token counts."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Span(Wire):
    """Words of an answer that answer the question: characters [start, end) of the answer text."""

    start: int
    end: int
    text: str


class Answer(Wire):
    """An answer with the citations it uses; `refused` when the documents do not hold the answer."""

    answer: str
    citations: list[Citation] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    timings: dict[str, float | None] = Field(default_factory=dict)
    finish_reason: str = "stop"
    grounded: bool = False
    refused: bool = False
    answerability: float | None = None
    closest: list[Citation] = Field(default_factory=list)
    searched_question: str = ""  # a follow-up made standalone, as searched; else the question as asked
    spans: list[Span] = Field(default_factory=list)  # the words of `answer` that answer (extractive answers)


class Turn(BaseModel):
    """One earlier turn of a conversation, oldest first."""

    role: Literal["user", "assistant"]
    content: str


class Sources(Wire):
    """The first event of a streamed answer: the chunks it may cite."""

    citations: list[Citation]


class Delta(Wire):
    """A piece of a streamed answer's text."""

    text: str


class Done(Wire):
    """The last event of a streamed answer: the whole answer, as `ask` returns it."""

    answer: Answer


AnswerEvent = Sources | Delta | Done


def turns(history: list[Turn] | list[dict[str, Any]] | list[tuple[str, str]] | None) -> list[dict[str, str]]:
    """Return a conversation given as turns, dicts or (role, content) pairs in the API's form."""
    out = []
    for turn in history or []:
        if isinstance(turn, tuple):
            turn = Turn(role=turn[0], content=turn[1])  # type: ignore[arg-type]
        out.append(Turn.model_validate(turn).model_dump())
    return out
