"""ChatGLM3's `response, history = model.chat(tokenizer, query, history)` on kbqa's chat models.

The ChatGLM3 seed's predict.py calls `model.chat`, which only THUDM's own modelling code has; kbqa converts
ChatGLM3 to transformers' GLM, so a merged (or quantised) kbqa model answers the same call through
`chat` here, laid out by the model's chat template. History is ChatGLM3's list of `{"role", "content"}`
turns, or ChatGLM2's `[query, response]` pairs.
"""

from __future__ import annotations

import json
from typing import Any

from finetune.errors import FinetuneError
from llm.types import GenerationParams, Message

MAX_QUERY_CHARS = 8000  # as a chat question of the service
MAX_HISTORY_TURNS = 50
ROLES = ("system", "user", "assistant", "observation")


def read_history(text: str) -> list[Message]:
    """Return the turns of a JSON history (ChatGLM3's role/content dicts or ChatGLM2's pairs); FinetuneError if bad."""
    try:
        raw = json.loads(text)
    except ValueError as error:
        raise FinetuneError(f"--history is not JSON: {error}") from error
    if not isinstance(raw, list):
        raise FinetuneError(
            '--history must be a JSON list of {"role", "content"} turns or [query, response] pairs'
        )
    turns: list[Message] = []
    for index, item in enumerate(raw):
        if isinstance(item, dict) and item.get("role") in ROLES and isinstance(item.get("content"), str):
            turns.append(Message(item["role"], item["content"]))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(t, str) for t in item):
            turns += [Message("user", item[0]), Message("assistant", item[1])]
        else:
            raise FinetuneError(
                f'--history turn {index}: expected {{"role": one of {", ".join(ROLES)}, "content": text}} '
                "or a [query, response] pair"
            )
    if len(turns) > MAX_HISTORY_TURNS:
        raise FinetuneError(f"--history may hold at most {MAX_HISTORY_TURNS} turns, not {len(turns)}")
    return turns


def chat(
    model: Any, query: str, history: list[Message], params: GenerationParams
) -> tuple[str, list[Message]]:
    """Return (the reply to `query` after `history`, the history with both turns added), as `model.chat` does."""
    if not query.strip():
        raise FinetuneError("the query is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise FinetuneError(f"a query may hold at most {MAX_QUERY_CHARS} characters, not {len(query)}")
    asked = [*history, Message("user", query)]
    response = model.generate(asked, params).text
    return response, [*asked, Message("assistant", response)]
