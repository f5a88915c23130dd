"""The SQLite half of a knowledge base: documents, chunks, and each chunk's vector.

The vectors are kept here as well as in the FAISS index so that SQLite is the one source of truth:
one transaction adds or replaces whole documents, and the FAISS index can always be rebuilt from it
after a crash (see `knowledge_base.py`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from retrieval.errors import DocumentNotFound
from retrieval.lexical import LEXICAL_VERSION, indexed_text
from retrieval.metadata import json_path, to_json
from retrieval.timestamps import utc_now

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    page_count INTEGER,
    chunk_count INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS documents_by_hash ON documents(content_hash);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id INTEGER NOT NULL REFERENCES documents(id),
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    heading_path TEXT NOT NULL,
    start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    vector BLOB NOT NULL,
    ocr INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document_id, ordinal);
-- Lexical index: jieba terms of each chunk (rowid = chunk id), ranked by FTS5's BM25.
CREATE VIRTUAL TABLE IF NOT EXISTS chunk_terms USING fts5(terms);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', '0');
"""

# Named rather than `*`, so a record's shape never depends on how the table grew (ALTER TABLE appends).
DOCUMENT_COLUMNS = (
    "id, source, title, content_hash, size, page_count, chunk_count, status, created_at, updated_at, metadata"
)
CHUNK_COLUMNS = (
    "c.id, c.document_id, c.ordinal, c.text, c.page, c.heading_path, c.start_offset, c.end_offset, "
    "c.ocr, d.source, d.title, d.metadata"
)


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


class ChunkStore:
    """Documents and chunks of one knowledge base in a SQLite file (WAL, synchronous=FULL)."""

    def __init__(self, path: Path, dimension: int) -> None:
        self.path = path
        self.dimension = dimension
        # The knowledge base serialises access with its own lock, so one connection serves all threads.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 10000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(SCHEMA)
        self._add_column("documents", "metadata", "TEXT NOT NULL DEFAULT '{}'")
        self._add_column("chunks", "ocr", "INTEGER NOT NULL DEFAULT 0")
        self._remake_stale_terms()

    def _add_column(self, table: str, column: str, declaration: str) -> None:
        # Stores made before document metadata (or OCR) lack the column. The change is additive (old rows
        # get the default), so it is made in place on open rather than with a new knowledge-base format version.
        if self._has_column(table, column):
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if not self._has_column(table, column):  # another process may have added it meanwhile
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _has_column(self, table: str, column: str) -> bool:
        return any(row[1] == column for row in self._db.execute(f"PRAGMA table_info({table})"))

    def _remake_stale_terms(self) -> None:
        # A store whose lexical terms were cut another way (an older LEXICAL_VERSION) would not match the
        # terms of new queries: its terms are remade from its chunks, once, in one transaction.
        if self._lexical_version() == LEXICAL_VERSION:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if self._lexical_version() != LEXICAL_VERSION:  # another process may have remade them meanwhile
                rows = self._db.execute(
                    "SELECT c.id, d.title, c.heading_path, c.text FROM chunks c JOIN documents d ON d.id = c.document_id"
                ).fetchall()
                if rows:
                    log.info(
                        "remaking the lexical terms of %d chunks (once)",
                        len(rows),
                        extra={"store": str(self.path)},
                    )
                self._db.execute("DELETE FROM chunk_terms")
                self._db.executemany(
                    "INSERT INTO chunk_terms (rowid, terms) VALUES (?, ?)",
                    (
                        (i, indexed_text(_searchable(title, json.loads(path), text)))
                        for i, title, path, text in rows
                    ),
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('lexical_version', ?)",
                    (str(LEXICAL_VERSION),),
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _lexical_version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'lexical_version'").fetchone()
        return int(row[0]) if row else 1

    def close(self) -> None:
        """Close the database connection; return nothing."""
        self._db.close()

    @property
    def generation(self) -> int:
        """Return the number of write transactions committed so far (the FAISS index is tagged with it)."""
        return int(self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def write(self, documents: Sequence[NewDocument], delete_ids: Sequence[int] = ()) -> WriteResult:
        """Add documents (replacing any of the same source) and delete others, all in one transaction."""
        added_ids: list[int] = []
        added_vectors: list[np.ndarray] = []
        removed_ids: list[int] = []
        document_ids: list[int] = []
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for document_id in delete_ids:
                removed_ids += self._delete_document(document_id)
            for document in documents:
                old = db.execute(
                    "SELECT id, created_at FROM documents WHERE source = ?", (document.source,)
                ).fetchone()
                if old:
                    removed_ids += self._delete_document(old[0])
                # A new version keeps the document's id and creation time: links to it stay valid.
                document_id, chunk_ids = self._insert_document(document, *(old or (None, None)))
                document_ids.append(document_id)
                added_ids += chunk_ids
                added_vectors.append(np.asarray(document.vectors, dtype=np.float32))
            db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return WriteResult.of(
            added_ids, added_vectors, removed_ids, document_ids, self.generation, self.dimension
        )

    def _insert_document(
        self, document: NewDocument, document_id: int | None = None, created_at: str | None = None
    ) -> tuple[int, list[int]]:
        if len(document.chunks) != len(document.vectors):
            raise ValueError(
                f"{document.source}: {len(document.chunks)} chunks but {len(document.vectors)} vectors"
            )
        now = utc_now()
        cursor = self._db.execute(
            "INSERT INTO documents (id, source, title, content_hash, size, page_count, chunk_count, status,"
            " created_at, updated_at, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, 'ready', ?, ?, ?)",
            (
                document_id,
                *document_facts(document),
                created_at or now,
                now,
                to_json(document.metadata),
            ),
        )
        document_id = int(cursor.lastrowid)
        chunk_ids = []
        for ordinal, (chunk, vector) in enumerate(zip(document.chunks, document.vectors, strict=True)):
            cursor = self._db.execute(
                "INSERT INTO chunks (document_id, ordinal, text, page, heading_path, start_offset,"
                " end_offset, vector, ocr) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    document_id,
                    ordinal,
                    *chunk_facts(chunk),
                    np.asarray(vector, dtype=np.float32).tobytes(),
                    int(getattr(chunk, "ocr", False)),
                ),
            )
            chunk_id = int(cursor.lastrowid)
            chunk_ids.append(chunk_id)
            searchable = _searchable(document.title, chunk.heading_path, chunk.text)
            self._db.execute(
                "INSERT INTO chunk_terms (rowid, terms) VALUES (?, ?)", (chunk_id, indexed_text(searchable))
            )
        return document_id, chunk_ids

    def _delete_document(self, document_id: int) -> list[int]:
        ids = [
            row[0] for row in self._db.execute("SELECT id FROM chunks WHERE document_id = ?", (document_id,))
        ]
        self._db.executemany("DELETE FROM chunk_terms WHERE rowid = ?", [(i,) for i in ids])
        self._db.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
        if self._db.execute("DELETE FROM documents WHERE id = ?", (document_id,)).rowcount == 0:
            raise DocumentNotFound(f"no document with id {document_id}")
        return ids

    def id_counters(self) -> tuple[int, int]:
        """Return the next document id and the next chunk id this store would give (ids are never reused)."""
        rows = dict(self._db.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
        return int(rows.get("documents", 0)) + 1, int(rows.get("chunks", 0)) + 1

    def restore(
        self,
        documents: Sequence[DocumentRecord],
        chunks: Sequence[tuple[ChunkRecord, np.ndarray]],
        counters: tuple[int, int],
    ) -> int:
        """Write documents and chunks as they were in another store, ids included, into this empty store, in
        one transaction, and continue its ids from `counters`; return the new generation."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]:
                raise ValueError("a knowledge base is restored only into an empty store")
            db.executemany(
                f"INSERT INTO documents ({DOCUMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*_document_row(d), to_json(d.metadata)) for d in documents],
            )
            titles = {d.id: d.title for d in documents}
            for chunk, vector in chunks:
                db.execute(
                    "INSERT INTO chunks (id, document_id, ordinal, text, page, heading_path, start_offset,"
                    " end_offset, vector, ocr) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        chunk.id,
                        chunk.document_id,
                        chunk.ordinal,
                        *chunk_facts(chunk),
                        np.asarray(vector, dtype=np.float32).tobytes(),
                        int(chunk.ocr),
                    ),
                )
                searchable = _searchable(titles[chunk.document_id], chunk.heading_path, chunk.text)
                db.execute(
                    "INSERT INTO chunk_terms (rowid, terms) VALUES (?, ?)",
                    (chunk.id, indexed_text(searchable)),
                )
            for table, next_id in zip(("documents", "chunks"), counters, strict=True):
                db.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, next_id - 1))
            db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return self.generation

    def set_metadata(self, document_id: int, metadata: Mapping[str, str]) -> None:
        """Replace one document's metadata; return nothing.

        Chunks and vectors are untouched, so the generation (which tags the FAISS index) stays as it is.
        """
        cursor = self._db.execute(
            "UPDATE documents SET metadata = ?, updated_at = ? WHERE id = ?",
            (to_json(metadata), utc_now(), document_id),
        )
        if cursor.rowcount == 0:
            raise DocumentNotFound(f"no document with id {document_id}")

    def metadata_values(self, limit: int) -> dict[str, list[str]]:
        """Return each metadata key in use with its distinct values, sorted, at most `limit` per key."""
        rows = self._db.execute(
            "SELECT DISTINCT j.key, j.value FROM documents d, json_each(d.metadata) j ORDER BY j.key, j.value"
        )
        values: dict[str, list[str]] = {}
        for key, value in rows:
            shown = values.setdefault(key, [])
            if len(shown) < limit:
                shown.append(value)
        return values

    def document_by_source(self, source: str) -> DocumentRecord | None:
        """Return the document stored under `source`, or None."""
        query = f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE source = ?"
        row = self._db.execute(query, (source,)).fetchone()
        return _document_record(row) if row else None

    def has_content_hash(self, content_hash: str) -> bool:
        """Return whether a document with this content hash is stored."""
        query = "SELECT 1 FROM documents WHERE content_hash = ? LIMIT 1"
        return self._db.execute(query, (content_hash,)).fetchone() is not None

    def document(self, document_id: int) -> DocumentRecord:
        """Return the document with this id, or raise DocumentNotFound."""
        query = f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = ?"
        row = self._db.execute(query, (document_id,)).fetchone()
        if row is None:
            raise DocumentNotFound(f"no document with id {document_id}")
        return _document_record(row)

    def documents(self) -> list[DocumentRecord]:
        """Return every document, oldest first."""
        rows = self._db.execute(f"SELECT {DOCUMENT_COLUMNS} FROM documents ORDER BY id")
        return [_document_record(row) for row in rows]

    def chunks(self, ids: Sequence[int]) -> dict[int, ChunkRecord]:
        """Return the chunks with these ids, by id (ids not stored are left out)."""
        if not len(ids):
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._db.execute(
            f"SELECT {CHUNK_COLUMNS} FROM chunks c JOIN documents d ON d.id = c.document_id"
            f" WHERE c.id IN ({marks})",
            [int(i) for i in ids],
        )
        return {row[0]: _chunk_record(row) for row in rows}

    def lexical_search(
        self, expression: str, k: int, allowed: set[int] | None = None
    ) -> list[tuple[int, float]]:
        """Return (chunk id, BM25 score) of the `k` best matches of an FTS5 expression, best first.

        FTS5's bm25() is lower-is-better; it is negated so that here, as everywhere, higher is better.
        """
        limit = k if allowed is None else -1  # with a filter, rank everything and keep the allowed ones
        rows = self._db.execute(
            "SELECT rowid, -bm25(chunk_terms) AS score FROM chunk_terms WHERE chunk_terms MATCH ?"
            " ORDER BY bm25(chunk_terms) LIMIT ?",
            (expression, limit),
        )
        hits = [
            (int(chunk_id), float(score))
            for chunk_id, score in rows
            if allowed is None or chunk_id in allowed
        ]
        return hits[:k]

    def term_counts(self, terms: Sequence[str]) -> dict[str, int]:
        """Return how many chunks hold each of these lexical terms (terms no chunk holds are left out)."""
        if not terms:
            return {}
        # fts5vocab reads the lexical index's own term statistics; a temp table is private to this
        # connection and never written to the file.
        self._db.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.chunk_vocab USING fts5vocab(main, chunk_terms, row)"
        )
        marks = ",".join("?" * len(terms))
        rows = self._db.execute(
            f"SELECT term, doc FROM temp.chunk_vocab WHERE term IN ({marks})", list(terms)
        )
        return {term: int(count) for term, count in rows}

    def chunk_ids_where(
        self,
        document_ids: Sequence[int] | None,
        source_glob: str | None,
        metadata: Mapping[str, str] | None = None,
    ) -> set[int]:
        """Return the ids of chunks passing every filter given: document ids, source glob, metadata values.

        A metadata filter keeps documents whose metadata has each given key with exactly that value.
        """
        clauses, values = [], []
        if document_ids is not None:
            clauses.append(f"d.id IN ({','.join('?' * len(document_ids))})")
            values += [int(i) for i in document_ids]
        if source_glob is not None:
            clauses.append("d.source GLOB ?")
            values.append(source_glob)
        for key, value in (metadata or {}).items():
            clauses.append("json_extract(d.metadata, ?) = ?")
            values += [json_path(key), value]
        where = " AND ".join(clauses) or "1"
        query = f"SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE {where}"
        return {row[0] for row in self._db.execute(query, values)}

    def neighbours(self, chunk: ChunkRecord, before: int, after: int) -> list[ChunkRecord]:
        """Return the chunks within `before`/`after` places of `chunk` in its document, in order, itself included."""
        rows = self._db.execute(
            f"SELECT {CHUNK_COLUMNS} FROM chunks c JOIN documents d ON d.id = c.document_id"
            " WHERE c.document_id = ? AND c.ordinal BETWEEN ? AND ? ORDER BY c.ordinal",
            (chunk.document_id, chunk.ordinal - before, chunk.ordinal + after),
        )
        return [_chunk_record(row) for row in rows]

    def headings(self, limit: int = 500) -> list[tuple[int, tuple[str, ...]]]:
        """Return up to `limit` distinct (document id, heading path) pairs, in each document's reading order."""
        rows = self._db.execute(
            "SELECT document_id, heading_path FROM chunks GROUP BY document_id, heading_path "
            "ORDER BY document_id, MIN(ordinal) LIMIT ?",
            (limit,),
        )
        return [(document_id, tuple(json.loads(path))) for document_id, path in rows]

    def count(self) -> tuple[int, int]:
        """Return (documents, chunks) stored."""
        documents = self._db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        chunks = self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        return documents, chunks

    def chunk_ids(self, after: int = 0) -> np.ndarray:
        """Return the ids of every stored chunk (whose id is greater than `after`), ascending."""
        rows = self._db.execute("SELECT id FROM chunks WHERE id > ? ORDER BY id", (after,)).fetchall()
        return np.asarray([row[0] for row in rows], dtype=np.int64)

    def lexical_ids(self) -> set[int]:
        """Return the chunk ids held by the lexical index."""
        return {row[0] for row in self._db.execute("SELECT rowid FROM chunk_terms")}

    def iter_vectors(
        self, from_id: int = 0, batch_size: int = 10_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids, vectors) of every stored chunk whose id is at least `from_id`, in batches, ascending by id."""
        cursor = self._db.execute("SELECT id, vector FROM chunks WHERE id >= ? ORDER BY id", (from_id,))
        while rows := cursor.fetchmany(batch_size):
            ids = np.asarray([row[0] for row in rows], dtype=np.int64)
            vectors = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32)
            yield ids, vectors.reshape(len(rows), self.dimension)


def document_facts(document: NewDocument) -> tuple:
    """Return (source, title, content hash, size, page count, chunk count) of a document to store."""
    facts = (document.source, document.title, document.content_hash, document.size, document.page_count)
    return (*facts, len(document.chunks))


def chunk_facts(chunk: ChunkLike) -> tuple:
    """Return (text, page, heading path as JSON, start, end) of a chunk to store."""
    heading_path = json.dumps(list(chunk.heading_path), ensure_ascii=False)
    return chunk.text, chunk.page, heading_path, chunk.start, chunk.end


def _searchable(title: str, heading_path: Sequence[str], text: str) -> str:
    """Return what the lexical index holds of a chunk: its document's title, its headings and its text."""
    return " ".join([title, *heading_path, text])


def _document_row(document: DocumentRecord) -> tuple:
    """Return a document's facts in DOCUMENT_COLUMNS order, its metadata left out."""
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


def _document_record(row: tuple) -> DocumentRecord:
    *facts, metadata = row
    return DocumentRecord(*facts, metadata=json.loads(metadata))


def _chunk_record(row: tuple) -> ChunkRecord:
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
