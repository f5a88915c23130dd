"""Errors of the llm package; each message says what went wrong in words a user can act on."""

from __future__ import annotations


class LLMError(Exception):
    """Base of every error raised by the llm package."""


class ModelLoadError(LLMError):
    """The configured model, tokenizer or adapter cannot be loaded."""


class ModelBusy(LLMError):
    """The generation queue is full; try again later (HTTP 429/503)."""


class ModelUnavailable(LLMError):
    """The model server cannot be reached or keeps failing (HTTP 502/503)."""


class UnknownAdapter(LLMError):
    """A request named an adapter that is not configured."""


class PromptTooLong(LLMError):
    """Even the system text and the question alone do not fit the model's context window."""
