"""A minimal OpenAI-schema chat server for tests, run under real uvicorn in a background thread.

Replies are deterministic: `<model> heard: <last user message>`, split into fake tokens one word (with
its trailing space) each, so tests can tell which model or adapter answered and count tokens. `stop` and
`max_tokens` are honoured on those tokens. `Controls` injects failures, delays and records what the
server saw: request bodies, and how many deltas each stream had sent when its client went away; `replies`
scripts the next replies instead of the echo.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

CONTEXT_WINDOW = 4096


@dataclass
class Controls:
    """What the server does next and what it has seen; tests set and read these between requests."""

    models: tuple[str, ...] = ("served-model", "zh-lora")
    fail_next: int = 0  # the next N requests get `fail_status`
    fail_status: int = 500
    delay_s: float = 0.0  # before answering anything
    delta_delay_s: float = 0.0  # before each streamed delta
    send_usage: bool = True  # the final usage chunk of a stream, when the client asks for it
    replies: list[str] = field(default_factory=list)  # scripted replies, in order, instead of the echo
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnects: list[int] = field(default_factory=list)  # deltas sent before each client went away


def fake_tokens(text: str) -> list[str]:
    """Return `text` split into words with their trailing whitespace; they concatenate back to `text`."""
    return re.findall(r"\S+\s*|\s+", text)


def reply_tokens(body: dict[str, Any]) -> tuple[list[str], str]:
    """Return the tokens of the reply to a request body and its finish reason, honouring stop and max_tokens."""
    last_user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    text = f"{body['model']} heard: {last_user}"
    finish_reason = "stop"
    stops = [text.find(stop) for stop in body.get("stop") or [] if stop in text]
    if stops:
        text = text[: min(stops)]
    tokens = fake_tokens(text)
    if len(tokens) > body["max_tokens"]:
        tokens, finish_reason = tokens[: body["max_tokens"]], "length"
    return tokens, finish_reason


class FakeOpenAIServer:
    """The server on a free local port; `controls` may be replaced between tests."""

    def __init__(self) -> None:
        self.controls = Controls()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve in a background thread; return once the port accepts connections."""
        # The bound socket is handed to uvicorn, so no other process can take the port in between.
        config = uvicorn.Config(self._app(), log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.01)
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()

    def stop(self) -> None:
        """Shut uvicorn down and wait for its thread."""
        self._server.should_exit = True
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._socket.close()

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Any:
            controls = self.controls
            body = await request.json()
            controls.requests.append(body)
            if controls.delay_s:
                await asyncio.sleep(controls.delay_s)
            if controls.fail_next > 0:
                controls.fail_next -= 1
                # A short Retry-After keeps the client's retries (and the tests) fast.
                return _error(controls.fail_status, "injected failure", {"retry-after-ms": "10"})
            if body["model"] not in controls.models:
                return _error(404, f"The model `{body['model']}` does not exist.")
            if body["max_tokens"] > CONTEXT_WINDOW:
                return _error(
                    400,
                    f"This model's maximum context length is {CONTEXT_WINDOW} tokens. However, you "
                    f"requested {body['max_tokens']} tokens in the completion.",
                )
            tokens, finish_reason = reply_tokens(body)
            if controls.replies:
                tokens, finish_reason = fake_tokens(controls.replies.pop(0)), "stop"
            usage = {
                "prompt_tokens": sum(len(fake_tokens(m["content"])) for m in body["messages"]),
                "completion_tokens": len(tokens),
            }
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            if body.get("stream"):
                include_usage = (body.get("stream_options") or {}).get("include_usage", False)
                events = _events(
                    controls, body["model"], tokens, finish_reason, usage if include_usage else None
                )
                return StreamingResponse(events, media_type="text/event-stream")
            message = {"role": "assistant", "content": "".join(tokens)}
            choice = {"index": 0, "message": message, "finish_reason": finish_reason}
            return JSONResponse(_completion("chat.completion", body["model"], [choice], usage))

        return app


async def _events(
    controls: Controls, model: str, tokens: list[str], finish_reason: str, usage: dict[str, int] | None
) -> AsyncIterator[str]:
    sent = 0
    finished = False
    try:
        yield _sse(
            _completion("chat.completion.chunk", model, [_delta({"role": "assistant", "content": ""})])
        )
        for token in tokens:
            if controls.delta_delay_s:
                await asyncio.sleep(controls.delta_delay_s)
            yield _sse(_completion("chat.completion.chunk", model, [_delta({"content": token})]))
            sent += 1
        yield _sse(_completion("chat.completion.chunk", model, [_delta({}, finish_reason)]))
        if usage is not None and controls.send_usage:
            yield _sse(_completion("chat.completion.chunk", model, [], usage))
        yield "data: [DONE]\n\n"
        finished = True
    finally:
        # Starlette cancels the generator when the client disconnects, as vLLM aborts the request.
        if not finished:
            controls.disconnects.append(sent)


def _completion(
    kind: str, model: str, choices: list[dict[str, Any]], usage: dict[str, int] | None = None
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": kind,
        "created": 0,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def _delta(delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": finish_reason}


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    error = {"message": message, "type": "TestServerError", "param": None, "code": status}
    return JSONResponse({"error": error}, status_code=status, headers=headers)
