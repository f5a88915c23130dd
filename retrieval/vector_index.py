"""The searchable copy of a knowledge base's vectors: the backend protocol, and FAISS (the default).

FAISS searches by inner product over L2-normalised vectors, i.e. cosine, with stable 64-bit ids.
"""

from __future__ import annotations

import json
import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from retrieval.atomic import atomic_write, atomic_write_text

if TYPE_CHECKING:
    import faiss

INDEX_FILE = "index.faiss"
INDEX_STATE_FILE = "index.json"
FaissGpu = Literal["auto", "on", "off"]
# The GPU's top-k selection takes at most this many results; deeper searches run on the CPU copy.
GPU_MAX_K = 2048


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


@cache
def faiss_gpu_problem() -> str | None:
    """Return why FAISS cannot search on a GPU in this process, or None when it can."""
    try:
        import faiss
    except ImportError:
        return "faiss is not installed"
    if not hasattr(faiss, "StandardGpuResources"):
        return "the installed faiss has no GPU support (install faiss-gpu-cu12 in place of faiss-cpu)"
    if faiss.get_num_gpus() < 1:
        return "faiss sees no CUDA device"
    return None


def use_faiss_gpu(mode: FaissGpu) -> bool:
    """Return whether FAISS indexes search on the GPU under `mode`; ValueError when `on` cannot be honoured."""
    if mode == "off":
        return False
    problem = faiss_gpu_problem()
    if problem is not None and mode == "on":
        raise ValueError(f"vector_store.faiss_gpu is 'on', but {problem}; set it to auto or off")
    return problem is None


@cache
def _gpu_resources() -> faiss.StandardGpuResources:
    """Return the process's one set of GPU resources (scratch memory, streams), made on first use."""
    import faiss

    return faiss.StandardGpuResources()


# GPU resources serve one search at a time (FAISS's rule), whichever knowledge base it is for.
_gpu_lock = threading.Lock()


class FaissIndex:
    """A FAISS `IndexIDMap2(IndexFlatIP)` saved in the knowledge base's directory.

    With `gpu`, exact searches run on a copy of the flat vectors in GPU memory, made at the first search
    after each change; the file on disk and every write stay with the CPU index.
    """

    def __init__(self, index: faiss.Index, generation: int, directory: Path, gpu: bool = False) -> None:
        self.index = index
        self.generation = generation
        self.directory = directory
        self.gpu = gpu
        self._gpu_copy: tuple[faiss.Index, np.ndarray] | None = None  # the flat vectors there, and their ids

    @classmethod
    def empty(cls, dimension: int, directory: Path, gpu: bool = False) -> FaissIndex:
        """Return an empty index for vectors of `dimension`, to be saved in `directory`."""
        import faiss

        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dimension)), 0, directory, gpu)

    @classmethod
    def load(cls, directory: Path, gpu: bool = False) -> FaissIndex | None:
        """Return the index saved in `directory`, or None when there is none or it cannot be read."""
        import faiss

        try:
            state = json.loads((directory / INDEX_STATE_FILE).read_text(encoding="utf-8"))
            index = faiss.read_index(str(directory / INDEX_FILE))
        except (OSError, ValueError, RuntimeError):
            return None
        return cls(index, int(state["generation"]), directory, gpu)

    @property
    def on_gpu(self) -> bool:
        """Return whether a copy of the vectors is in GPU memory now."""
        return self._gpu_copy is not None

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
            self._gpu_copy = None

    def remove(self, ids: np.ndarray) -> None:
        """Remove the vectors with these ids; return nothing."""
        if len(ids):
            self.index.remove_ids(ids.astype(np.int64))
            self._gpu_copy = None

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
        if self.gpu and allowed is None and k <= GPU_MAX_K:
            return self._search_on_gpu(query, k)
        scores, ids = self.index.search(query, k, params=params)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]

    def _search_on_gpu(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, ids) of the `k` nearest vectors, searched on the GPU copy of the flat vectors."""
        import faiss

        with _gpu_lock:
            if self._gpu_copy is None:
                # The flat index alone goes over (a filtered search needs the CPU's id selector); its
                # rows are the id map's positions, so they are turned into ids here.
                flat = faiss.index_cpu_to_gpu(_gpu_resources(), 0, self.index.index)
                self._gpu_copy = (flat, faiss.vector_to_array(self.index.id_map).astype(np.int64))
            flat, row_ids = self._gpu_copy
            scores, rows = flat.search(query, k)
        keep = rows[0] >= 0
        return scores[0][keep], row_ids[rows[0][keep]]

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Return the stored vectors of these ids, in the same order."""
        if not len(ids):
            return np.zeros((0, self.dimension), np.float32)
        return self.index.reconstruct_batch(ids.astype(np.int64))
