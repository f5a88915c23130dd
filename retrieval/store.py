"""The SQLite half of a knowledge base: documents, chunks, and each chunk's vector.

The vectors are kept here as well as in the FAISS index so that SQLite is the one source of truth:
one transaction adds or replaces whole documents, and the FAISS index can always be rebuilt from it
after a crash (see `knowledge_base.py`).

This module is the SQLite store's SQL and nothing else (its schema, the in-place upgrades of older
files, each query); what it shares with the PostgreSQL store — the records, the write of whole
documents, the chunk filters — is `store_base.py`'s. It stays one module a little over 400 lines
because splitting its SQL would part queries from the schema they read.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from retrieval.lexical import LEXICAL_VERSION
from retrieval.metadata import check_groups, json_path, to_json
from retrieval.store_base import (  # the records are re-exported: `retrieval.store` is where callers find them
    ChunkLike,
    ChunkRecord,
    Clause,
    DocumentRecord,
    NewDocument,
    StoreBase,
    WriteResult,
    chunk_facts,
    chunk_record,
    document_facts,
    document_record,
    document_row,
    first_values,
    found_in,
    lexical_text,
)
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
    "id, source, title, content_hash, size, page_count, chunk_count, status, created_at, updated_at, metadata, "
    "access_groups"
)
CHUNK_COLUMNS = (
    "c.id, c.document_id, c.ordinal, c.text, c.page, c.heading_path, c.start_offset, c.end_offset, "
    "c.ocr, d.source, d.title, d.metadata"
)


__all__ = [
    "ChunkLike",
    "ChunkRecord",
    "ChunkStore",
    "DocumentRecord",
    "NewDocument",
    "WriteResult",
]


class ChunkStore(StoreBase):
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
        self._add_column("documents", "access_groups", "TEXT NOT NULL DEFAULT '[]'")
        self._remake_stale_terms()

    def _add_column(self, table: str, column: str, declaration: str) -> None:
        # Stores made before document metadata (or OCR) lack the column. The change is additive (old rows
        # get the default), so it is made in place on open rather than with a new knowledge-base format version.
        if self._has_column(table, column):
            return
        with self._write_transaction() as db:
            if not self._has_column(table, column):  # another process may have added it meanwhile
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def _has_column(self, table: str, column: str) -> bool:
        return any(row[1] == column for row in self._db.execute(f"PRAGMA table_info({table})"))

    def _remake_stale_terms(self) -> None:
        # A store whose lexical terms were cut another way (an older LEXICAL_VERSION) would not match the
        # terms of new queries: its terms are remade from its chunks, once, in one transaction.
        if self._lexical_version() == LEXICAL_VERSION:
            return
        with self._write_transaction() as db:
            if self._lexical_version() == LEXICAL_VERSION:  # another process may have remade them meanwhile
                return
            rows = db.execute(
                "SELECT c.id, d.title, c.heading_path, c.text FROM chunks c JOIN documents d ON d.id = c.document_id"
            ).fetchall()
            if rows:
                log.info(
                    "remaking the lexical terms of %d chunks (once)",
                    len(rows),
                    extra={"store": str(self.path)},
                )
            db.execute("DELETE FROM chunk_terms")
            db.executemany(
                "INSERT INTO chunk_terms (rowid, terms) VALUES (?, ?)",
                ((i, lexical_text(title, json.loads(path), text)) for i, title, path, text in rows),
            )
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('lexical_version', ?)",
                (str(LEXICAL_VERSION),),
            )

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

    @contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the file's write lock at once, so a writer never fails half-way on a busy file.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _find_source(self, db: sqlite3.Connection, source: str) -> tuple[int, str] | None:
        return db.execute("SELECT id, created_at FROM documents WHERE source = ?", (source,)).fetchone()

    def _next_generation(self, db: sqlite3.Connection) -> int:
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        return self.generation

    def _insert_document(
        self,
        db: sqlite3.Connection,
        document: NewDocument,
        terms: Sequence[str],
        document_id: int | None,
        created_at: str | None,
    ) -> tuple[int, list[int]]:
        now = utc_now()
        cursor = db.execute(
            "INSERT INTO documents (id, source, title, content_hash, size, page_count, chunk_count, status,"
            " created_at, updated_at, metadata, access_groups) VALUES (?, ?, ?, ?, ?, ?, ?, 'ready', ?, ?, ?, ?)",
            (
                document_id,
                *document_facts(document),
                created_at or now,
                now,
                to_json(document.metadata),
                _groups_json(document.groups),
            ),
        )
        document_id = int(cursor.lastrowid)
        chunk_ids = []
        for ordinal, (chunk, vector) in enumerate(zip(document.chunks, document.vectors, strict=True)):
            cursor = db.execute(
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
            db.execute("INSERT INTO chunk_terms (rowid, terms) VALUES (?, ?)", (chunk_id, terms[ordinal]))
        return document_id, chunk_ids

    def _delete_document(self, db: sqlite3.Connection, document_id: int) -> list[int]:
        ids = [row[0] for row in db.execute("SELECT id FROM chunks WHERE document_id = ?", (document_id,))]
        db.executemany("DELETE FROM chunk_terms WHERE rowid = ?", [(i,) for i in ids])
        db.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
        found_in(db.execute("DELETE FROM documents WHERE id = ?", (document_id,)).rowcount, document_id)
        return ids

    def id_counters(self) -> tuple[int, int]:
        """Return the next document id and the next chunk id this store would give (ids are never reused)."""
        rows = dict(self._db.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
        return int(rows.get("documents", 0)) + 1, int(rows.get("chunks", 0)) + 1

    def _document_count(self, db: sqlite3.Connection) -> int:
        return db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]

    def _restore_rows(
        self,
        db: sqlite3.Connection,
        documents: Sequence[DocumentRecord],
        chunks: Sequence[tuple[ChunkRecord, np.ndarray]],
        counters: tuple[int, int],
    ) -> None:
        db.executemany(
            f"INSERT INTO documents ({DOCUMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(*document_row(d), to_json(d.metadata), _groups_json(d.groups)) for d in documents],
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
            terms = lexical_text(titles[chunk.document_id], chunk.heading_path, chunk.text)
            db.execute("INSERT INTO chunk_terms (rowid, terms) VALUES (?, ?)", (chunk.id, terms))
        for table, next_id in zip(("documents", "chunks"), counters, strict=True):
            db.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
            db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, next_id - 1))

    def _update_metadata(self, document_id: int, metadata: Mapping[str, str]) -> int:
        query = "UPDATE documents SET metadata = ?, updated_at = ? WHERE id = ?"
        return self._db.execute(query, (to_json(metadata), utc_now(), document_id)).rowcount

    def _update_groups(self, document_id: int, groups: list[str]) -> int:
        query = "UPDATE documents SET access_groups = ?, updated_at = ? WHERE id = ?"
        return self._db.execute(query, (_groups_json(groups), utc_now(), document_id)).rowcount

    def metadata_values(self, limit: int) -> dict[str, list[str]]:
        """Return each metadata key in use with its distinct values, sorted, at most `limit` per key."""
        rows = self._db.execute(
            "SELECT DISTINCT j.key, j.value FROM documents d, json_each(d.metadata) j ORDER BY j.key, j.value"
        )
        return first_values(rows, limit)

    def document_by_source(self, source: str) -> DocumentRecord | None:
        """Return the document stored under `source`, or None."""
        query = f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE source = ?"
        row = self._db.execute(query, (source,)).fetchone()
        return document_record(row) if row else None

    def has_content_hash(self, content_hash: str) -> bool:
        """Return whether a document with this content hash is stored."""
        query = "SELECT 1 FROM documents WHERE content_hash = ? LIMIT 1"
        return self._db.execute(query, (content_hash,)).fetchone() is not None

    def _document_by_id(self, document_id: int) -> DocumentRecord | None:
        query = f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = ?"
        row = self._db.execute(query, (document_id,)).fetchone()
        return document_record(row) if row else None

    def documents(self) -> list[DocumentRecord]:
        """Return every document, oldest first."""
        rows = self._db.execute(f"SELECT {DOCUMENT_COLUMNS} FROM documents ORDER BY id")
        return [document_record(row) for row in rows]

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
        return {row[0]: chunk_record(row) for row in rows}

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

    def _ids_clause(self, document_ids: list[int]) -> Clause:
        return f"d.id IN ({','.join('?' * len(document_ids))})", document_ids

    def _glob_clause(self, glob: str) -> Clause:
        return "d.source GLOB ?", [glob]

    def _metadata_clause(self, key: str, value: str) -> Clause:
        return "json_extract(d.metadata, ?) = ?", [json_path(key), value]

    def _groups_clause(self, wanted: list[str]) -> Clause:
        if not wanted:
            return "d.access_groups = '[]'", []
        shared = f"EXISTS (SELECT 1 FROM json_each(d.access_groups) g WHERE g.value IN ({','.join('?' * len(wanted))}))"
        return f"(d.access_groups = '[]' OR {shared})", wanted

    def _chunk_ids_matching(self, clauses: list[str], values: list) -> set[int]:
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
        return [chunk_record(row) for row in rows]

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


def _groups_json(groups: Sequence[str]) -> str:
    """Return access groups as stored in `documents.access_groups`: a sorted JSON list, `[]` for none."""
    return json.dumps(check_groups(groups), ensure_ascii=False, separators=(",", ":"))
