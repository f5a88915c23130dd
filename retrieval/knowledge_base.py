"""A knowledge base on disk: manifest, SQLite chunk store, and vector index (FAISS or Milvus), kept consistent.

Crash safety rests on one rule: SQLite is the truth and the vector index is derived from it. Each write
is one SQLite transaction that adds or removes whole documents (with their vectors) and bumps a
generation counter. The index is saved with the generation it reflects, the generation last; on open,
an index whose generation or size differs from the store's is rebuilt from the stored vectors. So a
process killed at any moment leaves each document either fully old or fully new.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.errors import KnowledgeBaseBusy
from retrieval.index_backends import empty_index, load_index
from retrieval.manifest import EmbeddingIdentity, Manifest, VectorStore, read_manifest, write_manifest
from retrieval.store import ChunkRecord, ChunkStore, DocumentRecord, NewDocument, WriteResult
from retrieval.vector_index import FaissGpu, VectorIndex

log = logging.getLogger(__name__)

STORE_FILE = "store.sqlite"
LOCK_FILE = "write.lock"


@dataclass(frozen=True)
class ScoredChunk:
    """A chunk found by vector search, with its cosine similarity to the query (in [-1, 1])."""

    score: float
    chunk: ChunkRecord


@dataclass
class ConsistencyReport:
    """What disagrees between the vector index and the chunk store (empty lists: consistent)."""

    ids_without_chunk: list[int] = field(default_factory=list)
    chunks_without_vector: list[int] = field(default_factory=list)
    chunks_without_terms: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Return whether vector-index ids, chunk rows and lexical-index rows all name the same chunks."""
        return not (self.ids_without_chunk or self.chunks_without_vector or self.chunks_without_terms)


class KnowledgeBase:
    """One named knowledge base, open for searching and (through `writing()`) for writing."""

    def __init__(
        self,
        directory: Path,
        embedding: EmbeddingIdentity | None = None,
        milvus_token: str | None = None,
        faiss_gpu: FaissGpu = "off",
    ) -> None:
        """Open the knowledge base in `directory`; `milvus_token` signs in to a Milvus server, if it uses one;
        `faiss_gpu` says whether a FAISS index searches on the GPU."""
        self.directory = directory
        self.milvus_token = milvus_token
        self.faiss_gpu = faiss_gpu
        self.manifest: Manifest = read_manifest(directory)
        if embedding is not None:
            self.manifest.check_embedding(embedding)
        self.store = ChunkStore(directory / STORE_FILE, self.manifest.embedding.dimension)
        # Guards the store connection and the in-memory index; held only for one read or write.
        self._state_lock = threading.RLock()
        # One writer at a time, within this process and across processes (the file lock).
        self._writer_lock = threading.Lock()
        self.index = self._load_index()
        self.closed = False

    @property
    def name(self) -> str:
        """Return the knowledge base's name."""
        return self.manifest.name

    def close(self) -> None:
        """Release the store and vector index connections, once any read or write under way ends; return nothing."""
        with self._state_lock:
            self.store.close()
            self.index.close()
            self.closed = True

    def refresh(self) -> None:
        """Bring the vector index up to date with what other processes wrote since it was loaded; return nothing.

        For a knowledge base kept open for a long time (the server's); this process's own writes keep
        the index current as they go. A FAISS index catches up in place: chunk ids only grow
        (AUTOINCREMENT) and a chunk's vector never changes, so it adds the chunks above its newest id
        and, only when the counts say some were deleted, drops the ids SQLite no longer has, rather
        than being rebuilt at each batch another process commits. Should a commit land between these
        reads, the next call, seeing a newer generation still, finishes the work. A Milvus
        collection is written by the other process directly; it is opened again, which checks its
        generation (and rebuilds it after a writer that died half-way) as at open.
        """
        with self._state_lock:
            generation = self.store.generation
            if self.index.generation == generation:
                return
            if self.manifest.store.backend == "milvus":
                stale, self.index = self.index, self._load_index()
                stale.close()
                return
            held = self.index.ids()
            new = self.store.chunk_ids(after=int(held[-1]) if len(held) else 0)
            if len(held) + len(new) != self.store.count()[1]:  # chunks were deleted too
                self.index.remove(np.setdiff1d(held, self.store.chunk_ids(), assume_unique=True))
            if len(new):
                for ids, vectors in self.store.iter_vectors(from_id=int(new[0])):
                    self.index.add(ids, vectors)
            self.index.generation = generation

    def _load_index(self) -> VectorIndex:
        index = load_index(self.directory, self.manifest, self.milvus_token, self.faiss_gpu)
        generation = self.store.generation
        chunk_count = self.store.count()[1]
        if index is not None and index.generation == generation and index.count == chunk_count:
            return index
        if index is not None or chunk_count:
            log.warning("rebuilding the vector index from the chunk store", extra={"kb": self.name})
        try:
            with self._file_lock():
                rebuilt = self._rebuild_index(self.manifest, generation)
                rebuilt.save()
        except KnowledgeBaseBusy:
            # A writer holds the lock and will save its own index. A FAISS copy is rebuilt in memory
            # only; a Milvus collection is shared, so it is used as it is rather than rebuilt under the writer.
            if index is not None and self.manifest.store.backend == "milvus":
                return index
            rebuilt = self._rebuild_index(self.manifest, generation)
        if index is not None:
            index.close()
        return rebuilt

    def _rebuild_index(self, manifest: Manifest, generation: int) -> VectorIndex:
        index = empty_index(self.directory, manifest, self.milvus_token, self.faiss_gpu)
        for ids, vectors in self.store.iter_vectors():
            index.add(ids, vectors)
        index.generation = generation
        return index

    def switch_store(self, store: VectorStore) -> None:
        """Copy every vector from SQLite into the `store` backend, then point the manifest at it; return nothing.

        The manifest is replaced atomically only once the new copy is saved, so a crash leaves the
        knowledge base on its old backend; the old copy is deleted last.
        """
        if store == self.manifest.store:
            raise ValueError(f"knowledge base '{self.name}' already uses this {store.backend} store")
        with self.exclusive(), self._state_lock:
            manifest = self.manifest.model_copy(update={"store": store})
            index = self._rebuild_index(manifest, self.store.generation)
            index.save()
            write_manifest(self.directory, manifest)
            old, self.index, self.manifest = self.index, index, manifest
            old.destroy()
            old.close()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the knowledge base as its only writer, in this process and across processes; save nothing.

        Raises KnowledgeBaseBusy at once, rather than waiting, when another writer holds it.
        """
        if not self._writer_lock.acquire(blocking=False):
            raise KnowledgeBaseBusy(f"knowledge base '{self.name}' is being written; try again when it ends")
        try:
            with self._file_lock():
                yield
        finally:
            self._writer_lock.release()

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        with open(self.directory / LOCK_FILE, "a") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise KnowledgeBaseBusy(
                    f"knowledge base '{self.name}' is being written by another process; try again when it ends"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    @contextmanager
    def writing(self) -> Iterator[KnowledgeBase]:
        """Hold the knowledge base as its only writer (see `exclusive`); save the vector index when the block ends."""
        with self.exclusive():
            try:
                yield self
            finally:
                with self._state_lock:
                    self.index.save()

    def add_documents(self, documents: Sequence[NewDocument]) -> WriteResult:
        """Store documents (replacing any of the same source) in one transaction; return what changed."""
        return self._write(documents, ())

    def delete_documents(self, document_ids: Sequence[int]) -> WriteResult:
        """Delete documents and their chunks in one transaction; return what changed."""
        return self._write((), document_ids)

    def set_metadata(self, document_id: int, metadata: Mapping[str, str]) -> None:
        """Replace one document's metadata without touching its chunks or vectors; return nothing."""
        self._check_writer()
        with self._state_lock:
            self.store.set_metadata(document_id, metadata)

    def set_groups(self, document_id: int, groups: Sequence[str]) -> None:
        """Replace one document's access groups without touching its chunks or vectors; return nothing."""
        self._check_writer()
        with self._state_lock:
            self.store.set_groups(document_id, groups)

    def _check_writer(self) -> None:
        if not self._writer_lock.locked():
            raise RuntimeError("write to a knowledge base inside `with kb.writing():`")

    def _write(self, documents: Sequence[NewDocument], delete_ids: Sequence[int]) -> WriteResult:
        self._check_writer()
        for document in documents:
            _check_vectors(document, self.manifest.embedding.dimension)
        with self._state_lock:
            result = self.store.write(documents, delete_ids)
            self.index.remove(result.removed_ids)
            self.index.add(result.added_ids, result.added_vectors)
            self.index.generation = result.generation
        return result

    @contextmanager
    def reading(self) -> Iterator[KnowledgeBase]:
        """Hold one consistent view of the knowledge base for the block: no write lands inside it; yield itself.

        A search reads the vector index and the store several times (candidates, cosines, vectors for
        dedupe, neighbours); a delete committing between two of those reads would remove ids the next
        read asks for. Writes and other readers wait for the block, so keep it to reads.
        """
        with self._state_lock:
            yield self

    def search(self, query_vector: np.ndarray, k: int, allowed: set[int] | None = None) -> list[ScoredChunk]:
        """Return the `k` chunks most similar to the query vector (among `allowed` ids), best first, with cosines."""
        query_vector = self._check_query(query_vector)
        with self._state_lock:
            scores, ids = self.index.search(query_vector, k, allowed)
            chunks = self.store.chunks(ids.tolist())
        return [
            ScoredChunk(float(s), chunks[int(i)])
            for s, i in zip(scores, ids, strict=True)
            if int(i) in chunks
        ]

    def lexical_search(self, expression: str, k: int, allowed: set[int] | None = None) -> list[ScoredChunk]:
        """Return the `k` best BM25 matches of an FTS5 expression (among `allowed` ids), best first."""
        with self._state_lock:
            found = self.store.lexical_search(expression, k, allowed)
            chunks = self.store.chunks([chunk_id for chunk_id, _ in found])
        return [ScoredChunk(score, chunks[chunk_id]) for chunk_id, score in found if chunk_id in chunks]

    def term_counts(
        self, terms: Sequence[str], allowed: set[int] | None = None
    ) -> tuple[int, dict[str, int]]:
        """Return how many chunks this knowledge base holds (of `allowed` ids, if given), and how many of them
        hold each of these terms."""
        with self._state_lock:
            if allowed is None:
                return self.index.count, self.store.term_counts(terms)
            # Counted over the allowed chunks only: what a caller may not read must not shape its answerability.
            counts = {}
            for term in terms:
                phrase = '"' + term.replace('"', '""') + '"'
                held = len(self.store.lexical_search(phrase, len(allowed), allowed)) if allowed else 0
                if held:
                    counts[term] = held
            return len(allowed), counts

    def vectors(self, chunk_ids: Sequence[int]) -> np.ndarray:
        """Return the vectors of these chunks, in order."""
        with self._state_lock:
            return self.index.vectors(np.asarray(chunk_ids, dtype=np.int64))

    def cosines(self, query_vector: np.ndarray, chunk_ids: Sequence[int]) -> np.ndarray:
        """Return the cosine similarity of the query vector to each of these chunks, in order."""
        return self.vectors(chunk_ids) @ self._check_query(query_vector)

    def chunk_ids_where(
        self,
        document_ids: Sequence[int] | None,
        source_glob: str | None,
        metadata: Mapping[str, str] | None = None,
        groups: frozenset[str] | None = None,
    ) -> set[int]:
        """Return the ids of chunks passing every filter given: document ids, source glob, metadata values,
        access groups (documents without groups or sharing one of `groups`; None: every document)."""
        with self._state_lock:
            return self.store.chunk_ids_where(document_ids, source_glob, metadata, groups)

    def neighbours(self, chunk: ChunkRecord, before: int, after: int) -> list[ChunkRecord]:
        """Return the chunks around `chunk` in its document, in order, itself included."""
        with self._state_lock:
            return self.store.neighbours(chunk, before, after)

    def _check_query(self, query_vector: np.ndarray) -> np.ndarray:
        query_vector = np.asarray(query_vector, dtype=np.float32).reshape(-1)
        dimension = self.manifest.embedding.dimension
        if query_vector.shape[0] != dimension:
            raise ValueError(
                f"query vector has {query_vector.shape[0]} dimensions; this knowledge base has {dimension}"
            )
        return query_vector

    def documents(self) -> list[DocumentRecord]:
        """Return every stored document, oldest first."""
        with self._state_lock:
            return self.store.documents()

    def document(self, document_id: int) -> DocumentRecord:
        """Return the document with this id, or raise DocumentNotFound."""
        with self._state_lock:
            return self.store.document(document_id)

    def document_by_source(self, source: str) -> DocumentRecord | None:
        """Return the document stored under `source`, or None."""
        with self._state_lock:
            return self.store.document_by_source(source)

    def has_content_hash(self, content_hash: str) -> bool:
        """Return whether a document with this content hash is already stored."""
        with self._state_lock:
            return self.store.has_content_hash(content_hash)

    def headings(self) -> list[tuple[int, tuple[str, ...]]]:
        """Return the distinct (document id, heading path) pairs of the chunks, in reading order."""
        with self._state_lock:
            return self.store.headings()

    def counts(self) -> tuple[int, int]:
        """Return (documents, chunks)."""
        with self._state_lock:
            return self.store.count()

    def check(self) -> ConsistencyReport:
        """Return how the vector index and the chunk store disagree, if they do."""
        with self._state_lock:
            index_ids = set(self.index.ids().tolist())
            chunk_ids = set(self.store.chunk_ids().tolist())
            term_ids = self.store.lexical_ids()
        return ConsistencyReport(
            ids_without_chunk=sorted(index_ids - chunk_ids),
            chunks_without_vector=sorted(chunk_ids - index_ids),
            chunks_without_terms=sorted(chunk_ids ^ term_ids),
        )


def _check_vectors(document: NewDocument, dimension: int) -> None:
    shape = np.shape(document.vectors)
    if shape != (len(document.chunks), dimension):
        raise ValueError(
            f"{document.source}: vectors of shape {shape} for {len(document.chunks)} chunks of dimension {dimension}"
        )
