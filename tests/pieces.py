"""Chunks as the knowledge base's store takes them (retrieval.ChunkLike), for tests that write vectors
of their own rather than run the ingestion pipeline."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Piece:
    """A chunk's text with its place in the document."""

    text: str
    page: int | None = None
    heading_path: tuple[str, ...] = ()
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class OcrPiece(Piece):
    """A chunk read from an image."""

    ocr: bool = True
