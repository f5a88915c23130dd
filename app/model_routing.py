"""Which model answers an OpenAI-style request: a knowledge base named as the model, or the bare LLM."""

from __future__ import annotations

from pathlib import Path

from app.services import KnowledgeService


class ModelNotFound(ValueError):
    """A request names neither a knowledge base nor the bare LLM."""


class ModelRouter:
    """The model ids the service offers (its knowledge bases, and the bare LLM when there is one) and
    which of them answers a request."""

    def __init__(self, service: KnowledgeService) -> None:
        self.service = service

    @property
    def llm_name(self) -> str | None:
        """Return the bare LLM's model id (its folder's name for a local model), or None with the extractive backend."""
        llm = self.service.settings.llm
        if llm.backend == "extractive":
            return None
        return Path(llm.model).name if Path(llm.model).is_dir() else llm.model

    def model_ids(self) -> list[str]:
        """Return one model id per knowledge base, plus the bare LLM's when one is configured."""
        ids = self.service.names()
        if (llm := self.llm_name) is not None:
            ids.append(llm)
        return ids

    def knowledge_base(self, model: str, kb: str | None = None) -> str | None:
        """Return the knowledge base that answers (`kb`, else the one `model` names), None for the bare LLM;
        raise ModelNotFound when `model` is neither."""
        chosen = kb or (model if self.service.exists(model) else None)
        if chosen is None and model != self.llm_name:
            known = ", ".join([*self.service.names(), self.llm_name or ""]).strip(", ")
            raise ModelNotFound(f"no model or knowledge base named '{model}'; models: {known}")
        return chosen
