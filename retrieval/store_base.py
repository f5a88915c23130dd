"""What the SQLite and PostgreSQL chunk stores share, free of either dialect.

The records a store gives and takes (documents, chunks, what one write changed), the conversions between
them and table rows, and the logic both stores run in the same order — a write of whole documents in
one transaction, the chunk filters, a missing document's error — with each store supplying only its SQL
(`store.py`'s `ChunkStore`, `pg_store.py`'s `PgChunkStore`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from retrieval.errors import DocumentNotFound
from retrieval.lexical import indexed_text
from retrieval.metadata import check_groups


class ChunkLike(Protocol):
    """What the store needs of a chunk to keep it (the splitter's chunks have these attributes).

    A chunk may also have `ocr` (bool): True when its text was read from an image; False when absent.
    """

    text: str
    page: int | None
    heading_path: tuple[str, ...]
    start: int
    end: int


@dataclass(frozen=True)
class NewDocument:
    """A document to add: its file facts, its chunks, and one vector per chunk."""

    source: str
    title: str
    content_hash: str
    size: int
    page_count: int | None
    chunks: Sequence[ChunkLike]
    vectors: np.ndarray
    metadata: dict[str, str] = field(default_factory=dict)
    groups: Sequence[str] = ()  # access groups: empty for a document every reader of its knowledge base sees
    # Each chunk's text for the lexical index (`chunk_terms`), when the caller made it already: the ingestion
    # pipeline makes it while the batch is embedded, so the write transaction does not (jieba takes about
    # 4 ms a chunk). None: the store makes it.
    indexed_terms: Sequence[str] | None = None


@dataclass(frozen=True)
class DocumentRecord:
    """A stored document."""

    id: int
    source: str
    title: str
    content_hash: str
    size: int
    page_count: int | None
    chunk_count: int
    status: str
    created_at: str
    updated_at: str
    metadata: dict[str, str] = field(default_factory=dict)
    groups: tuple[str, ...] = ()  # access groups, sorted; empty: seen by every reader of the knowledge base


@dataclass(frozen=True)
class ChunkRecord:
    """A stored chunk; its id is also its id in the FAISS index."""

    id: int
    document_id: int
    ordinal: int
    text: str
    page: int | None
    heading_path: tuple[str, ...]
    start: int
    end: int
    source: str
    title: str
    metadata: dict[str, str] = field(default_factory=dict)  # the document's
    ocr: bool = False  # the text was read from an image by OCR


@dataclass(frozen=True)
class WriteResult:
    """What one write transaction changed: the chunk ids added (with vectors) and removed."""

    added_ids: np.ndarray
    added_vectors: np.ndarray
    removed_ids: np.ndarray
    document_ids: list[int]
    generation: int

    @classmethod
    def of(
        cls,
        added_ids: Sequence[int],
        added_vectors: Sequence[np.ndarray],
        removed_ids: Sequence[int],
        document_ids: list[int],
        generation: int,
        dimension: int,
    ) -> WriteResult:
        """Return the result of a write from its lists (the vectors one array per document)."""
        vectors = np.concatenate(added_vectors) if added_vectors else np.zeros((0, dimension), np.float32)
        return cls(
            added_ids=np.asarray(added_ids, dtype=np.int64),
            added_vectors=vectors,
            removed_ids=np.asarray(removed_ids, dtype=np.int64),
            document_ids=document_ids,
            generation=int(generation),
        )


# A filter's SQL: a boolean clause over `chunks c JOIN documents d` and the parameters it takes, in order.
Clause = tuple[str, list[Any]]


class StoreBase:
    """The write and filter logic of a chunk store; a subclass supplies its SQL in the `_…` hooks.

    `tx` is whatever the store's `_write_transaction` yields (a connection or a cursor): every hook of
    one write runs inside it, so the write commits whole or not at all.
    """

    dimension: int

    def write(self, documents: Sequence[NewDocument], delete_ids: Sequence[int] = ()) -> WriteResult:
        """Add documents (replacing any of the same source) and delete others, all in one transaction."""
        added_ids: list[int] = []
        added_vectors: list[np.ndarray] = []
        removed_ids: list[int] = []
        document_ids: list[int] = []
        for document in documents:
            check_vector_count(document)
        # Made before the transaction, so the write lock is held for the SQL only.
        terms = [chunk_terms(document) for document in documents]
        with self._write_transaction() as tx:
            for document_id in delete_ids:
                removed_ids += self._delete_document(tx, document_id)
            for document, document_terms in zip(documents, terms, strict=True):
                old = self._find_source(tx, document.source)
                if old:
                    removed_ids += self._delete_document(tx, old[0])
                # A new version keeps the document's id and creation time: links to it stay valid.
                document_id, chunk_ids = self._insert_document(
                    tx, document, document_terms, *(old or (None, None))
                )
                document_ids.append(document_id)
                added_ids += chunk_ids
                added_vectors.append(np.asarray(document.vectors, dtype=np.float32))
            generation = self._next_generation(tx)
        return WriteResult.of(added_ids, added_vectors, removed_ids, document_ids, generation, self.dimension)

    def restore(
        self,
        documents: Sequence[DocumentRecord],
        chunks: Sequence[tuple[ChunkRecord, np.ndarray]],
        counters: tuple[int, int],
    ) -> int:
        """Write documents and chunks as they were in another store, ids included, into this empty store, in
        one transaction, and continue its ids from `counters`; return the new generation."""
        with self._write_transaction() as tx:
            if self._document_count(tx):
                raise ValueError("a knowledge base is restored only into an empty store")
            self._restore_rows(tx, documents, chunks, counters)
            return self._next_generation(tx)

    def chunk_ids_where(
        self,
        document_ids: Sequence[int] | None,
        source_glob: str | None,
        metadata: Mapping[str, str] | None = None,
        groups: frozenset[str] | None = None,
    ) -> set[int]:
        """Return the ids of chunks passing every filter given: document ids, source glob, metadata values,
        access groups.

        A metadata filter keeps documents whose metadata has each given key with exactly that value; a
        groups filter keeps documents without groups and those sharing one of `groups` (None: no filter).
        """
        clauses: list[Clause] = []
        if document_ids is not None:
            clauses.append(self._ids_clause([int(i) for i in document_ids]))
        if source_glob is not None:
            clauses.append(self._glob_clause(source_glob))
        clauses += [self._metadata_clause(key, value) for key, value in (metadata or {}).items()]
        if groups is not None:
            clauses.append(self._groups_clause(check_groups(groups)))
        return self._chunk_ids_matching(
            [sql for sql, _ in clauses], [v for _, values in clauses for v in values]
        )

    def document(self, document_id: int) -> DocumentRecord:
        """Return the document with this id, or raise DocumentNotFound."""
        record = self._document_by_id(document_id)
        if record is None:
            raise DocumentNotFound(f"no document with id {document_id}")
        return record

    def set_metadata(self, document_id: int, metadata: Mapping[str, str]) -> None:
        """Replace one document's metadata; return nothing.

        Chunks and vectors are untouched, so the generation (which tags the vector index) stays as it is.
        """
        found_in(self._update_metadata(document_id, metadata), document_id)

    def set_groups(self, document_id: int, groups: Sequence[str]) -> None:
        """Replace one document's access groups; return nothing (chunks, vectors and generation untouched)."""
        found_in(self._update_groups(document_id, check_groups(groups)), document_id)

    # The hooks each store writes in its SQL.
    def _write_transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _find_source(self, tx: Any, source: str) -> tuple[int, str] | None:
        raise NotImplementedError

    def _delete_document(self, tx: Any, document_id: int) -> list[int]:
        raise NotImplementedError

    def _insert_document(
        self,
        tx: Any,
        document: NewDocument,
        terms: Sequence[str],
        document_id: int | None,
        created_at: str | None,
    ) -> tuple[int, list[int]]:
        raise NotImplementedError

    def _next_generation(self, tx: Any) -> int:
        raise NotImplementedError

    def _document_count(self, tx: Any) -> int:
        raise NotImplementedError

    def _restore_rows(
        self,
        tx: Any,
        documents: Sequence[DocumentRecord],
        chunks: Sequence[tuple[ChunkRecord, np.ndarray]],
        counters: tuple[int, int],
    ) -> None:
        raise NotImplementedError

    def _ids_clause(self, document_ids: list[int]) -> Clause:
        raise NotImplementedError

    def _glob_clause(self, glob: str) -> Clause:
        raise NotImplementedError

    def _metadata_clause(self, key: str, value: str) -> Clause:
        raise NotImplementedError

    def _groups_clause(self, wanted: list[str]) -> Clause:
        raise NotImplementedError

    def _chunk_ids_matching(self, clauses: list[str], values: list[Any]) -> set[int]:
        raise NotImplementedError

    def _document_by_id(self, document_id: int) -> DocumentRecord | None:
        raise NotImplementedError

    def _update_metadata(self, document_id: int, metadata: Mapping[str, str]) -> int:
        raise NotImplementedError

    def _update_groups(self, document_id: int, groups: list[str]) -> int:
        raise NotImplementedError


def check_vector_count(document: NewDocument) -> None:
    """Raise ValueError unless the document has one vector (and any indexed terms) per chunk; return nothing."""
    if len(document.chunks) != len(document.vectors):
        raise ValueError(
            f"{document.source}: {len(document.chunks)} chunks but {len(document.vectors)} vectors"
        )
    if document.indexed_terms is not None and len(document.indexed_terms) != len(document.chunks):
        raise ValueError(
            f"{document.source}: {len(document.chunks)} chunks but {len(document.indexed_terms)} indexed terms"
        )


def chunk_terms(document: NewDocument) -> list[str]:
    """Return each chunk's text for the lexical index: the jieba terms of its title, headings and text."""
    if document.indexed_terms is not None:
        return list(document.indexed_terms)
    return [lexical_text(document.title, chunk.heading_path, chunk.text) for chunk in document.chunks]


def found_in(rowcount: int, document_id: int) -> None:
    """Raise DocumentNotFound when an update of one document touched no row; return nothing."""
    if rowcount == 0:
        raise DocumentNotFound(f"no document with id {document_id}")


def first_values(rows: Sequence[tuple[str, str]], limit: int) -> dict[str, list[str]]:
    """Return each key of sorted (key, value) rows with its first `limit` values."""
    values: dict[str, list[str]] = {}
    for key, value in rows:
        shown = values.setdefault(key, [])
        if len(shown) < limit:
            shown.append(value)
    return values


def document_facts(document: NewDocument) -> tuple:
    """Return (source, title, content hash, size, page count, chunk count) of a document to store."""
    facts = (document.source, document.title, document.content_hash, document.size, document.page_count)
    return (*facts, len(document.chunks))


def chunk_facts(chunk: ChunkLike) -> tuple:
    """Return (text, page, heading path as JSON, start, end) of a chunk to store."""
    heading_path = json.dumps(list(chunk.heading_path), ensure_ascii=False)
    return chunk.text, chunk.page, heading_path, chunk.start, chunk.end


def lexical_text(title: str, heading_path: Sequence[str], text: str) -> str:
    """Return what the lexical index holds of a chunk: the terms of its document's title, its headings and its
    text, space-separated (`lexical.indexed_text`)."""
    return indexed_text(" ".join([title, *heading_path, text]))


def document_row(document: DocumentRecord) -> tuple:
    """Return a document's facts in the stores' column order, its metadata and groups left out."""
    return (
        document.id,
        document.source,
        document.title,
        document.content_hash,
        document.size,
        document.page_count,
        document.chunk_count,
        document.status,
        document.created_at,
        document.updated_at,
    )


def document_record(row: tuple) -> DocumentRecord:
    """Return the document of a row read in the stores' column order (metadata and groups as JSON text)."""
    *facts, metadata, groups = row
    return DocumentRecord(*facts, metadata=json.loads(metadata), groups=tuple(json.loads(groups)))


def chunk_record(row: tuple) -> ChunkRecord:
    """Return the chunk of a row read in the stores' chunk column order (heading path and metadata as JSON)."""
    chunk_id, document_id, ordinal, text, page, heading_path, start, end, ocr, source, title, metadata = row
    return ChunkRecord(
        id=chunk_id,
        document_id=document_id,
        ordinal=ordinal,
        text=text,
        page=page,
        heading_path=tuple(json.loads(heading_path)),
        start=start,
        end=end,
        source=source,
        title=title,
        metadata=json.loads(metadata),
        ocr=bool(ocr),
    )
