"""One knowledge base's vectors as they lie in its PostgreSQL chunk rows, searched with pgvector (HNSW, cosine).

The `VectorIndex` of the `postgres` store: `pg_store.py`'s `PgChunkStore` writes the vectors with their
chunks, so this index only reads them.
"""

from __future__ import annotations

import numpy as np

from retrieval.postgres import Database

# HNSW explores at least this many candidates per search (pgvector's hnsw.ef_search); deeper searches more.
EF_SEARCH = 100
# pgvector's HNSW keeps at most this many candidates (hnsw.ef_search's maximum); deeper searches are exact.
MAX_EF_SEARCH = 1000


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
        found = {row[0]: pg_array(row[1]) for row in rows}
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


def pg_array(value: object) -> np.ndarray:
    """Return a vector read from pgvector as a float32 array (its adapter gives a `Vector` or an array)."""
    to_numpy = getattr(value, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy else value, dtype=np.float32)
