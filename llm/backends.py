"""The chat model the `llm` settings choose."""

from __future__ import annotations

from llm.config import LLMConfig
from llm.types import ChatModel


def load_chat_model(config: LLMConfig) -> ChatModel:
    """Return the configured chat model, loaded (transformers) or connected lazily (openai).

    The `extractive` backend has no chat model; asking for one is a ValueError.
    """
    if config.backend == "transformers":
        from llm.transformers_backend import TransformersChatModel

        return TransformersChatModel(config)
    if config.backend == "openai":
        from llm.openai_backend import OpenAIChatModel

        return OpenAIChatModel(config.openai, config.model)
    raise ValueError(f"the {config.backend!r} backend has no chat model")
