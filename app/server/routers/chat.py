"""Answer questions from a knowledge base: JSON, or server-sent events as the answer is generated."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.server.dependencies import knowledge, require_key
from app.server.errors import ApiError, describe, error_body
from app.server.metrics import Metrics
from app.server.schemas import AnswerOut, ChatRequest
from app.services import KnowledgeService
from llm import Answer, AnswerOptions, AnswerStream, Generation, TextStream

router = APIRouter(prefix="/v1/kbs/{kb}", tags=["chat"], dependencies=[Depends(require_key)])

_STREAM_DOC = {
    200: {
        "description": "With `stream: true`, `text/event-stream` events: `citations` (the chunks the answer "
        'may cite), then `delta` events (`{"text": …}`), then `done` (the whole answer, as without '
        'streaming); or an `error` event (`{"error": {code, message}}`).',
        "content": {"text/event-stream": {}},
    }
}


def answer_out(answer: Answer) -> AnswerOut:
    """Return the API view of an answer."""
    body = asdict(answer)
    body["answer"] = body.pop("text")
    body["usage"]["total_tokens"] = answer.usage.total_tokens
    return AnswerOut.model_validate(body)


async def open_answer(service: KnowledgeService, kb: str, body: ChatRequest) -> AnswerStream:
    """Return the answer stream of a chat request; retrieval and the prompt are done (errors raise here)."""
    options = AnswerOptions(
        retrieval=body.retrieval, generation=service.generation_params(**body.generation.model_dump())
    )
    history = [turn.message() for turn in body.history]
    return await run_in_threadpool(service.ask, kb, body.question, history, options)


@router.post("/chat", summary="Ask a question", responses=_STREAM_DOC)
async def chat(
    kb: str, body: ChatRequest, request: Request, service: KnowledgeService = Depends(knowledge)
) -> AnswerOut:
    """Answer from the knowledge base with citations, token counts and timings."""
    stream = await open_answer(service, kb, body)
    metrics = request.app.state.metrics
    if not body.stream:
        answer = await read_unless_gone(request, stream)
        metrics.generated_tokens.inc(answer.usage.completion_tokens)
        return answer_out(answer)

    return StreamingResponse(sse(stream, metrics), media_type="text/event-stream")


async def read_unless_gone(request: Request, stream: AnswerStream | TextStream) -> Answer | Generation:
    """Return what `stream` adds up to; stop its work (and raise) when the client goes away meanwhile."""
    try:
        while await anyio.to_thread.run_sync(next, stream, None) is not None:
            if await request.is_disconnected():
                raise ApiError(499, "client_closed_request", "the client went away; the work was stopped")
    finally:
        if stream.result is None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stream.close)
    return stream.result


async def sse(stream: AnswerStream, metrics: Metrics) -> AsyncIterator[str]:
    """Yield the answer as server-sent events; closing the stream when the client goes away."""
    try:
        yield event("citations", {"citations": [asdict(c) for c in stream.sources]})
        while (delta := await anyio.to_thread.run_sync(next, stream, None)) is not None:
            yield event("delta", {"text": delta})
        metrics.generated_tokens.inc(stream.answer.usage.completion_tokens)
        yield event("done", answer_out(stream.answer).model_dump())
    except Exception as error:  # after the headers: the error travels as an event
        _, code, message = describe(error)
        yield event("error", error_body(code, message))
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(stream.close)


def event(name: str, data: dict) -> str:
    """Return one server-sent event."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
