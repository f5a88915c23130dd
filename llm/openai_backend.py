"""The `openai` backend: a chat model behind an OpenAI-compatible server, usually vLLM.

vLLM serves each LoRA adapter as one more model name (`--lora-modules name=path`), so a request's
adapter is the model name it asks for. The client retries connection errors, 429 and 5xx replies itself
(`max_retries`, exponential backoff); what still fails becomes one of the llm package's errors.

With several replicas (`base_urls`), requests go round-robin over the healthy ones (llm/replicas.py) and
the client does not retry: a replica that cannot be reached, times out or replies 5xx is skipped for
`unhealthy_cooldown_s` and the request goes to the next one; a 429 goes to the next one too, without the
cooldown. A stream fails over only while it has yielded no text, so no text is ever sent twice.

Token counts are exact when `tokenizer` names the served model's tokenizer. Without it they are a
conservative estimate, so a prompt fitted with them does not overflow the server's context window:
one token per CJK character (the Chinese tokenizers of ChatGLM and Qwen take fewer), one per three other
characters (BPE vocabularies average about four for English), and a few per message for the chat
template's role markers.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from llm.config import OpenAIConfig
from llm.errors import LLMError, ModelBusy, ModelLoadError, ModelUnavailable
from llm.replicas import Attempt, Replica, ReplicaSet
from llm.types import (
    BASE_MODEL,
    FinishReason,
    Generation,
    GenerationParams,
    Message,
    Role,
    TextStream,
    Usage,
)
from retrieval.text_rules import EAST_ASIAN

# vLLM hands the messages to the served model's Jinja chat template; most templates, and the OpenAI API
# itself, accept a `tool` message only as the answer to an assistant `tool_calls` entry named by its
# `tool_call_id`, which our observations lack. Every template accepts them as a user turn.
_WIRE_ROLES: dict[Role, Role] = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "observation": "user",
}

# East Asian characters (ideographs, kana, Hangul, and the punctuation Chinese text is written with).
_CJK = re.compile(f"[{EAST_ASIAN}]")
_OTHER_CHARS_PER_TOKEN = 3
_TOKENS_PER_MESSAGE = 4  # role markers and separators around each message
_TOKENS_PER_REPLY_PROMPT = 3  # the template's prefix and the assistant header that opens the reply

R = TypeVar("R")


class OpenAIChatModel:
    """A chat model served over the OpenAI chat-completions API; adapters are extra served model names."""

    def __init__(self, config: OpenAIConfig, model: str) -> None:
        from openai import OpenAI

        self.name = config.model or model
        self.context_window = config.context_window
        self._config = config
        urls = config.base_urls or [config.base_url]
        # With several replicas a failing one is left for the next at once; retrying it would only delay.
        self._retries = config.max_retries if len(urls) == 1 else 0
        clients = [
            OpenAI(base_url=url, api_key=config.api_key, timeout=config.timeout_s, max_retries=self._retries)
            for url in urls
        ]
        self._replicas: ReplicaSet[Any] = ReplicaSet(
            [Replica(url, client) for url, client in zip(urls, clients, strict=True)],
            config.unhealthy_cooldown_s,
        )
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        """Return how many tokens `text` takes inside a prompt (exact with a tokenizer, else an estimate)."""
        tokenizer = self._load_tokenizer()
        if tokenizer is None:
            return estimate_tokens(text)
        return len(tokenizer.encode(text, add_special_tokens=False))

    def count_prompt_tokens(self, messages: list[Message]) -> int:
        """Return how many tokens the rendered conversation takes, generation prompt included."""
        tokenizer = self._load_tokenizer()
        wire = [Message(_WIRE_ROLES[m.role], m.content) for m in messages]
        if tokenizer is None:
            return estimate_prompt_tokens(wire)
        from llm.templates import template_for

        return len(template_for("auto", tokenizer).encode_prompt(tokenizer, wire))

    def generate(self, messages: list[Message], params: GenerationParams) -> Generation:
        """Return the server's reply to `messages` (from the first replica that answers)."""
        request = self._request(messages, params)
        _, response = self._first_answer(
            _Failover(self._replicas, self._check), lambda client: client.chat.completions.create(**request)
        )
        choice = response.choices[0]
        text = choice.message.content or ""
        return Generation(
            text, _finish_reason(choice.finish_reason), self._usage(response.usage, messages, text)
        )

    def stream(self, messages: list[Message], params: GenerationParams) -> TextStream:
        """Return the server's reply to `messages` as a stream of text deltas.

        The request is sent before this returns, so an unreachable or failing server raises here, before
        any delta; closing the stream drops the connection, which makes vLLM abort the generation. A
        replica that fails before the first delta is left for the next one.
        """
        deltas = self._deltas(messages, params)
        next(deltas)  # runs up to the priming `yield ""`: the request is sent and its errors raised
        return TextStream(deltas)

    def close(self) -> None:
        """Close every replica's connections."""
        for replica in self._replicas.replicas:
            replica.client.close()

    def _deltas(self, messages: list[Message], params: GenerationParams) -> Generator[str, None, Generation]:
        request = self._request(messages, params)
        failover = _Failover(self._replicas, self._check)

        def send(client: Any) -> Any:
            return client.chat.completions.create(
                **request, stream=True, stream_options={"include_usage": True}
            )

        replica, chunks = self._first_answer(failover, send)
        parts: list[str] = []
        finish_reason: str | None = None
        usage: Any = None
        try:
            # The priming yield is inside the try so that closing the stream before its first delta still
            # closes the response; a generator closed before it starts never runs its finally.
            yield ""
            while True:
                try:
                    with self._translated_errors(replica.url):
                        for chunk in chunks:
                            usage = chunk.usage or usage
                            for choice in chunk.choices:
                                finish_reason = choice.finish_reason or finish_reason
                                if choice.delta.content:
                                    parts.append(choice.delta.content)
                                    yield choice.delta.content
                    break
                except (ModelUnavailable, ModelBusy) as error:
                    failover.failed(replica, error)
                    if parts:  # the reader has text from this replica; another would repeat it
                        raise
                    chunks.close()
                    finish_reason, usage = None, None
                    replica, chunks = self._first_answer(failover, send)
        finally:
            chunks.close()
        text = "".join(parts)
        return Generation(text, _finish_reason(finish_reason), self._usage(usage, messages, text))

    def _request(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.name if params.adapter in (None, BASE_MODEL) else params.adapter,
            "messages": [{"role": _WIRE_ROLES[m.role], "content": m.content} for m in messages],
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            request["stop"] = params.stop
        if params.seed is not None:
            request["seed"] = params.seed
        # vLLM's sampling parameters beyond the OpenAI schema; sent only when set, so that other
        # OpenAI-compatible servers, which may reject unknown fields, still work with the defaults.
        extra: dict[str, Any] = {}
        if params.stop_token_ids:
            extra["stop_token_ids"] = params.stop_token_ids
        if params.repetition_penalty != 1.0:
            extra["repetition_penalty"] = params.repetition_penalty
        if extra:
            request["extra_body"] = extra
        return request

    def _usage(self, usage: Any, messages: list[Message], text: str) -> Usage:
        if usage is not None:
            return Usage(usage.prompt_tokens, usage.completion_tokens)
        return Usage(self.count_prompt_tokens(messages), self.count_tokens(text))

    def _load_tokenizer(self) -> Any:
        if self._config.tokenizer is None:
            return None
        with self._tokenizer_lock:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                try:
                    self._tokenizer = AutoTokenizer.from_pretrained(self._config.tokenizer)
                except (OSError, ValueError) as error:
                    raise ModelLoadError(
                        f"cannot load the tokenizer {self._config.tokenizer!r} of the served model: {error}"
                    ) from error
            return self._tokenizer

    def _first_answer(self, failover: _Failover, send: Callable[[Any], R]) -> tuple[Replica[Any], R]:
        """Return the first replica whose client `send` succeeds with, and what it returned."""
        while True:
            replica = failover.next()
            try:
                with self._translated_errors(replica.url):
                    answer = send(replica.client)
            except (ModelUnavailable, ModelBusy) as error:
                failover.failed(replica, error)
                continue
            self._replicas.succeeded(replica)
            return replica, answer

    def _check(self, replica: Replica[Any]) -> ModelUnavailable | None:
        """Return why `replica` failed its health check (`GET /models`), or None when it passed or is off."""
        timeout_s = self._config.health_check_timeout_s
        if not timeout_s:
            return None
        try:
            with self._translated_errors(replica.url, timeout_s):
                replica.client.with_options(timeout=timeout_s, max_retries=0).models.list()
        except ModelUnavailable as error:
            return error
        except LLMError:
            return None  # any other reply (a 404 from a server without /models, a 401) shows it is up
        return None

    @contextmanager
    def _translated_errors(self, url: str, timeout_s: float | None = None) -> Iterator[None]:
        import openai

        try:
            yield
        except openai.APIConnectionError as error:  # refused, DNS, reset, and timeouts (a subclass)
            cause = (
                f"no reply within {timeout_s or self._config.timeout_s:g} s"
                if isinstance(error, openai.APITimeoutError)
                else _root_cause(error)
            )
            raise ModelUnavailable(
                f"cannot reach the model server at {url} ({cause}); is vLLM running?"
            ) from error
        except openai.RateLimitError as error:
            raise ModelBusy(
                f"the model server at {url} is busy (HTTP 429: {_server_message(error)}); try again later"
            ) from error
        except openai.APIStatusError as error:
            message = f"HTTP {error.status_code}: {_server_message(error)}"
            if error.status_code >= 500:
                raise ModelUnavailable(
                    f"the model server at {url} keeps failing ({message}, after {self._retries} retries)"
                ) from error
            raise LLMError(f"the model server at {url} refused the request ({message})") from error
        except openai.OpenAIError as error:  # an error event inside a stream, or a malformed reply
            raise LLMError(f"the model server at {url} failed: {error}") from error


class _Failover:
    """One request's way through the replicas: which to try next, and why those tried so far failed."""

    def __init__(
        self, replicas: ReplicaSet[Any], check: Callable[[Replica[Any]], ModelUnavailable | None]
    ) -> None:
        self._replicas = replicas
        self._check = check
        self._plan: Iterator[Attempt[Any]] = iter(replicas.plan())
        self._errors: list[LLMError] = []

    def next(self) -> Replica[Any]:
        """Return the next replica to send the request to; raise the failures when none is left."""
        for attempt in self._plan:
            error = self._check(attempt.replica) if attempt.check else None
            if error is None:
                return attempt.replica
            self.failed(attempt.replica, error)
        if len(self._replicas.replicas) == 1:
            raise self._errors[0]
        reasons = "; ".join(str(error) for error in self._errors)
        summary = f"none of the {len(self._replicas.replicas)} model servers answered: {reasons}"
        if all(isinstance(error, ModelBusy) for error in self._errors):
            raise ModelBusy(summary)
        raise ModelUnavailable(summary)

    def failed(self, replica: Replica[Any], error: ModelUnavailable | ModelBusy) -> None:
        """Record why `replica` failed this request; one that is down, not just busy, cools down."""
        self._errors.append(error)
        if isinstance(error, ModelUnavailable):
            self._replicas.failed(replica)


def estimate_tokens(text: str) -> int:
    """Return a conservative token count of `text`: one per CJK character, one per 3 other characters."""
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / _OTHER_CHARS_PER_TOKEN)


def estimate_prompt_tokens(messages: list[Message]) -> int:
    """Return a conservative token count of `messages` rendered by a chat template, reply prompt included."""
    content = sum(estimate_tokens(m.content) for m in messages)
    return content + _TOKENS_PER_MESSAGE * len(messages) + _TOKENS_PER_REPLY_PROMPT


def _finish_reason(reason: str | None) -> FinishReason:
    # vLLM also says "abort"; tool calls and content filters are not ours; all of them ended early.
    return "length" if reason == "length" else "stop"


def _server_message(error: Any) -> str:
    body = error.body  # the client has already unwrapped an {"error": {...}} envelope
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return str(body) if body else error.message


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error) or type(error).__name__
