"""The OpenAI-compatible face: models, chat completions and embeddings, for the official clients.

A model id is a knowledge-base name (the answer comes from it, with the extra fields `citations`,
`refused`, `answerability`, `closest`, `searched_question` and `spans`, as in `/v1/kbs/{kb}/chat`), or the bare LLM's name (plain chat, no knowledge base). A request may also name the knowledge
base in an extra `kb` field, and an adapter as `<model>:<adapter>` or in an extra `adapter` field. Which one answers is `ModelRouter`'s to say; this module only speaks the wire format.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.keys import Caller
from app.model_routing import ModelNotFound, ModelRouter
from app.request_limits import MAX_EMBEDDING_INPUTS, MAX_QUESTION_CHARS
from app.server.dependencies import AnyCaller, Authenticated, Service, bearer, deny, loaded
from app.server.errors import ApiError
from app.server.metrics import Metrics
from app.server.openai_schemas import ChatCompletionRequest, ChatMessage, EmbeddingsRequest
from app.server.routers.chat import answer_out
from app.server.schemas import check_history_chars
from app.server.streaming import read_unless_gone, relay
from app.services import KnowledgeService
from llm import AnswerOptions, Message, TextStream
from retrieval import SearchOptions

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(bearer), Depends(loaded)])


def _may_use(service: KnowledgeService, who: Caller, model_id: str, method: str) -> bool:
    """Return whether `who` may use a model id: a knowledge base's (with or without an adapter) when it
    reads that knowledge base, the bare LLM's when it bears a key."""
    base = model_id.split(":", 1)[0]
    if service.exists(model_id) or service.exists(base):
        return who.reads(model_id if service.exists(model_id) else base, method)
    return who.authenticated or who.open_reads


@router.get("/models", summary="List models (OpenAI)")
def list_models(request: Request, service: Service, who: AnyCaller) -> dict:
    """Return one model per knowledge base the key may read, plus the bare LLM when one is configured, each
    also with every adapter (`<base>:<adapter>`, its `parent` the base id, as vLLM lists LoRA modules)."""
    if not (who.authenticated or who.open_reads):
        raise deny(who, "a key is required")
    created = int(time.time())
    cards = [
        (i, parent)
        for i, parent in ModelRouter(service).model_cards()
        if _may_use(service, who, parent or i, request.method)
    ]
    return {
        "object": "list",
        "data": [
            {"id": i, "object": "model", "created": created, "owned_by": "kbqa"}
            | ({"parent": parent} if parent else {})
            for i, parent in cards
        ],
    }


@router.post("/chat/completions", summary="Chat completions (OpenAI)")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, service: Service, who: Authenticated
) -> Any:
    """Answer the last user message from the knowledge base named by `model` (or `kb`), from the documents
    the key may read, or chat plainly with the bare LLM."""
    try:
        route = ModelRouter(service).route(body.model, body.kb, body.adapter)
    except ModelNotFound:
        if who.is_admin:
            raise
        # Without the list of every model, which would name knowledge bases this key may not read.
        raise ModelNotFound(
            f"no model or knowledge base named '{body.model}' (GET /v1/models lists yours)"
        ) from None
    if route.kb is not None and not who.reads(route.kb, request.method):
        raise deny(who, f"this key may not read knowledge base '{route.kb}'")
    params = service.generation_params(
        adapter=route.adapter,
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=[body.stop] if isinstance(body.stop, str) else body.stop,
        seed=body.seed,
    )
    kb = route.kb
    completion = _Completion(body.model, request.app.state.metrics)
    if kb is not None:
        question, history = _question(body.messages)
        retrieval = (body.retrieval or SearchOptions()).within_groups(who.groups_in(kb))
        options = AnswerOptions(retrieval=retrieval, generation=params)
        answer_stream = await run_in_threadpool(service.ask, kb, question, history, options)
        if not body.stream:
            answer = await read_unless_gone(request, answer_stream)
            out = answer_out(answer).model_dump()
            return completion.whole(answer.text, answer.finish_reason, out["usage"], **_kb_extras(out))
        return _sse(completion, answer_stream, body, lambda: answer_out(answer_stream.answer).model_dump())
    messages = [Message(_role(m.role), m.text()) for m in body.messages]
    if not body.stream:
        generation = await read_unless_gone(request, await run_in_threadpool(service.chat, messages, params))
        usage = {**asdict(generation.usage), "total_tokens": generation.usage.total_tokens}
        return completion.whole(generation.text, generation.finish_reason, usage)
    text_stream = await run_in_threadpool(service.chat, messages, params)
    return _sse(completion, text_stream, body, lambda: _generation_summary(text_stream))


@router.post("/embeddings", summary="Embeddings (OpenAI)")
async def embeddings(body: EmbeddingsRequest, request: Request, service: Service, who: Authenticated) -> dict:
    """Return the configured embedding model's passage vectors (L2-normalised) for the input texts."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or len(texts) > MAX_EMBEDDING_INPUTS:
        raise ApiError(422, "invalid_request", f"input must hold 1 to {MAX_EMBEDDING_INPUTS} texts")
    vectors = []
    # A few texts at a time, so the work stops soon after the client goes away.
    for start in range(0, len(texts), _EMBED_STEP):
        if await request.is_disconnected():
            raise ApiError(499, "client_closed_request", "the client went away; the work was stopped")
        vectors.extend(await run_in_threadpool(service.embed_documents, texts[start : start + _EMBED_STEP]))
    # In a worker thread: counting waits for an engine handle, which must never hold up the event loop.
    tokens = await run_in_threadpool(service.count_tokens, texts)
    return {
        "object": "list",
        "model": service.embedding_model,
        "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


_EMBED_STEP = 4


def _kb_extras(answer: dict) -> dict:
    """Return the kbqa fields a knowledge-base answer adds to an OpenAI response."""
    extras = {
        key: answer[key] for key in ("citations", "refused", "answerability", "closest", "searched_question")
    }
    extras["spans"] = answer["spans"]  # the answering words, offsets into the message content
    return extras


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

    def finish() -> list[str]:
        done = summary()
        completion.metrics.generated_tokens.inc(done["usage"]["completion_tokens"])
        extra = _kb_extras(done) if "citations" in done else {}
        frames = [completion.chunk({}, done["finish_reason"], **extra)]
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
            frames.append(f"data: {json.dumps(body_usage)}\n\n")
        return frames

    async def chunks() -> AsyncIterator[str]:
        async for frame in relay(
            stream,
            first=lambda: [completion.chunk({"role": "assistant", "content": ""})],
            delta=lambda text: completion.chunk({"content": text}),
            last=finish,
            failed=lambda error: f"data: {json.dumps(error, ensure_ascii=False)}\n\n",
        ):
            yield frame
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
    try:
        check_history_chars(turn.content for turn in turns)
    except ValueError as error:
        raise ApiError(422, "invalid_request", str(error)) from None
    return messages[-1].text(), turns


def _role(role: str) -> Literal["system", "user", "assistant", "observation"]:
    return {"developer": "system", "tool": "observation"}.get(role, role)  # type: ignore[return-value]
