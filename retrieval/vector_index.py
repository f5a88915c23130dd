"""The searchable copy of a knowledge base's vectors: the backend protocol, and FAISS (the default).

FAISS searches by inner product over L2-normalised vectors, i.e. cosine, with stable 64-bit ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from retrieval.atomic import atomic_write, atomic_write_text

if TYPE_CHECKING:
    import faiss

INDEX_FILE = "index.faiss"
INDEX_STATE_FILE = "index.json"


class VectorIndex(Protocol):
    """A searchable copy of the chunk store's vectors, tagged with the store generation it reflects.

    SQLite stays the truth: a copy whose generation or count differs from the store's is rebuilt.
    """

    generation: int

    @property
    def count(self) -> int:
        """Return the number of vectors held."""
        ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under their ids; return nothing."""
        ...

    def remove(self, ids: np.ndarray) -> None:
        """Remove the vectors with these ids; return nothing."""
        ...

    def ids(self) -> np.ndarray:
        """Return every id held, ascending."""
        ...

    def search(
        self, query: np.ndarray, k: int, allowed: set[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (cosine scores, ids) of the `k` nearest vectors, best first, among `allowed` ids if given."""
        ...

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Return the stored vectors of these ids, in the same order."""
        ...

    def save(self) -> None:
        """Make the vectors and then the generation durable; return nothing."""
        ...

    def close(self) -> None:
        """Release connections held; return nothing."""
        ...

    def destroy(self) -> None:
        """Delete this copy's stored data for good; return nothing."""
        ...


class FaissIndex:
    """A FAISS `IndexIDMap2(IndexFlatIP)` saved in the knowledge base's directory."""

    def __init__(self, index: faiss.Index, generation: int, directory: Path) -> None:
        self.index = index
        self.generation = generation
        self.directory = directory

    @classmethod
    def empty(cls, dimension: int, directory: Path) -> FaissIndex:
        """Return an empty index for vectors of `dimension`, to be saved in `directory`."""
        import faiss

        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dimension)), 0, directory)

    @classmethod
    def load(cls, directory: Path) -> FaissIndex | None:
        """Return the index saved in `directory`, or None when there is none or it cannot be read."""
        import faiss

        try:
            state = json.loads((directory / INDEX_STATE_FILE).read_text(encoding="utf-8"))
            index = faiss.read_index(str(directory / INDEX_FILE))
        except (OSError, ValueError, RuntimeError):
            return None
        return cls(index, int(state["generation"]), directory)

    def save(self) -> None:
        """Write the index, then its generation, each atomically; return nothing.

        The generation goes last: a crash between the two leaves an older generation beside a newer
        index, which the knowledge base treats as stale and rebuilds, never as current.
        """
        import faiss

        atomic_write(self.directory / INDEX_FILE, lambda tmp: faiss.write_index(self.index, str(tmp)))
        state = {"generation": self.generation, "count": self.count}
        atomic_write_text(self.directory / INDEX_STATE_FILE, json.dumps(state) + "\n")

    def close(self) -> None:
        """Return nothing: the index lives in memory and in its files."""

    def destroy(self) -> None:
        """Delete the saved index files; return nothing."""
        for name in (INDEX_STATE_FILE, INDEX_FILE):
            (self.directory / name).unlink(missing_ok=True)

    @property
    def count(self) -> int:
        """Return the number of vectors held."""
        return int(self.index.ntotal)

    @property
    def dimension(self) -> int:
        """Return the vectors' dimension."""
        return int(self.index.d)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under their ids; return nothing."""
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))

    def remove(self, ids: np.ndarray) -> None:
        """Remove the vectors with these ids; return nothing."""
        if len(ids):
            self.index.remove_ids(ids.astype(np.int64))

    def ids(self) -> np.ndarray:
        """Return every id held, ascending."""
        import faiss

        return np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))

    def search(
        self, query: np.ndarray, k: int, allowed: set[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (cosine scores, ids) of the `k` nearest vectors, best first, among `allowed` ids if given."""
        import faiss

        k = min(k, self.count if allowed is None else len(allowed))
        if k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        params = None
        if allowed is not None:
            params = faiss.SearchParameters(
                sel=faiss.IDSelectorBatch(np.fromiter(allowed, np.int64, len(allowed)))
            )
        query = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        scores, ids = self.index.search(query, k, params=params)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Return the stored vectors of these ids, in the same order."""
        if not len(ids):
            return np.zeros((0, self.dimension), np.float32)
        return self.index.reconstruct_batch(ids.astype(np.int64))
