"""One knowledge base's documents, chunks, lexical terms and vectors in PostgreSQL (the `postgres` store).

The same contract as the SQLite `ChunkStore`, over rows of the shared database that carry the knowledge
base's id: one transaction adds or replaces whole documents with their vectors and terms and bumps the
generation. The lexical index is a terms table (one row per chunk and FTS5 token, with its frequency)
ranked by BM25 computed in SQL exactly as FTS5's `bm25()` computes it (k1 = 1.2, b = 0.75, the same
IDF floor), so hybrid fusion and the answerability calibration read the same figures on either store.
The vectors are pgvector columns with one HNSW index (cosine) per knowledge base: `PgVectorIndex` searches
them, so there is no separate copy to rebuild or keep in step.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from retrieval.errors import DocumentNotFound
from retrieval.lexical import LEXICAL_VERSION, expression_terms, fts_tokens, indexed_text
from retrieval.metadata import to_json
from retrieval.postgres import Database
from retrieval.store import (
    ChunkRecord,
    DocumentRecord,
    NewDocument,
    WriteResult,
    _chunk_record,
    _document_record,
    _document_row,
    _searchable,
    chunk_facts,
    document_facts,
)
from retrieval.timestamps import utc_now

# FTS5's bm25() constants.
K1, B = 1.2, 0.75
# HNSW explores at least this many candidates per search (pgvector's hnsw.ef_search); deeper searches more.
EF_SEARCH = 100
# pgvector's HNSW keeps at most this many candidates (hnsw.ef_search's maximum); deeper searches are exact.
MAX_EF_SEARCH = 1000

DOCUMENT_COLUMNS = (
    "id, source, title, content_hash, size, page_count, chunk_count, status, created_at, updated_at, "
    "metadata::text"
)
CHUNK_COLUMNS = (
    "c.id, c.document_id, c.ordinal, c.text, c.page, c.heading_path, c.start_offset, c.end_offset, "
    "c.ocr, d.source, d.title, d.metadata::text"
)


class PgChunkStore:
    """Documents and chunks of one knowledge base (`kb_id`) in the shared PostgreSQL database."""

    def __init__(self, database: Database, kb_id: int, dimension: int) -> None:
        self.db = database
        self.kb_id = kb_id
        self.dimension = dimension
        self._next = [1, 1]  # the next document and chunk ids, read under the write's row lock
        self._remake_stale_terms()

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

    def write(self, documents: Sequence[NewDocument], delete_ids: Sequence[int] = ()) -> WriteResult:
        """Add documents (replacing any of the same source) and delete others, all in one transaction."""
        added_ids: list[int] = []
        added_vectors: list[np.ndarray] = []
        removed_ids: list[int] = []
        document_ids: list[int] = []
        with self.db.connection() as conn, conn.cursor() as cur:
            # Writers of one knowledge base queue here, whichever node they run on.
            cur.execute(
                "SELECT next_document_id, next_chunk_id FROM knowledge_bases WHERE id = %s FOR UPDATE",
                (self.kb_id,),
            )
            self._next = list(cur.fetchone())
            for document_id in delete_ids:
                removed_ids += self._delete_document(cur, document_id)
            for document in documents:
                cur.execute(
                    "SELECT id, created_at FROM documents WHERE kb_id = %s AND source = %s",
                    (self.kb_id, document.source),
                )
                old = cur.fetchone()
                if old:
                    removed_ids += self._delete_document(cur, old[0])
                # A new version keeps the document's id and creation time: links to it stay valid.
                document_id, chunk_ids = self._insert_document(cur, document, *(old or (None, None)))
                document_ids.append(document_id)
                added_ids += chunk_ids
                added_vectors.append(np.asarray(document.vectors, dtype=np.float32))
            cur.execute(
                "UPDATE knowledge_bases SET generation = generation + 1,"
                f" next_document_id = {int(self._next[0])}, next_chunk_id = {int(self._next[1])},"
                " chunk_count = (SELECT COUNT(*) FROM chunks WHERE kb_id = %(kb)s),"
                " token_total = (SELECT COALESCE(SUM(tokens), 0) FROM chunks WHERE kb_id = %(kb)s)"
                " WHERE id = %(kb)s RETURNING generation",
                {"kb": self.kb_id},
            )
            (generation,) = cur.fetchone()
        return WriteResult.of(added_ids, added_vectors, removed_ids, document_ids, generation, self.dimension)

    def _insert_document(
        self, cur, document: NewDocument, document_id: int | None = None, created_at: str | None = None
    ) -> tuple[int, list[int]]:
        if len(document.chunks) != len(document.vectors):
            raise ValueError(
                f"{document.source}: {len(document.chunks)} chunks but {len(document.vectors)} vectors"
            )
        now = utc_now()
        if document_id is None:
            document_id = self._next[0]
            self._next[0] += 1
        cur.execute(
            "INSERT INTO documents (id, kb_id, source, title, content_hash, size, page_count, chunk_count,"
            " status, created_at, updated_at, metadata) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'ready', %s, %s, %s)"
            " RETURNING id",
            (
                document_id,
                self.kb_id,
                *document_facts(document),
                created_at or now,
                now,
                to_json(document.metadata),
            ),
        )
        (document_id,) = cur.fetchone()
        chunk_ids: list[int] = []
        term_rows: list[tuple] = []
        for ordinal, (chunk, vector) in enumerate(zip(document.chunks, document.vectors, strict=True)):
            tokens = fts_tokens(indexed_text(_searchable(document.title, chunk.heading_path, chunk.text)))
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
            term_rows += [(self.kb_id, term, chunk_id, tf) for term, tf in Counter(tokens).items()]
        if term_rows:
            with cur.copy("COPY chunk_terms (kb_id, term, chunk_id, tf) FROM STDIN") as copy:
                for row in term_rows:
                    copy.write_row(row)
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
        if cur.rowcount == 0:
            raise DocumentNotFound(f"no document with id {document_id}")
        return sorted(ids)

    def _remake_stale_terms(self) -> None:
        # As in the SQLite store: terms cut another way (an older LEXICAL_VERSION) are remade once.
        with self.db.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT lexical_version FROM knowledge_bases WHERE id = %s", (self.kb_id,))
            row = cur.fetchone()
            if row is None or row[0] == LEXICAL_VERSION:
                return
            cur.execute("SELECT lexical_version FROM knowledge_bases WHERE id = %s FOR UPDATE", (self.kb_id,))
            if cur.fetchone()[0] == LEXICAL_VERSION:
                return
            cur.execute(
                "SELECT c.id, d.title, c.heading_path, c.text FROM chunks c"
                " JOIN documents d ON d.kb_id = c.kb_id AND d.id = c.document_id"
                " WHERE c.kb_id = %s",
                (self.kb_id,),
            )
            rows = cur.fetchall()
            cur.execute("DELETE FROM chunk_terms WHERE kb_id = %s", (self.kb_id,))
            for chunk_id, title, path, text in rows:
                tokens = fts_tokens(indexed_text(_searchable(title, json.loads(path), text)))
                cur.execute(
                    "UPDATE chunks SET tokens = %s WHERE kb_id = %s AND id = %s",
                    (len(tokens), self.kb_id, chunk_id),
                )
                with cur.copy("COPY chunk_terms (kb_id, term, chunk_id, tf) FROM STDIN") as copy:
                    for term, tf in Counter(tokens).items():
                        copy.write_row((self.kb_id, term, chunk_id, tf))
            cur.execute(
                "UPDATE knowledge_bases SET lexical_version = %(v)s,"
                " token_total = (SELECT COALESCE(SUM(tokens), 0) FROM chunks WHERE kb_id = %(kb)s)"
                " WHERE id = %(kb)s",
                {"v": LEXICAL_VERSION, "kb": self.kb_id},
            )

    def id_counters(self) -> tuple[int, int]:
        """Return the next document id and the next chunk id this store would give (ids are never reused)."""
        rows = self._all(
            "SELECT next_document_id, next_chunk_id FROM knowledge_bases WHERE id = %s", (self.kb_id,)
        )
        return int(rows[0][0]), int(rows[0][1])

    def restore(
        self,
        documents: Sequence[DocumentRecord],
        chunks: Sequence[tuple[ChunkRecord, np.ndarray]],
        counters: tuple[int, int],
    ) -> int:
        """Write documents and chunks as they were in another store, ids included, into this empty store, in
        one transaction, and continue its ids from `counters`; return the new generation."""
        titles = {d.id: d.title for d in documents}
        with self.db.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM knowledge_bases WHERE id = %s FOR UPDATE", (self.kb_id,))
            cur.execute("SELECT COUNT(*) FROM documents WHERE kb_id = %s", (self.kb_id,))
            if cur.fetchone()[0]:
                raise ValueError("a knowledge base is restored only into an empty store")
            for d in documents:
                cur.execute(
                    "INSERT INTO documents (kb_id, id, source, title, content_hash, size, page_count, chunk_count,"
                    " status, created_at, updated_at, metadata) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (self.kb_id, *_document_row(d), to_json(d.metadata)),
                )
            term_rows = []
            for chunk, vector in chunks:
                tokens = fts_tokens(
                    indexed_text(_searchable(titles[chunk.document_id], chunk.heading_path, chunk.text))
                )
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
                term_rows += [(self.kb_id, term, chunk.id, tf) for term, tf in Counter(tokens).items()]
            if term_rows:
                with cur.copy("COPY chunk_terms (kb_id, term, chunk_id, tf) FROM STDIN") as copy:
                    for row in term_rows:
                        copy.write_row(row)
            cur.execute(
                "UPDATE knowledge_bases SET generation = generation + 1, next_document_id = %(d)s,"
                " next_chunk_id = %(c)s, chunk_count = (SELECT COUNT(*) FROM chunks WHERE kb_id = %(kb)s),"
                " token_total = (SELECT COALESCE(SUM(tokens), 0) FROM chunks WHERE kb_id = %(kb)s)"
                " WHERE id = %(kb)s RETURNING generation",
                {"d": counters[0], "c": counters[1], "kb": self.kb_id},
            )
            (generation,) = cur.fetchone()
        return int(generation)

    def set_metadata(self, document_id: int, metadata: Mapping[str, str]) -> None:
        """Replace one document's metadata; return nothing (chunks, vectors and the generation stay)."""
        with self.db.connection() as conn:
            cursor = conn.execute(
                "UPDATE documents SET metadata = %s, updated_at = %s WHERE id = %s AND kb_id = %s",
                (to_json(metadata), utc_now(), document_id, self.kb_id),
            )
            if cursor.rowcount == 0:
                raise DocumentNotFound(f"no document with id {document_id}")

    def metadata_values(self, limit: int) -> dict[str, list[str]]:
        """Return each metadata key in use with its distinct values, sorted, at most `limit` per key."""
        rows = self._all(
            "SELECT DISTINCT j.key, j.value FROM documents d, jsonb_each_text(d.metadata) j"
            " WHERE d.kb_id = %s ORDER BY j.key, j.value",
            (self.kb_id,),
        )
        values: dict[str, list[str]] = {}
        for key, value in rows:
            shown = values.setdefault(key, [])
            if len(shown) < limit:
                shown.append(value)
        return values

    def document_by_source(self, source: str) -> DocumentRecord | None:
        """Return the document stored under `source`, or None."""
        rows = self._all(
            f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE kb_id = %s AND source = %s", (self.kb_id, source)
        )
        return _document_record(rows[0]) if rows else None

    def has_content_hash(self, content_hash: str) -> bool:
        """Return whether a document with this content hash is stored."""
        query = "SELECT 1 FROM documents WHERE kb_id = %s AND content_hash = %s LIMIT 1"
        return bool(self._all(query, (self.kb_id, content_hash)))

    def document(self, document_id: int) -> DocumentRecord:
        """Return the document with this id, or raise DocumentNotFound."""
        rows = self._all(
            f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE kb_id = %s AND id = %s",
            (self.kb_id, document_id),
        )
        if not rows:
            raise DocumentNotFound(f"no document with id {document_id}")
        return _document_record(rows[0])

    def documents(self) -> list[DocumentRecord]:
        """Return every document, oldest first."""
        rows = self._all(
            f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE kb_id = %s ORDER BY id", (self.kb_id,)
        )
        return [_document_record(row) for row in rows]

    def chunks(self, ids: Sequence[int]) -> dict[int, ChunkRecord]:
        """Return the chunks with these ids, by id (ids not stored are left out)."""
        if not len(ids):
            return {}
        rows = self._all(
            f"SELECT {CHUNK_COLUMNS} FROM chunks c JOIN documents d ON d.kb_id = c.kb_id AND d.id = c.document_id"
            " WHERE c.kb_id = %s AND c.id = ANY(%s)",
            (self.kb_id, [int(i) for i in ids]),
        )
        return {row[0]: _chunk_record(row) for row in rows}

    def lexical_search(
        self, expression: str, k: int, allowed: set[int] | None = None
    ) -> list[tuple[int, float]]:
        """Return (chunk id, BM25 score) of the `k` best matches of a `match_expression`, best first.

        BM25 as FTS5 computes it, over the tokens FTS5 would make: N and the average length are the
        knowledge base's, and a phrase's IDF is floored at 1e-6. A quoted term of several tokens (3.5)
        is found in a chunk holding all its tokens, as often as its rarest one, where FTS5 would also
        ask for them side by side.
        """
        phrases = list(
            dict.fromkeys(tuple(dict.fromkeys(fts_tokens(t))) for t in expression_terms(expression))
        )
        phrases = [phrase for phrase in phrases if phrase]
        if not phrases or k <= 0:
            return []
        numbers = [n for n, phrase in enumerate(phrases) for _ in phrase]
        tokens = [token for phrase in phrases for token in phrase]
        widths = [len(phrase) for phrase in phrases for _ in phrase]
        filter_clause = "AND f.chunk_id = ANY(%(allowed)s)" if allowed is not None else ""
        rows = self._all(
            "WITH q(phrase, term, width) AS (SELECT * FROM unnest(%(numbers)s::int[], %(tokens)s::text[],"
            "  %(widths)s::int[])),"
            " found AS (SELECT q.phrase, t.chunk_id, MIN(t.tf) AS tf FROM chunk_terms t JOIN q ON q.term = t.term"
            "  WHERE t.kb_id = %(kb)s GROUP BY q.phrase, q.width, t.chunk_id HAVING COUNT(*) = q.width),"
            " stats AS (SELECT chunk_count::float8 AS n,"
            "  GREATEST(token_total, 1)::float8 / GREATEST(chunk_count, 1) AS avgdl"
            "  FROM knowledge_bases WHERE id = %(kb)s),"
            " idf AS (SELECT f.phrase, LN((s.n - COUNT(*) + 0.5) / (COUNT(*) + 0.5)) AS w"
            "  FROM found f, stats s GROUP BY f.phrase, s.n)"
            " SELECT f.chunk_id, SUM(CASE WHEN idf.w <= 0 THEN 1e-6 ELSE idf.w END * f.tf * %(k1p1)s"
            "  / (f.tf + %(k1)s * (1 - %(b)s + %(b)s * c.tokens / s.avgdl))) AS score"
            " FROM found f JOIN idf ON idf.phrase = f.phrase JOIN chunks c ON c.kb_id = %(kb)s AND c.id = f.chunk_id, stats s"
            f" WHERE TRUE {filter_clause}"
            " GROUP BY f.chunk_id ORDER BY score DESC, f.chunk_id LIMIT %(k)s",
            {
                "kb": self.kb_id,
                "numbers": numbers,
                "tokens": tokens,
                "widths": widths,
                "allowed": sorted(allowed or ()),
                "k": k,
                "k1": K1,
                "k1p1": K1 + 1,
                "b": B,
            },
        )
        return [(int(chunk_id), float(score)) for chunk_id, score in rows]

    def term_counts(self, terms: Sequence[str]) -> dict[str, int]:
        """Return how many chunks hold each of these lexical terms (terms no chunk holds are left out)."""
        if not terms:
            return {}
        rows = self._all(
            "SELECT term, COUNT(*) FROM chunk_terms WHERE kb_id = %s AND term = ANY(%s) GROUP BY term",
            (self.kb_id, list(terms)),
        )
        return {term: int(count) for term, count in rows}

    def chunk_ids_where(
        self,
        document_ids: Sequence[int] | None,
        source_glob: str | None,
        metadata: Mapping[str, str] | None = None,
    ) -> set[int]:
        """Return the ids of chunks passing every filter given: document ids, source glob, metadata values."""
        clauses, values = ["c.kb_id = %s"], [self.kb_id]
        if document_ids is not None:
            clauses.append("d.id = ANY(%s)")
            values.append([int(i) for i in document_ids])
        if source_glob is not None:
            clauses.append("d.source ~ %s")
            values.append(glob_regex(source_glob))
        for key, value in (metadata or {}).items():
            clauses.append("d.metadata ->> %s = %s")
            values += [key, value]
        query = f"SELECT c.id FROM chunks c JOIN documents d ON d.kb_id = c.kb_id AND d.id = c.document_id WHERE {' AND '.join(clauses)}"
        return {row[0] for row in self._all(query, values)}

    def neighbours(self, chunk: ChunkRecord, before: int, after: int) -> list[ChunkRecord]:
        """Return the chunks within `before`/`after` places of `chunk` in its document, in order, itself included."""
        rows = self._all(
            f"SELECT {CHUNK_COLUMNS} FROM chunks c JOIN documents d ON d.kb_id = c.kb_id AND d.id = c.document_id"
            " WHERE c.kb_id = %s AND c.document_id = %s AND c.ordinal BETWEEN %s AND %s ORDER BY c.ordinal",
            (self.kb_id, chunk.document_id, chunk.ordinal - before, chunk.ordinal + after),
        )
        return [_chunk_record(row) for row in rows]

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
            yield ids, np.stack([_array(row[1]) for row in rows])
            after = int(ids[-1])

    def _all(self, query: str, params: Sequence | Mapping) -> list[tuple]:
        with self.db.connection() as conn:
            return conn.execute(query, params).fetchall()


class PgVectorIndex:
    """The vectors of one knowledge base as they lie in its chunk rows, searched with pgvector (HNSW, cosine).

    The store writes them in its own transactions, so there is nothing to add, remove or save here,
    and the copy is never stale: its generation is the store's.
    """

    def __init__(self, database: Database, kb_id: int, dimension: int, generation: int = 0) -> None:
        self.db = database
        self.kb_id = kb_id
        self.dimension = dimension
        self.generation = generation

    @staticmethod
    def create_hnsw(conn, kb_id: int, dimension: int) -> None:
        """Create the knowledge base's HNSW index (cosine, over its vectors cast to their dimension)."""
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS chunks_hnsw_{int(kb_id)} ON chunks USING hnsw"
            f" ((embedding::vector({int(dimension)})) vector_cosine_ops) WHERE kb_id = {int(kb_id)}"
        )

    @staticmethod
    def drop_hnsw(conn, kb_id: int) -> None:
        """Drop the knowledge base's HNSW index."""
        conn.execute(f"DROP INDEX IF EXISTS chunks_hnsw_{int(kb_id)}")

    @property
    def count(self) -> int:
        """Return the number of vectors held."""
        with self.db.connection() as conn:
            return int(
                conn.execute("SELECT COUNT(*) FROM chunks WHERE kb_id = %s", (self.kb_id,)).fetchone()[0]
            )

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Return nothing: the store wrote the vectors with their chunks."""

    def remove(self, ids: np.ndarray) -> None:
        """Return nothing: the store deleted the vectors with their chunks."""

    def ids(self) -> np.ndarray:
        """Return every id held, ascending."""
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT id FROM chunks WHERE kb_id = %s ORDER BY id", (self.kb_id,)
            ).fetchall()
        return np.asarray([row[0] for row in rows], dtype=np.int64)

    def search(
        self, query: np.ndarray, k: int, allowed: set[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (cosine scores, ids) of the `k` nearest vectors, best first, among `allowed` ids if given.

        Unfiltered, the HNSW index answers (exploring at least EF_SEARCH candidates); among `allowed`
        ids, or deeper than HNSW keeps, the distances are computed for every candidate (exact).
        """
        if k <= 0 or (allowed is not None and not allowed):
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        vector = np.asarray(query, dtype=np.float32).reshape(-1)
        dim = int(self.dimension)
        distance = f"embedding::vector({dim}) <=> %(q)s::vector({dim})"
        params: dict = {"kb": self.kb_id, "q": vector, "k": k}
        exact = allowed is not None or k > MAX_EF_SEARCH
        if allowed is not None:
            params["allowed"] = sorted(int(i) for i in allowed)
        # `+ 0` keeps the planner off the HNSW index where the answer must be exact (ties then go by id); the
        # index orders by the distance alone.
        order = f"({distance}) + 0, id" if exact else distance
        with self.db.connection() as conn:
            if not exact:
                conn.execute(f"SET LOCAL hnsw.ef_search = {max(EF_SEARCH, min(k, MAX_EF_SEARCH))}")
            rows = conn.execute(
                f"SELECT id, 1 - ({distance}) FROM chunks WHERE kb_id = %(kb)s"
                + (" AND id = ANY(%(allowed)s)" if allowed is not None else "")
                + f" ORDER BY {order} LIMIT %(k)s",
                params,
            ).fetchall()
        ids = np.asarray([row[0] for row in rows], dtype=np.int64)
        return np.asarray([row[1] for row in rows], dtype=np.float32), ids

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Return the stored vectors of these ids, in the same order."""
        if not len(ids):
            return np.zeros((0, self.dimension), np.float32)
        wanted = [int(i) for i in ids]
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT id, embedding FROM chunks WHERE kb_id = %s AND id = ANY(%s)", (self.kb_id, wanted)
            ).fetchall()
        found = {row[0]: _array(row[1]) for row in rows}
        missing = [i for i in wanted if i not in found]
        if missing:
            raise KeyError(f"no vector for chunk ids {missing[:5]}")
        return np.stack([found[i] for i in wanted])

    def save(self) -> None:
        """Return nothing: every write is committed by the store."""

    def close(self) -> None:
        """Return nothing: connections belong to the process's pool."""

    def destroy(self) -> None:
        """Drop this knowledge base's HNSW index (its vectors go with its rows); return nothing."""
        with self.db.connection() as conn:
            self.drop_hnsw(conn, self.kb_id)


def _array(value: object) -> np.ndarray:
    """Return a vector read from pgvector as a float32 array (its adapter gives a `Vector` or an array)."""
    to_numpy = getattr(value, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy else value, dtype=np.float32)


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
