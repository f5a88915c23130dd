"""Re-scoring the best candidates with a cross-encoder (e.g. BAAI/bge-reranker-base)."""

from __future__ import annotations

import threading

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from retrieval.embedders import resolve_device


class RerankerConfig(BaseModel):
    """The optional cross-encoder; without a model, searches asking for reranking are refused."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    model: str | None = Field(
        None,
        description="Hub id or local directory of a sentence-transformers CrossEncoder; None: no reranker.",
    )
    device: str = Field("auto", description="`auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:1`.")
    batch_size: int = Field(16, gt=0, description="Query-chunk pairs scored per forward pass.")
    top_n: int = Field(20, gt=0, le=200, description="How many of the best candidates are re-scored.")


class Reranker:
    """A sentence-transformers CrossEncoder, loaded on first use."""

    def __init__(self, config: RerankerConfig) -> None:
        if not config.model:
            raise ValueError("no reranker model is configured (retrieval.reranker.model)")
        self.config = config
        self._model = None
        self._lock = threading.Lock()

    def scores(self, query: str, texts: list[str]) -> np.ndarray:
        """Return one relevance score per text for `query`; higher is more relevant (the model's own scale)."""
        if not texts:
            return np.zeros(0, np.float32)
        model = self._load()
        pairs = [(query, text) for text in texts]
        return np.asarray(model.predict(pairs, batch_size=self.config.batch_size, show_progress_bar=False))

    def _load(self):
        with self._lock:
            if self._model is None:
                from sentence_transformers import CrossEncoder

                self._model = CrossEncoder(self.config.model, device=resolve_device(self.config.device))
            return self._model
