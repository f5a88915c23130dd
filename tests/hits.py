"""Search hits built by hand, for tests of what consumes them (the prompt builder, the extractive reader)."""

from __future__ import annotations

from retrieval import SearchHit


def search_hit(n: int, text: str, page: int | None = None) -> SearchHit:
    """Return a search hit for chunk `n` of a document named after it; lower `n` scores higher."""
    return SearchHit(
        chunk_id=n,
        score=0.9 - n / 100,
        text=text,
        document_id=n,
        source=f"doc{n}.md",
        title=f"doc{n}",
        page=page,
        heading_path=(),
        start=0,
        end=len(text),
    )
