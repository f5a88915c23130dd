"""The OpenAI-compatible face's request bodies (/v1/chat/completions, /v1/embeddings), bounded by the
request limits of `schemas.py`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.request_limits import (
    MAX_EMBEDDING_CHARS,
    MAX_EMBEDDING_INPUTS,
    MAX_MESSAGE_CHARS,
    MAX_MESSAGES,
    MAX_NAME_CHARS,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
)
from app.server.schemas import StopString
from retrieval import SearchOptions


class ChatMessage(BaseModel):
    """An OpenAI chat message; content is text or a list of text parts."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = Field(None, max_length=MAX_MESSAGE_CHARS)

    @model_validator(mode="after")
    def _bounded(self) -> ChatMessage:
        if len(self.text()) > MAX_MESSAGE_CHARS:
            raise ValueError(f"a message's text may hold at most {MAX_MESSAGE_CHARS} characters")
        return self

    def text(self) -> str:
        """Return the message's text."""
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    """OpenAI stream options."""

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """An OpenAI chat-completions request; fields kbqa does not use (n, penalties, tools) are ignored."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"model": "demo", "messages": [{"role": "user", "content": "年假有几天？"}]}]
        },
    )
    model: str = Field(..., max_length=MAX_NAME_CHARS)
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: StopString | list[StopString] | None = Field(
        None, description=f"At most {MAX_STOP_STRINGS} strings of {MAX_STOP_CHARS} characters."
    )
    seed: int | None = None
    kb: str | None = Field(
        None, max_length=MAX_NAME_CHARS, description="kbqa extra: answer from this knowledge base."
    )
    retrieval: SearchOptions | None = Field(None, description="kbqa extra: how chunks are found.")
    adapter: str | None = Field(
        None,
        max_length=MAX_NAME_CHARS,
        description="kbqa extra: LoRA adapter by name ('base' for none), as `model: '<model>:<adapter>'` does.",
    )


class EmbeddingsRequest(BaseModel):
    """An OpenAI embeddings request."""

    model_config = ConfigDict(extra="allow")
    input: (
        Annotated[str, Field(max_length=MAX_EMBEDDING_CHARS)]
        | list[Annotated[str, Field(max_length=MAX_EMBEDDING_CHARS)]]
    ) = Field(
        ...,
        description=f"A text or a list of 1 to {MAX_EMBEDDING_INPUTS} texts, each of at most "
        f"{MAX_EMBEDDING_CHARS} characters (cut to the model's window).",
    )
    model: str | None = Field(None, max_length=MAX_NAME_CHARS)
