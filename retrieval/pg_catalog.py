"""Knowledge bases as rows of the shared PostgreSQL database: the catalog, and one knowledge base open.

The manifest is a column of the knowledge base's row (nodes share no disk), its vectors are in pgvector,
and its single writer is held with a PostgreSQL advisory lock, so two nodes never write one knowledge
base at the same time and a writer that dies lets go with its connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from retrieval.catalog import KnowledgeBaseInfo, summary, validate_name
from retrieval.errors import KnowledgeBaseBusy, KnowledgeBaseExists, KnowledgeBaseNotFound
from retrieval.knowledge_base import KnowledgeBase
from retrieval.lexical import LEXICAL_VERSION
from retrieval.manifest import EmbeddingIdentity, Manifest, VectorStore
from retrieval.pg_store import PgChunkStore
from retrieval.pg_vector_index import PgVectorIndex
from retrieval.postgres import BUILDER_LOCK_CLASS, WRITER_LOCK_CLASS, Database

PGVECTOR = VectorStore(backend="pgvector")


class PgKnowledgeBase(KnowledgeBase):
    """One knowledge base of the PostgreSQL store, open for searching and (through `writing()`) for writing.

    Everything the SQLite knowledge base does, over the shared database: its vector index is its chunk
    rows (never stale, nothing to rebuild), and its writer lock is an advisory lock that every node sees.
    """

    def __init__(
        self, database: Database, kb_id: int, manifest: Manifest, embedding: EmbeddingIdentity | None = None
    ) -> None:
        """Open the knowledge base `kb_id` described by `manifest`; with `embedding`, refuse another model."""
        self.directory = None  # type: ignore[assignment]  # it has no folder: every node reads the same rows
        self.milvus_token = None
        self.faiss_gpu = "off"
        self.database = database
        self.kb_id = kb_id
        self.manifest = manifest
        if embedding is not None:
            manifest.check_embedding(embedding)
        dimension = manifest.embedding.dimension
        self.store = PgChunkStore(database, kb_id, dimension)
        self._state_lock = threading.RLock()
        self._writer_lock = threading.Lock()
        self.index = PgVectorIndex(database, kb_id, dimension, self.store.generation)
        self.closed = False

    def refresh(self) -> None:
        """Note the store's generation (the vectors are its rows, so they are current already); return nothing."""
        self.index.generation = self.store.generation

    def switch_store(self, store: VectorStore) -> None:
        """Refuse: on PostgreSQL the vectors are in pgvector (move the whole knowledge base with `kb migrate --to sqlite`)."""
        raise ValueError(
            f"knowledge base '{self.name}' is on the PostgreSQL store, whose vectors are in pgvector; "
            "move it with `kbqa kb migrate NAME --to sqlite` first"
        )

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        # A session-level advisory lock on a connection held for the block: every node sees it, and it
        # goes with the connection when the writer dies.
        with self.database.connection() as conn:
            (held,) = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (WRITER_LOCK_CLASS, self.kb_id)
            ).fetchone()
            conn.commit()
            if not held:
                raise KnowledgeBaseBusy(
                    f"knowledge base '{self.name}' is being written by another process; try again when it ends"
                )
            try:
                yield
            finally:
                conn.rollback()
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (WRITER_LOCK_CLASS, self.kb_id))
                conn.commit()


class PgKnowledgeBaseCatalog:
    """The knowledge bases of the PostgreSQL store; `data_dir` still holds this node's calibrations."""

    def __init__(self, database: Database, data_dir: Path) -> None:
        self.database = database
        self.root = Path(data_dir) / "kbs"

    def path(self, name: str) -> Path:
        """Return where this node would keep local files of the named knowledge base (it keeps none)."""
        return self.root / validate_name(name)

    def exists(self, name: str) -> bool:
        """Return whether the named knowledge base exists."""
        validate_name(name)
        with self.database.connection() as conn:
            return (
                conn.execute("SELECT 1 FROM knowledge_bases WHERE name = %s", (name,)).fetchone() is not None
            )

    def names(self) -> list[str]:
        """Return the names of every knowledge base, sorted."""
        with self.database.connection() as conn:
            rows = conn.execute("SELECT name FROM knowledge_bases").fetchall()
        return sorted(row[0] for row in rows)

    def identity(self, name: str) -> tuple[int, str]:
        """Return what tells the named knowledge base apart from one deleted and made again, or migrated: its
        row id and manifest; KnowledgeBaseNotFound if it does not exist."""
        kb_id, manifest = self._row(name)
        return kb_id, manifest.model_dump_json()

    def create(
        self,
        name: str,
        embedding: EmbeddingIdentity,
        splitter: dict[str, Any],
        store: VectorStore | None = None,
    ) -> KnowledgeBase:
        """Create an empty knowledge base (its vectors in pgvector) and return it open; KnowledgeBaseExists if taken."""
        import psycopg

        validate_name(name)
        if store is not None and store.backend != "pgvector":
            raise ValueError(
                f"knowledge bases on the PostgreSQL store keep their vectors in pgvector, not {store.backend}"
            )
        manifest = Manifest(name=name, embedding=embedding, splitter=splitter, store=PGVECTOR)
        try:
            with self.database.connection() as conn:
                (kb_id,) = conn.execute(
                    "INSERT INTO knowledge_bases (name, manifest, lexical_version, created_at)"
                    " VALUES (%s, %s, %s, %s) RETURNING id",
                    (name, manifest.model_dump_json(), LEXICAL_VERSION, manifest.created_at),
                ).fetchone()
                PgVectorIndex.create_hnsw(conn, kb_id, embedding.dimension)
        except psycopg.errors.UniqueViolation:
            raise KnowledgeBaseExists(f"knowledge base '{name}' already exists") from None
        return PgKnowledgeBase(self.database, kb_id, manifest, embedding)

    @contextmanager
    def building(self, name: str, wait: Callable[[], None]) -> Iterator[None]:
        """Hold the lock under which one process at a time, on any node, builds the named knowledge base; return
        nothing. `wait()` runs between tries (it may raise to give up).

        A session-level advisory lock, like the writer's: every node sees it, and it goes with the connection
        when its holder dies.
        """
        key = (BUILDER_LOCK_CLASS, validate_name(name))
        with self.database.connection() as conn:
            while not conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", key).fetchone()[0]:
                conn.commit()
                wait()
            conn.commit()
            try:
                yield
            finally:
                conn.rollback()
                conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", key)
                conn.commit()

    def open(self, name: str, embedding: EmbeddingIdentity | None = None) -> KnowledgeBase:
        """Return the named knowledge base open; with `embedding`, refuse one built with another model."""
        kb_id, manifest = self._row(name)
        return PgKnowledgeBase(self.database, kb_id, manifest, embedding)

    def info(self, name: str) -> KnowledgeBaseInfo:
        """Return a summary of the named knowledge base, read from its rows."""
        kb_id, manifest = self._row(name)
        store = PgChunkStore(self.database, kb_id, manifest.embedding.dimension)
        with self.database.connection() as conn:
            (size,) = conn.execute(
                "SELECT (SELECT pg_column_size(k.*) FROM knowledge_bases k WHERE id = %(kb)s)"
                " + (SELECT COALESCE(SUM(pg_column_size(d.*)), 0) FROM documents d WHERE kb_id = %(kb)s)"
                " + (SELECT COALESCE(SUM(pg_column_size(c.*)), 0) FROM chunks c WHERE kb_id = %(kb)s)"
                " + (SELECT COALESCE(SUM(pg_column_size(t.*)), 0) FROM chunk_terms t WHERE kb_id = %(kb)s)",
                {"kb": kb_id},
            ).fetchone()
        return summary(name, manifest, store, int(size), self.root.parent)

    def delete(self, name: str) -> None:
        """Delete the named knowledge base and everything in it, in one transaction; return nothing."""
        kb_id, _ = self._row(name)
        with self.database.connection() as conn:
            conn.execute("DELETE FROM chunk_terms WHERE kb_id = %s", (kb_id,))
            conn.execute("DELETE FROM chunks WHERE kb_id = %s", (kb_id,))
            conn.execute("DELETE FROM knowledge_bases WHERE id = %s", (kb_id,))
            PgVectorIndex.drop_hnsw(conn, kb_id)

    def original(self, name: str, source: str) -> bytes | None:
        """Return the original file kept for a document of the named knowledge base, or None."""
        with self.database.connection() as conn:
            row = conn.execute(
                "SELECT o.content FROM originals o JOIN knowledge_bases k ON k.id = o.kb_id"
                " WHERE k.name = %s AND o.source = %s",
                (name, source),
            ).fetchone()
        return bytes(row[0]) if row else None

    def put_original(self, name: str, source: str, content: bytes) -> None:
        """Keep `content` as the original file of a document of the named knowledge base; return nothing."""
        with self.database.connection() as conn:
            conn.execute(
                "INSERT INTO originals (kb_id, source, content) SELECT id, %s, %s FROM knowledge_bases"
                " WHERE name = %s ON CONFLICT (kb_id, source) DO UPDATE SET content = EXCLUDED.content",
                (source, content, name),
            )

    def delete_original(self, name: str, source: str) -> None:
        """Forget the original file of a document of the named knowledge base; return nothing."""
        with self.database.connection() as conn:
            conn.execute(
                "DELETE FROM originals o USING knowledge_bases k WHERE k.id = o.kb_id AND k.name = %s AND o.source = %s",
                (name, source),
            )

    def _row(self, name: str) -> tuple[int, Manifest]:
        validate_name(name)
        with self.database.connection() as conn:
            row = conn.execute(
                "SELECT id, manifest::text FROM knowledge_bases WHERE name = %s", (name,)
            ).fetchone()
        if row is None:
            raise KnowledgeBaseNotFound(f"knowledge base '{name}' does not exist")
        return int(row[0]), Manifest.model_validate_json(row[1])
