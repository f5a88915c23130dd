"""Moving a knowledge base between the SQLite store and the PostgreSQL store, ids, metadata and vectors kept.

Nothing is embedded again: the documents, chunks and vectors are read from one store and written into
the other in one transaction (with the ids they had and the id counters, so links to a document stay
valid and no id is ever given twice), the lexical terms are made from the chunks there, and the old
copy is deleted only once the new one is complete. The source is held as its only writer meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from retrieval.errors import KnowledgeBaseExists
from retrieval.knowledge_base import KnowledgeBase
from retrieval.manifest import EmbeddingIdentity, VectorStore
from retrieval.store import ChunkRecord, DocumentRecord

# Vectors are read in batches of this many chunks.
READ_BATCH = 5_000


class Catalog(Protocol):
    """What a move needs of the SQLite and the PostgreSQL catalogs alike."""

    def exists(self, name: str) -> bool: ...

    def open(self, name: str, embedding: EmbeddingIdentity | None = None) -> KnowledgeBase: ...

    def create(
        self, name: str, embedding: EmbeddingIdentity, splitter: dict, store: VectorStore | None = None
    ) -> KnowledgeBase: ...

    def delete(self, name: str) -> None: ...


def move_knowledge_base(
    name: str, source: Catalog, target: Catalog, carry: Callable[[KnowledgeBase], None] | None = None
) -> KnowledgeBase:
    """Copy the named knowledge base from `source` into `target`, call `carry(old)` (for what lives beside the
    rows, such as originals), then delete it from `source`; return the copy, open.

    KnowledgeBaseExists when `target` already has one of that name; on any failure the copy is removed
    and the source is left as it was.
    """
    old = source.open(name)
    try:
        with old.exclusive():
            if target.exists(name):
                raise KnowledgeBaseExists(
                    f"knowledge base '{name}' already exists on the store it would move to"
                )
            documents, chunks = _rows(old)
            counters = old.store.id_counters()
            new = target.create(name, old.manifest.embedding, old.manifest.splitter)
            try:
                new.store.restore(documents, chunks, counters)
                new.close()
                new = target.open(name)  # its vector index is made from the restored rows here
                with new.writing():
                    pass  # and saved
                if carry is not None:
                    carry(old)
            except BaseException:
                new.close()
                target.delete(name)
                raise
    finally:
        old.close()
    source.delete(name)
    return new


def _rows(kb: KnowledgeBase) -> tuple[list[DocumentRecord], list[tuple[ChunkRecord, np.ndarray]]]:
    """Return every document and every chunk with its vector, by ascending id."""
    chunks: list[tuple[ChunkRecord, np.ndarray]] = []
    for ids, vectors in kb.store.iter_vectors(batch_size=READ_BATCH):
        records = kb.store.chunks(ids.tolist())
        chunks += [(records[int(i)], vector) for i, vector in zip(ids, vectors, strict=True)]
    return kb.store.documents(), chunks
