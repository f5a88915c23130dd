"""Answer questions from a knowledge base: JSON, or server-sent events as the answer is generated."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.server.dependencies import Reader, Service, bearer, loaded
from app.server.metrics import Metrics
from app.server.schemas import AnswerOut, ChatRequest
from app.server.streaming import read_unless_gone, relay
from app.services import KnowledgeService
from llm import Answer, AnswerOptions, AnswerStream

router = APIRouter(prefix="/v1/kbs/{kb}", tags=["chat"], dependencies=[Depends(bearer), Depends(loaded)])

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


async def open_answer(
    service: KnowledgeService, kb: str, body: ChatRequest, groups: frozenset[str] | None = None
) -> AnswerStream:
    """Return the answer stream of a chat request, from the documents a caller limited to `groups` may read;
    retrieval and the prompt are done (errors raise here)."""
    options = AnswerOptions(
        retrieval=body.retrieval.within_groups(groups),
        generation=service.generation_params(**body.generation.model_dump()),
    )
    history = [turn.message() for turn in body.history]
    return await run_in_threadpool(service.ask, kb, body.question, history, options)


@router.post("/chat", summary="Ask a question", responses=_STREAM_DOC)
async def chat(
    kb: str,
    body: ChatRequest,
    request: Request,
    service: Service,
    who: Reader,
) -> AnswerOut:
    """Answer from the knowledge base with citations, token counts and timings, from the documents the key
    may read."""
    stream = await open_answer(service, kb, body, who.groups_in(kb))
    metrics = request.app.state.metrics
    if not body.stream:
        answer = await read_unless_gone(request, stream)
        metrics.generated_tokens.inc(answer.usage.completion_tokens)
        return answer_out(answer)

    return StreamingResponse(sse(stream, metrics), media_type="text/event-stream")


def sse(stream: AnswerStream, metrics: Metrics) -> AsyncIterator[str]:
    """Return the answer as server-sent events: citations, deltas, then done (or an error event)."""

    def done() -> list[str]:
        metrics.generated_tokens.inc(stream.answer.usage.completion_tokens)
        return [event("done", answer_out(stream.answer).model_dump())]

    return relay(
        stream,
        first=lambda: [event("citations", {"citations": [asdict(c) for c in stream.sources]})],
        delta=lambda text: event("delta", {"text": text}),
        last=done,
        failed=lambda body: event("error", body),
    )


def event(name: str, data: dict) -> str:
    """Return one server-sent event."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
