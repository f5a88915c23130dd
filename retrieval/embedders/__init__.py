"""Embedders: the interface and config (base), sentence-transformers on torch, ONNX Runtime, the bundled model."""

from retrieval.embedders.base import (
    Embedder,
    EmbeddingConfig,
    model_name_of,
    normalize_rows,
    resolve_device,
)
from retrieval.embedders.loading import load_embedder

__all__ = [
    "Embedder",
    "EmbeddingConfig",
    "load_embedder",
    "model_name_of",
    "normalize_rows",
    "resolve_device",
]
