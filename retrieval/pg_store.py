"""One knowledge base's documents, chunks, lexical terms and vectors in PostgreSQL (the `postgres` store).

The same contract as the SQLite `ChunkStore` (the logic both share is `store_base.py`'s), over rows of
the shared database that carry the knowledge base's id: one transaction adds or replaces whole documents
with their vectors and terms and bumps the generation. The lexical index is a terms table ranked by BM25
computed in SQL as FTS5 computes it (`pg_terms.py`). The vectors are pgvector columns with one HNSW index
(cosine) per knowledge base: `pg_vector_index.py`'s `PgVectorIndex` searches them, so there is no separate
copy to rebuild or keep in step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np

from retrieval.lexical import fts_tokens
from retrieval.metadata import check_groups, to_json
from retrieval.pg_terms import bm25_search, chunk_tokens, copy_terms, remake_stale_terms, term_rows
from retrieval.pg_vector_index import pg_array
from retrieval.postgres import Database
from retrieval.store_base import (
    ChunkRecord,
    Clause,
    DocumentRecord,
    NewDocument,
    StoreBase,
    chunk_facts,
    chunk_record,
    document_facts,
    document_record,
    document_row,
    first_values,
    found_in,
)
from retrieval.timestamps import utc_now

DOCUMENT_COLUMNS = (
    "id, source, title, content_hash, size, page_count, chunk_count, status, created_at, updated_at, "
    "metadata::text, array_to_json(access_groups)::text"
)
CHUNK_COLUMNS = (
    "c.id, c.document_id, c.ordinal, c.text, c.page, c.heading_path, c.start_offset, c.end_offset, "
    "c.ocr, d.source, d.title, d.metadata::text"
)


class PgChunkStore(StoreBase):
    """Documents and chunks of one knowledge base (`kb_id`) in the shared PostgreSQL database."""

    def __init__(self, database: Database, kb_id: int, dimension: int) -> None:
        self.db = database
        self.kb_id = kb_id
        self.dimension = dimension
        self._next = [1, 1]  # the next document and chunk ids, read under the write's row lock
        remake_stale_terms(database, kb_id)

    def close(self) -> None:
        """Return nothing: connections belong to the process's pool."""

    @property
    def generation(self) -> int:
        """Return the number of write transactions committed so far (caches of other nodes compare it)."""
        with self.db.connection() as conn:
            row = conn.execute(
                "SELECT generation FROM knowledge_bases WHERE id = %s", (self.kb_id,)
            ).fetchone()
        return int(row[0]) if row else -1  # a deleted knowledge base: no cache matches it

    @contextmanager
    def _write_transaction(self) -> Iterator:
        with self.db.connection() as conn, conn.cursor() as cur:
            # Writers of one knowledge base queue here, whichever node they run on.
            cur.execute(
                "SELECT next_document_id, next_chunk_id FROM knowledge_bases WHERE id = %s FOR UPDATE",
                (self.kb_id,),
            )
            self._next = list(cur.fetchone())
            yield cur

    def _find_source(self, cur, source: str) -> tuple[int, str] | None:
        cur.execute(
            "SELECT id, created_at FROM documents WHERE kb_id = %s AND source = %s", (self.kb_id, source)
        )
        return cur.fetchone()

    def _next_generation(self, cur) -> int:
        cur.execute(
            "UPDATE knowledge_bases SET generation = generation + 1,"
            " next_document_id = %(d)s, next_chunk_id = %(c)s,"
            " chunk_count = (SELECT COUNT(*) FROM chunks WHERE kb_id = %(kb)s),"
            " token_total = (SELECT COALESCE(SUM(tokens), 0) FROM chunks WHERE kb_id = %(kb)s)"
            " WHERE id = %(kb)s RETURNING generation",
            {"d": int(self._next[0]), "c": int(self._next[1]), "kb": self.kb_id},
        )
        return int(cur.fetchone()[0])

    def _insert_document(
        self,
        cur,
        document: NewDocument,
        terms: Sequence[str],
        document_id: int | None,
        created_at: str | None,
    ) -> tuple[int, list[int]]:
        now = utc_now()
        if document_id is None:
            document_id = self._next[0]
            self._next[0] += 1
        cur.execute(
            "INSERT INTO documents (id, kb_id, source, title, content_hash, size, page_count, chunk_count,"
            " status, created_at, updated_at, metadata, access_groups)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'ready', %s, %s, %s, %s::text[]) RETURNING id",
            (
                document_id,
                self.kb_id,
                *document_facts(document),
                created_at or now,
                now,
                to_json(document.metadata),
                check_groups(document.groups),
            ),
        )
        (document_id,) = cur.fetchone()
        chunk_ids: list[int] = []
        term_table: list[tuple] = []
        for ordinal, (chunk, vector) in enumerate(zip(document.chunks, document.vectors, strict=True)):
            tokens = fts_tokens(terms[ordinal])
            chunk_id = self._next[1]
            self._next[1] += 1
            cur.execute(
                "INSERT INTO chunks (id, kb_id, document_id, ordinal, text, page, heading_path, start_offset,"
                " end_offset, ocr, tokens, embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    chunk_id,
                    self.kb_id,
                    document_id,
                    ordinal,
                    *chunk_facts(chunk),
                    bool(getattr(chunk, "ocr", False)),
                    len(tokens),
                    np.asarray(vector, dtype=np.float32),
                ),
            )
            chunk_ids.append(int(chunk_id))
            term_table += term_rows(self.kb_id, chunk_id, tokens)
        copy_terms(cur, term_table)
        return int(document_id), chunk_ids

    def _delete_document(self, cur, document_id: int) -> list[int]:
        cur.execute(
            "DELETE FROM chunk_terms WHERE kb_id = %(kb)s AND chunk_id IN"
            " (SELECT id FROM chunks WHERE kb_id = %(kb)s AND document_id = %(d)s)",
            {"kb": self.kb_id, "d": document_id},
        )
        cur.execute(
            "DELETE FROM chunks WHERE kb_id = %s AND document_id = %s RETURNING id", (self.kb_id, document_id)
        )
        ids = [row[0] for row in cur.fetchall()]
        cur.execute("DELETE FROM documents WHERE id = %s AND kb_id = %s", (document_id, self.kb_id))
        found_in(cur.rowcount, document_id)
        return sorted(ids)

    def id_counters(self) -> tuple[int, int]:
        """Return the next document id and the next chunk id this store would give (ids are never reused)."""
        rows = self._all(
            "SELECT next_document_id, next_chunk_id FROM knowledge_bases WHERE id = %s", (self.kb_id,)
        )
        return int(rows[0][0]), int(rows[0][1])

    def _document_count(self, cur) -> int:
        cur.execute("SELECT COUNT(*) FROM documents WHERE kb_id = %s", (self.kb_id,))
        return cur.fetchone()[0]

    def _restore_rows(
        self,
        cur,
        documents: Sequence[DocumentRecord],
        chunks: Sequence[tuple[ChunkRecord, np.ndarray]],
        counters: tuple[int, int],
    ) -> None:
        titles = {d.id: d.title for d in documents}
        for d in documents:
            cur.execute(
                "INSERT INTO documents (kb_id, id, source, title, content_hash, size, page_count, chunk_count,"
                " status, created_at, updated_at, metadata, access_groups)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::text[])",
                (self.kb_id, *document_row(d), to_json(d.metadata), check_groups(d.groups)),
            )
        terms = []
        for chunk, vector in chunks:
            tokens = chunk_tokens(titles[chunk.document_id], chunk.heading_path, chunk.text)
            cur.execute(
                "INSERT INTO chunks (kb_id, id, document_id, ordinal, text, page, heading_path, start_offset,"
                " end_offset, ocr, tokens, embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    self.kb_id,
                    chunk.id,
                    chunk.document_id,
                    chunk.ordinal,
                    *chunk_facts(chunk),
                    chunk.ocr,
                    len(tokens),
                    np.asarray(vector, dtype=np.float32),
                ),
            )
            terms += term_rows(self.kb_id, chunk.id, tokens)
        copy_terms(cur, terms)
        self._next = list(counters)

    def _update_metadata(self, document_id: int, metadata: Mapping[str, str]) -> int:
        with self.db.connection() as conn:
            return conn.execute(
                "UPDATE documents SET metadata = %s, updated_at = %s WHERE id = %s AND kb_id = %s",
                (to_json(metadata), utc_now(), document_id, self.kb_id),
            ).rowcount

    def _update_groups(self, document_id: int, groups: list[str]) -> int:
        with self.db.connection() as conn:
            return conn.execute(
                "UPDATE documents SET access_groups = %s::text[], updated_at = %s WHERE id = %s AND kb_id = %s",
                (groups, utc_now(), document_id, self.kb_id),
            ).rowcount

    def metadata_values(self, limit: int) -> dict[str, list[str]]:
        """Return each metadata key in use with its distinct values, sorted, at most `limit` per key."""
        rows = self._all(
            "SELECT DISTINCT j.key, j.value FROM documents d, jsonb_each_text(d.metadata) j"
            " WHERE d.kb_id = %s ORDER BY j.key, j.value",
            (self.kb_id,),
        )
        return first_values(rows, limit)

    def document_by_source(self, source: str) -> DocumentRecord | None:
        """Return the document stored under `source`, or None."""
        rows = self._all(
            f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE kb_id = %s AND source = %s", (self.kb_id, source)
        )
        return document_record(rows[0]) if rows else None

    def has_content_hash(self, content_hash: str) -> bool:
        """Return whether a document with this content hash is stored."""
        query = "SELECT 1 FROM documents WHERE kb_id = %s AND content_hash = %s LIMIT 1"
        return bool(self._all(query, (self.kb_id, content_hash)))

    def _document_by_id(self, document_id: int) -> DocumentRecord | None:
        rows = self._all(
            f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE kb_id = %s AND id = %s",
            (self.kb_id, document_id),
        )
        return document_record(rows[0]) if rows else None

    def documents(self) -> list[DocumentRecord]:
        """Return every document, oldest first."""
        rows = self._all(
            f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE kb_id = %s ORDER BY id", (self.kb_id,)
        )
        return [document_record(row) for row in rows]

    def chunks(self, ids: Sequence[int]) -> dict[int, ChunkRecord]:
        """Return the chunks with these ids, by id (ids not stored are left out)."""
        if not len(ids):
            return {}
        rows = self._all(
            f"SELECT {CHUNK_COLUMNS} FROM chunks c JOIN documents d ON d.kb_id = c.kb_id AND d.id = c.document_id"
            " WHERE c.kb_id = %s AND c.id = ANY(%s)",
            (self.kb_id, [int(i) for i in ids]),
        )
        return {row[0]: chunk_record(row) for row in rows}

    def lexical_search(
        self, expression: str, k: int, allowed: set[int] | None = None
    ) -> list[tuple[int, float]]:
        """Return (chunk id, BM25 score) of the `k` best matches of a `match_expression`, best first (BM25 as
        FTS5 computes it: see `pg_terms.bm25_search`)."""
        return bm25_search(self.db, self.kb_id, expression, k, allowed)

    def term_counts(self, terms: Sequence[str]) -> dict[str, int]:
        """Return how many chunks hold each of these lexical terms (terms no chunk holds are left out)."""
        if not terms:
            return {}
        rows = self._all(
            "SELECT term, COUNT(*) FROM chunk_terms WHERE kb_id = %s AND term = ANY(%s) GROUP BY term",
            (self.kb_id, list(terms)),
        )
        return {term: int(count) for term, count in rows}

    def _ids_clause(self, document_ids: list[int]) -> Clause:
        return "d.id = ANY(%s)", [document_ids]

    def _glob_clause(self, glob: str) -> Clause:
        return "d.source ~ %s", [glob_regex(glob)]

    def _metadata_clause(self, key: str, value: str) -> Clause:
        return "d.metadata ->> %s = %s", [key, value]

    def _groups_clause(self, wanted: list[str]) -> Clause:
        if not wanted:
            return "cardinality(d.access_groups) = 0", []
        return "(cardinality(d.access_groups) = 0 OR d.access_groups && %s::text[])", [wanted]

    def _chunk_ids_matching(self, clauses: list[str], values: list) -> set[int]:
        where = " AND ".join(["c.kb_id = %s", *clauses])
        query = f"SELECT c.id FROM chunks c JOIN documents d ON d.kb_id = c.kb_id AND d.id = c.document_id WHERE {where}"
        return {row[0] for row in self._all(query, [self.kb_id, *values])}

    def neighbours(self, chunk: ChunkRecord, before: int, after: int) -> list[ChunkRecord]:
        """Return the chunks within `before`/`after` places of `chunk` in its document, in order, itself included."""
        rows = self._all(
            f"SELECT {CHUNK_COLUMNS} FROM chunks c JOIN documents d ON d.kb_id = c.kb_id AND d.id = c.document_id"
            " WHERE c.kb_id = %s AND c.document_id = %s AND c.ordinal BETWEEN %s AND %s ORDER BY c.ordinal",
            (self.kb_id, chunk.document_id, chunk.ordinal - before, chunk.ordinal + after),
        )
        return [chunk_record(row) for row in rows]

    def headings(self, limit: int = 500) -> list[tuple[int, tuple[str, ...]]]:
        """Return up to `limit` distinct (document id, heading path) pairs, in each document's reading order."""
        rows = self._all(
            "SELECT document_id, heading_path FROM chunks WHERE kb_id = %s GROUP BY document_id, heading_path"
            " ORDER BY document_id, MIN(ordinal) LIMIT %s",
            (self.kb_id, limit),
        )
        return [(document_id, tuple(json.loads(path))) for document_id, path in rows]

    def count(self) -> tuple[int, int]:
        """Return (documents, chunks) stored."""
        rows = self._all(
            "SELECT (SELECT COUNT(*) FROM documents WHERE kb_id = %(kb)s),"
            " (SELECT COUNT(*) FROM chunks WHERE kb_id = %(kb)s)",
            {"kb": self.kb_id},
        )
        return int(rows[0][0]), int(rows[0][1])

    def chunk_ids(self, after: int = 0) -> np.ndarray:
        """Return the ids of every stored chunk (whose id is greater than `after`), ascending."""
        rows = self._all(
            "SELECT id FROM chunks WHERE kb_id = %s AND id > %s ORDER BY id", (self.kb_id, after)
        )
        return np.asarray([row[0] for row in rows], dtype=np.int64)

    def lexical_ids(self) -> set[int]:
        """Return the chunk ids held by the lexical index (each chunk written with its terms and length)."""
        rows = self._all(
            "SELECT c.id FROM chunks c WHERE c.kb_id = %s AND (c.tokens = 0 OR EXISTS"
            " (SELECT 1 FROM chunk_terms t WHERE t.kb_id = c.kb_id AND t.chunk_id = c.id))",
            (self.kb_id,),
        )
        return {row[0] for row in rows}

    def iter_vectors(
        self, from_id: int = 0, batch_size: int = 10_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids, vectors) of every stored chunk whose id is at least `from_id`, in batches, ascending by id."""
        after = from_id - 1
        while rows := self._all(
            "SELECT id, embedding FROM chunks WHERE kb_id = %s AND id > %s ORDER BY id LIMIT %s",
            (self.kb_id, after, batch_size),
        ):
            ids = np.asarray([row[0] for row in rows], dtype=np.int64)
            yield ids, np.stack([pg_array(row[1]) for row in rows])
            after = int(ids[-1])

    def _all(self, query: str, params: Sequence | Mapping) -> list[tuple]:
        with self.db.connection() as conn:
            return conn.execute(query, params).fetchall()


def glob_regex(glob: str) -> str:
    """Return a POSIX regular expression matching what SQLite's GLOB matches (*, ?, [...], [^...]), anchored."""
    out, i = ["^"], 0
    while i < len(glob):
        char = glob[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif (
            char == "[" and (end := glob.find("]", i + 2 if glob[i + 1 : i + 2] in ("^", "]") else i + 1)) > 0
        ):
            body = glob[i + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out) + "$"
