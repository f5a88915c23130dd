"""Query embedding shared by concurrent requests: micro-batches and a small LRU cache over any embedder.

Requests run in threadpools and each embeds one query. Alone, every query is a forward pass of its own;
here the first query to arrive opens a batch, waits up to `wait_ms` (or until `max_batch` queries have
joined), then embeds them all in one call while the others wait for their row. At most `concurrent`
batches are embedded at once; while they run, the next batch stays open and gathers every query that
arrives, so under load batches grow with the queue, as text-embeddings-inference's do. The same question
asked again comes from the cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from retrieval.embedders import Embedder


class QueryBatchConfig(BaseModel):
    """How concurrent queries share the embedding model."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    wait_ms: float = Field(
        2.0,
        ge=0,
        description="How long the first query of a batch waits for others to join, in milliseconds; "
        "0 embeds at once whatever has arrived.",
    )
    max_batch: int = Field(32, ge=1, description="Most queries embedded in one call; 1 turns batching off.")
    concurrent: int = Field(
        2, ge=1, description="Batches embedded at once; the next one gathers queries while they run."
    )
    cache_size: int = Field(
        1024, ge=0, description="Query vectors kept, least recently used dropped first; 0 keeps none."
    )


def embed_queries_of(embedder: Embedder) -> Callable[[list[str]], np.ndarray]:
    """Return the embedder's call for many queries at once, else one that embeds them one by one."""
    batched = getattr(embedder, "embed_queries", None)
    if callable(batched):
        return batched
    return lambda texts: np.stack([embedder.embed_query(text) for text in texts])


class _Batch:
    """Queries gathered for one call, and its outcome."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.rows: dict[str, int] = {}  # a query asked twice in one batch is embedded once
        self.full = threading.Event()
        self.done = threading.Event()
        self.vectors: list[np.ndarray] = []
        self.errors: dict[int, BaseException] = {}


class BatchingEmbedder:
    """An embedder whose `embed_query` batches concurrent calls and caches its answers; the rest is the
    wrapped embedder's own."""

    def __init__(self, embedder: Embedder, config: QueryBatchConfig | None = None) -> None:
        self.embedder = embedder
        self.config = config or QueryBatchConfig()
        self.backend = embedder.backend
        self.model = embedder.model
        self.model_name = embedder.model_name
        self.dimension = embedder.dimension
        self._embed_queries = embed_queries_of(embedder)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.config.concurrent)
        self._open: _Batch | None = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Return the wrapped embedder's passage vectors."""
        return self.embedder.embed_documents(texts)

    def count_tokens(self, text: str) -> int:
        """Return the wrapped embedder's token count of `text`."""
        return self.embedder.count_tokens(text)

    def embed_query(self, text: str) -> np.ndarray:
        """Return the query vector: from the cache, else embedded in a batch with concurrent queries."""
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                return cached.copy()  # a caller may change its vector; the cache's stays as it was
            batch, leads = self._join(text)
        if leads:
            self._run(batch)
        else:
            batch.done.wait()
        row = batch.rows[text]
        if row in batch.errors:
            raise batch.errors[row]
        if row >= len(batch.vectors):  # the thread running the batch was interrupted
            raise RuntimeError("the query's batch was abandoned before it was embedded")
        vector = batch.vectors[row]
        self._remember(text, vector)
        return vector.copy()

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Return the query vectors of `texts` from one call of the wrapped embedder (no cache)."""
        return self._embed_queries(list(texts))

    def waiting(self) -> int:
        """Return how many queries the open batch holds, not yet handed to the model (0 when none is open)."""
        with self._lock:
            return 0 if self._open is None else len(self._open.texts)

    def _join(self, text: str) -> tuple[_Batch, bool]:
        """Return the open batch with `text` in it, and whether this caller opened it (and so runs it)."""
        batch, leads = self._open, False
        if batch is None:
            batch, leads = _Batch(), True
            self._open = batch
        if text not in batch.rows:
            batch.rows[text] = len(batch.texts)
            batch.texts.append(text)
        if len(batch.texts) >= self.config.max_batch:
            self._open = None  # later queries open the next batch
            batch.full.set()
        return batch, leads

    def _run(self, batch: _Batch) -> None:
        """Wait for others to join `batch` and for a free slot, close it, embed it and wake its callers; return
        nothing."""
        if self.config.wait_ms > 0 and self.config.max_batch > 1:
            batch.full.wait(self.config.wait_ms / 1000)
        try:
            with self._slots:  # until one is free, the batch stays open to queries arriving
                with self._lock:
                    if self._open is batch:
                        self._open = None
                try:
                    batch.vectors = list(self._checked(self._embed_queries(batch.texts), len(batch.texts)))
                except Exception as error:
                    if len(batch.texts) == 1:
                        batch.errors[0] = error
                    else:  # one query may be what failed: each gets its own outcome, only its caller an error
                        self._one_by_one(batch)
        finally:
            batch.done.set()

    def _one_by_one(self, batch: _Batch) -> None:
        """Embed the batch's queries one at a time, keeping each one's vector or error; return nothing."""
        for row, text in enumerate(batch.texts):
            try:
                batch.vectors.append(self._checked(self.embedder.embed_query(text)[None, :], 1)[0])
            except Exception as error:
                batch.vectors.append(np.zeros(self.dimension, np.float32))
                batch.errors[row] = error

    def _checked(self, vectors: np.ndarray, count: int) -> np.ndarray:
        """Return `vectors` as float32, after checking there is one of the right size for each query."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (count, self.dimension):
            raise RuntimeError(f"the embedder returned vectors of shape {vectors.shape} for {count} queries")
        return vectors

    def _remember(self, text: str, vector: np.ndarray) -> None:
        if self.config.cache_size == 0:
            return
        with self._lock:
            self._cache[text] = vector.copy()
            self._cache.move_to_end(text)
            while len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
