"""The OpenAI-compatible face: models, chat completions and embeddings, for the official clients.

A model id is a knowledge-base name (the answer comes from it, with the extra fields `citations`,
`refused`, `answerability` and `closest`, as in `/v1/kbs/{kb}/chat`), or the bare LLM's name (plain chat, no knowledge base). A request may also name the knowledge
base in an extra `kb` field.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.server.dependencies import knowledge, require_key
from app.server.errors import ApiError, describe, error_body
from app.server.metrics import Metrics
from app.server.routers.chat import answer_out, read_unless_gone
from app.server.schemas import (
    MAX_EMBEDDING_CHARS,
    MAX_EMBEDDING_INPUTS,
    MAX_MESSAGE_CHARS,
    MAX_MESSAGES,
    MAX_NAME_CHARS,
    MAX_QUESTION_CHARS,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    StopString,
)
from app.services import KnowledgeService
from llm import AnswerOptions, Message, TextStream
from retrieval import SearchOptions

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_key)])


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


@router.get("/models", summary="List models (OpenAI)")
def list_models(request: Request, service: KnowledgeService = Depends(knowledge)) -> dict:
    """Return one model per knowledge base, plus the bare LLM when one is configured."""
    created = int(time.time())
    ids = service.catalog.names()
    if (llm := _llm_name(request)) is not None:
        ids.append(llm)
    return {
        "object": "list",
        "data": [{"id": i, "object": "model", "created": created, "owned_by": "kbqa"} for i in ids],
    }


@router.post("/chat/completions", summary="Chat completions (OpenAI)")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, service: KnowledgeService = Depends(knowledge)
) -> Any:
    """Answer the last user message from the knowledge base named by `model` (or `kb`), or chat plainly
    with the bare LLM."""
    params = service.generation_params(
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=[body.stop] if isinstance(body.stop, str) else body.stop,
        seed=body.seed,
    )
    kb = body.kb or (body.model if service.catalog.exists(body.model) else None)
    completion = _Completion(body.model, request.app.state.metrics)
    if kb is not None:
        question, history = _question(body.messages)
        options = AnswerOptions(retrieval=body.retrieval or SearchOptions(), generation=params)
        answer_stream = await run_in_threadpool(service.ask, kb, question, history, options)
        if not body.stream:
            answer = await read_unless_gone(request, answer_stream)
            out = answer_out(answer).model_dump()
            return completion.whole(answer.text, answer.finish_reason, out["usage"], **_kb_extras(out))
        return _sse(completion, answer_stream, body, lambda: answer_out(answer_stream.answer).model_dump())
    if body.model != _llm_name(request):
        known = ", ".join([*service.catalog.names(), _llm_name(request) or ""]).strip(", ")
        raise ApiError(
            404, "model_not_found", f"no model or knowledge base named '{body.model}'; models: {known}"
        )
    messages = [Message(_role(m.role), m.text()) for m in body.messages]
    model = service.answerer.model
    if not body.stream:
        generation = await read_unless_gone(request, await run_in_threadpool(model.stream, messages, params))
        usage = {**asdict(generation.usage), "total_tokens": generation.usage.total_tokens}
        return completion.whole(generation.text, generation.finish_reason, usage)
    text_stream = await run_in_threadpool(model.stream, messages, params)
    return _sse(completion, text_stream, body, lambda: _generation_summary(text_stream))


@router.post("/embeddings", summary="Embeddings (OpenAI)")
async def embeddings(
    body: EmbeddingsRequest, request: Request, service: KnowledgeService = Depends(knowledge)
) -> dict:
    """Return the configured embedding model's passage vectors (L2-normalised) for the input texts."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or len(texts) > MAX_EMBEDDING_INPUTS:
        raise ApiError(422, "invalid_request", f"input must hold 1 to {MAX_EMBEDDING_INPUTS} texts")
    embedder = service.embedder
    vectors = []
    # A few texts at a time, so the work stops soon after the client goes away.
    for start in range(0, len(texts), _EMBED_STEP):
        if await request.is_disconnected():
            raise ApiError(499, "client_closed_request", "the client went away; the work was stopped")
        vectors.extend(await run_in_threadpool(embedder.embed_documents, texts[start : start + _EMBED_STEP]))
    # In a worker thread: counting waits for an engine handle, which must never hold up the event loop.
    tokens = await run_in_threadpool(lambda: sum(embedder.count_tokens(text) for text in texts))
    return {
        "object": "list",
        "model": embedder.model_name,
        "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


_EMBED_STEP = 4


def _kb_extras(answer: dict) -> dict:
    """Return the kbqa fields a knowledge-base answer adds to an OpenAI response."""
    return {key: answer[key] for key in ("citations", "refused", "answerability", "closest")}


class _Completion:
    """Builds the OpenAI response objects of one completion."""

    def __init__(self, model: str, metrics: Metrics) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.model = model
        self.created = int(time.time())
        self.metrics = metrics

    def whole(self, text: str, finish_reason: str, usage: dict, **extra: Any) -> dict:
        """Return a non-streamed chat.completion."""
        self.metrics.generated_tokens.inc(usage["completion_tokens"])
        message = {"role": "assistant", "content": text}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
            **extra,
        }

    def chunk(self, delta: dict, finish_reason: str | None = None, **extra: Any) -> str:
        """Return one chat.completion.chunk as a server-sent event."""
        choices = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _sse(
    completion: _Completion, stream: Any, body: ChatCompletionRequest, summary: Any
) -> StreamingResponse:
    """Return the streamed completion: a role chunk, content chunks, a finish chunk, usage, [DONE]."""

    async def chunks() -> AsyncIterator[str]:
        try:
            yield completion.chunk({"role": "assistant", "content": ""})
            while (delta := await anyio.to_thread.run_sync(next, stream, None)) is not None:
                yield completion.chunk({"content": delta})
            done = summary()
            completion.metrics.generated_tokens.inc(done["usage"]["completion_tokens"])
            extra = _kb_extras(done) if "citations" in done else {}
            yield completion.chunk({}, done["finish_reason"], **extra)
            if body.stream_options and body.stream_options.include_usage:
                usage = {k: done["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
                body_usage = {
                    "id": completion.id,
                    "object": "chat.completion.chunk",
                    "created": completion.created,
                    "model": completion.model,
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(body_usage)}\n\n"
        except Exception as error:  # after the headers: the error travels in the stream
            _, code, message = describe(error)
            yield f"data: {json.dumps(error_body(code, message), ensure_ascii=False)}\n\n"
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stream.close)
        yield "data: [DONE]\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream")


def _generation_summary(stream: TextStream) -> dict:
    generation = stream.generation
    usage = {**asdict(generation.usage), "total_tokens": generation.usage.total_tokens}
    return {"finish_reason": generation.finish_reason, "usage": usage}


def _question(messages: list[ChatMessage]) -> tuple[str, list[Message]]:
    """Return the last user message as the question and the earlier user/assistant turns as history."""
    if messages[-1].role != "user" or not messages[-1].text().strip():
        raise ApiError(400, "invalid_request", "the last message must be the user's question")
    if len(messages[-1].text()) > MAX_QUESTION_CHARS:
        raise ApiError(
            422, "invalid_request", f"the question may hold at most {MAX_QUESTION_CHARS} characters"
        )
    turns = [Message(m.role, m.text()) for m in messages[:-1] if m.role in ("user", "assistant")]
    return messages[-1].text(), turns


def _role(role: str) -> Literal["system", "user", "assistant", "observation"]:
    return {"developer": "system", "tool": "observation"}.get(role, role)  # type: ignore[return-value]


def _llm_name(request: Request) -> str | None:
    """Return the bare LLM's model id, or None with the extractive backend (no LLM)."""
    llm = request.app.state.settings.llm
    if llm.backend == "extractive":
        return None
    return Path(llm.model).name if Path(llm.model).is_dir() else llm.model
