"""What every chat model takes and returns: messages, generation parameters, results and streams."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "observation"]
FinishReason = Literal["stop", "length"]

# The adapter name that asks for the base model with every adapter disabled.
BASE_MODEL = "base"


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: Role
    content: str


class GenerationParams(BaseModel):
    """How to generate one reply; the `llm.generation` settings are the defaults of every request."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    max_new_tokens: int = Field(512, ge=1, le=32768, description="Most tokens to generate.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 decodes greedily.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling: keep tokens up to this mass.")
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0, description="Above 1 discourages repeats.")
    stop: list[str] = Field(
        default_factory=list,
        description="Strings that end the reply (not included in it), on top of the chat template's own.",
    )
    stop_token_ids: list[int] = Field(
        default_factory=list, description="Token ids that end the reply, on top of EOS and the template's."
    )
    seed: int | None = Field(None, description="Random seed for sampling, for reproducible replies.")
    adapter: str | None = Field(
        None,
        description=f"LoRA adapter by name (from `llm.adapters`); `{BASE_MODEL}` disables adapters; "
        "None uses `llm.default_adapter`.",
    )


@dataclass(frozen=True)
class Usage:
    """Token counts of one generation."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        """Return prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Generation:
    """A whole reply: its text, why it ended, and its token counts."""

    text: str
    finish_reason: FinishReason
    usage: Usage


Result = TypeVar("Result")


class DeltaStream(Iterator[str], Generic[Result]):
    """Text deltas as they are produced; `result` holds what they add up to once the stream is exhausted.

    Closing the stream early (the client went away) stops the work behind it.
    """

    def __init__(self, deltas: Generator[str, None, Result]) -> None:
        self.deltas = deltas
        self.result: Result | None = None

    def __next__(self) -> str:
        """Return the next text delta."""
        try:
            return next(self.deltas)
        except StopIteration as stop:
            self.result = stop.value
            raise

    def close(self) -> None:
        """Stop the work; no more deltas follow."""
        self.deltas.close()

    def read(self) -> Result:
        """Return the result, consuming what is left of the stream."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


class TextStream(DeltaStream[Generation]):
    """A model's reply as text deltas; `generation` holds the whole reply once exhausted."""

    @property
    def generation(self) -> Generation | None:
        """Return the whole reply, once the stream is exhausted."""
        return self.result


class ChatModel(Protocol):
    """A model that continues a conversation: local transformers or an OpenAI-compatible server."""

    name: str
    context_window: int  # prompt plus reply, in tokens

    def count_tokens(self, text: str) -> int:
        """Return how many tokens `text` takes inside a prompt."""
        ...

    def count_prompt_tokens(self, messages: list[Message]) -> int:
        """Return how many tokens the rendered conversation takes, generation prompt included."""
        ...

    def generate(self, messages: list[Message], params: GenerationParams) -> Generation:
        """Return the model's reply to `messages`."""
        ...

    def stream(self, messages: list[Message], params: GenerationParams) -> TextStream:
        """Return the model's reply to `messages` as a stream of text deltas."""
        ...

    def close(self) -> None:
        """Release the model's resources."""
        ...
