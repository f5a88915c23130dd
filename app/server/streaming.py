"""The one loop that relays a generation to a client (the `/chat` events and OpenAI's chunks), and the
one that reads it whole while watching for the client to leave."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable

import anyio
from fastapi import Request

from app.server.errors import ApiError, describe, error_body
from llm import Answer, AnswerStream, Generation, TextStream


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


async def relay(
    stream: AnswerStream | TextStream,
    first: Callable[[], Iterable[str]],
    delta: Callable[[str], str],
    last: Callable[[], Iterable[str]],
    failed: Callable[[dict], str],
) -> AsyncIterator[str]:
    """Yield the frames of `first()`, one `delta(text)` per piece of text the stream makes (read in a worker
    thread, never on the event loop), then those of `last()`; an error after the headers travels as
    `failed(error body)`. The stream is closed in the end, also when the client goes away."""
    try:
        for frame in first():
            yield frame
        while (text := await anyio.to_thread.run_sync(next, stream, None)) is not None:
            yield delta(text)
        for frame in last():
            yield frame
    except Exception as error:  # after the headers: the error travels in the stream
        _, code, message = describe(error)
        yield failed(error_body(code, message))
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(stream.close)
