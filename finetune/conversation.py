"""The one form every fine-tuning data format is read into, and written back out from."""

from __future__ import annotations

from dataclasses import dataclass

from llm.types import Message


@dataclass(frozen=True)
class Conversation:
    """A supervised example: an optional system message, then turns that end with the assistant's reply.

    Roles follow llm.types.Message: system, user, assistant, observation (a tool's result). A function
    call the assistant makes is an assistant message whose content is the call.
    """

    messages: tuple[Message, ...]
    source: str = ""  # where it was read from, e.g. "data/train.json#12", for error messages
    tools: str = ""  # the tools the assistant may call, as JSON (a list of function descriptions)
    calls: tuple[int, ...] = ()  # indices of the assistant messages that are function calls


@dataclass(frozen=True)
class Preference:
    """A preference example (for DPO later): a prompt ending with the user's turn, a better and a worse reply."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    source: str = ""
