"""Any sentence-transformers model run by torch (CPU or CUDA)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from retrieval.embedders.base import EmbeddingConfig, PromptedEmbedder, model_name_of, resolve_device

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


class SentenceTransformerEmbedder(PromptedEmbedder):
    """Any sentence-transformers model, from a hub id or a local directory."""

    backend = "sentence-transformers"

    def __init__(self, config: EmbeddingConfig) -> None:
        self.config = config
        self.model = config.model
        self.model_name = model_name_of(config.model)
        self._model = _load_sentence_transformer(config)
        self.dimension = int(self._model.get_embedding_dimension())
        self._tokenizer = self._model.tokenizer
        self._set_prompts(config, self.model_name)

    def _encode(self, texts: list[str], prompt: str) -> np.ndarray:
        # sentence-transformers sorts each call's texts by length, so each batch pads little.
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            prompt=prompt or None,
            batch_size=self.config.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def _load_sentence_transformer(config: EmbeddingConfig) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    device = resolve_device(config.device)
    log.info("loading embedding model", extra={"model": config.model, "device": device})
    model = SentenceTransformer(config.model, device=device)
    if device.startswith("cuda") and config.fp16:
        model.half()
    model.max_seq_length = min(filter(None, [config.max_seq_length, model_token_limit(model)]), default=None)
    return model


def model_token_limit(model: SentenceTransformer) -> int | None:
    """Return the most tokens `model` takes in one text, which sentence-transformers cuts every input to.

    Most models state it (`max_seq_length`); for one that does not, it is the tokenizer's limit or
    the position embeddings' size, so no text is ever run past what the model was made for.
    """
    limits = [model.max_seq_length, getattr(model.tokenizer, "model_max_length", None)]
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    limits.append(getattr(config, "max_position_embeddings", None))
    # Tokenizers without a known limit report a huge sentinel (int(1e30)).
    known = [int(limit) for limit in limits if limit and limit < 1_000_000]
    return model.max_seq_length if model.max_seq_length else min(known, default=None)
