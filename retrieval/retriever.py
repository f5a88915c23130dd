"""Finding the chunks of a knowledge base that answer a query."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field

from retrieval.embedder import Embedder
from retrieval.knowledge_base import KnowledgeBase

MAX_TOP_K = 1000


class SearchOptions(BaseModel):
    """What a search asks for."""

    k: int = Field(5, ge=1, le=MAX_TOP_K, description="How many chunks to return.")
    score_threshold: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Keep only hits whose cosine similarity is at least this (scores lie in [-1, 1]; "
        "higher is more similar). None keeps all k.",
    )


@dataclass(frozen=True)
class SearchHit:
    """A chunk that matches a query, with where it comes from and how well it matches."""

    chunk_id: int
    score: float
    text: str
    document_id: int
    source: str
    title: str
    page: int | None
    heading_path: tuple[str, ...]
    start: int
    end: int


class Retriever:
    """Dense search: the query's embedding against the knowledge base's FAISS index."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def search(self, kb: KnowledgeBase, query: str, options: SearchOptions | None = None) -> list[SearchHit]:
        """Return the best chunks for `query`, best first, with cosine scores in [-1, 1]."""
        options = options or SearchOptions()
        if not query.strip():
            raise ValueError("the query is empty")
        found = kb.search(self.embedder.embed_query(query), options.k)
        hits = [
            SearchHit(
                chunk_id=item.chunk.id,
                score=item.score,
                text=item.chunk.text,
                document_id=item.chunk.document_id,
                source=item.chunk.source,
                title=item.chunk.title,
                page=item.chunk.page,
                heading_path=item.chunk.heading_path,
                start=item.chunk.start,
                end=item.chunk.end,
            )
            for item in found
        ]
        if options.score_threshold is not None:
            hits = [hit for hit in hits if hit.score >= options.score_threshold]
        return hits
