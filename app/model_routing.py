"""Which model answers an OpenAI-style request: a knowledge base named as the model, or the bare LLM,
each with or without one of the configured LoRA adapters.

As vLLM serves each adapter as one more model id, every base id (a knowledge base, the bare LLM) is offered
once more per adapter as `<base>:<adapter>` (`hr:finance`, `qwen2:finance`); a request may instead name the
adapter in the extra `adapter` field (`base` for none). An adapter the service does not carry is an error,
never the base model's reply in its place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.services import KnowledgeService
from llm import UnknownAdapter
from llm.types import BASE_MODEL

ADAPTER_SEPARATOR = ":"


class ModelNotFound(ValueError):
    """A request names neither a knowledge base nor the bare LLM."""


@dataclass(frozen=True)
class Route:
    """Who answers a request: a knowledge base (None: the bare LLM), with an adapter (None: the default)."""

    kb: str | None
    adapter: str | None


class ModelRouter:
    """The model ids the service offers (its knowledge bases, and the bare LLM when there is one, each also
    with every adapter) and which of them answers a request."""

    def __init__(self, service: KnowledgeService) -> None:
        self.service = service

    @property
    def llm_name(self) -> str | None:
        """Return the bare LLM's model id (its folder's name for a local model), or None with the extractive backend."""
        llm = self.service.settings.llm
        if llm.backend == "extractive":
            return None
        return Path(llm.model).name if Path(llm.model).is_dir() else llm.model

    def adapters(self) -> list[str]:
        """Return the adapters a request may choose (none with the extractive backend or a merged adapter)."""
        llm = self.service.settings.llm
        if llm.backend == "extractive" or llm.merge_adapter:
            return []
        return list(llm.adapters)

    def base_ids(self) -> list[str]:
        """Return one model id per knowledge base, plus the bare LLM's when one is configured."""
        ids = self.service.names()
        if (llm := self.llm_name) is not None:
            ids.append(llm)
        return ids

    def model_cards(self) -> list[tuple[str, str | None]]:
        """Return every model id with the base id it adds an adapter to (None for a base id itself)."""
        bases = self.base_ids()
        return [(i, None) for i in bases] + [
            (f"{base}{ADAPTER_SEPARATOR}{adapter}", base) for base in bases for adapter in self.adapters()
        ]

    def model_ids(self) -> list[str]:
        """Return every model id: the base ids, then each with each adapter."""
        return [i for i, _ in self.model_cards()]

    def knowledge_base(self, model: str, kb: str | None = None) -> str | None:
        """Return the knowledge base that answers (`kb`, else the one `model` names), None for the bare LLM;
        raise ModelNotFound when `model` is neither."""
        chosen = kb or (model if self.service.exists(model) else None)
        if chosen is None and model != self.llm_name:
            known = ", ".join(self.model_ids())
            raise ModelNotFound(f"no model or knowledge base named '{model}'; models: {known}")
        return chosen

    def route(self, model: str, kb: str | None = None, adapter: str | None = None) -> Route:
        """Return who answers `model` (a base id or `<base>:<adapter>`), with the `kb` and `adapter` extras;
        ModelNotFound for an unknown id, UnknownAdapter for an adapter the service lacks or two that differ."""
        name, suffix = model, None
        if ADAPTER_SEPARATOR in model and model not in self.base_ids():
            name, _, suffix = model.rpartition(ADAPTER_SEPARATOR)
            if suffix not in self.adapters():
                known = ", ".join(self.model_ids())
                raise ModelNotFound(f"no model named '{model}'; models: {known}")
        if adapter is not None and adapter != BASE_MODEL and adapter not in self.adapters():
            known = ", ".join([BASE_MODEL, *self.adapters()])
            raise UnknownAdapter(f"unknown adapter '{adapter}'; this service has: {known}")
        if suffix is not None and adapter is not None and adapter != suffix:
            raise UnknownAdapter(
                f"the model '{model}' names adapter '{suffix}' but the request asks for '{adapter}'"
            )
        return Route(self.knowledge_base(name, kb), suffix or adapter)
