"""The LangChain baseline's parts shared by the benchmarks that compare against it (the `bench` extra)."""

from __future__ import annotations

import warnings

from langchain_core.embeddings import Embeddings

from retrieval import Embedder

with warnings.catch_warnings():
    # langchain-community warns on import that it is being sunset; it is still what users write today.
    warnings.simplefilter("ignore", DeprecationWarning)
    from langchain_community.vectorstores import FAISS

__all__ = ["FAISS", "SharedModelEmbeddings"]


class SharedModelEmbeddings(Embeddings):
    """LangChain Embeddings over kbqa's already loaded model, so both sides embed identically."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Return one passage vector per text."""
        return self._embedder.embed_documents(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Return the query vector."""
        return self._embedder.embed_query(text).tolist()
