"""Concurrent queries share the embedding model: micro-batches, errors to their own caller, an LRU cache."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.services import KnowledgeService
from app.settings import load_settings
from retrieval import BatchingEmbedder, QueryBatchConfig

QUERIES = [
    "年假有几天？",
    "报销需要多久到账？",
    "What is the hotel limit in Tokyo?",
    "星河X1 的保修期是多久？",
    "密码多久过期？",
    "Which flights allow business class?",
    "病假每年有几天？",
    "办公室 Wi-Fi 叫什么？",
]


class Recording:
    """A real embedder, with every batch of queries it is asked to embed recorded (and `fail` refused)."""

    def __init__(self, embedder, fail: str | None = None, batched: bool = True) -> None:
        self.embedder = embedder
        self.backend, self.model, self.model_name = embedder.backend, embedder.model, embedder.model_name
        self.dimension = embedder.dimension
        self.batches: list[list[str]] = []
        self.single: list[str] = []
        self.fail = fail
        if batched:
            self.embed_queries = self._embed_queries

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed_documents(texts)

    def count_tokens(self, text: str) -> int:
        return self.embedder.count_tokens(text)

    def embed_query(self, text: str) -> np.ndarray:
        self.single.append(text)
        if text == self.fail:
            raise ValueError(f"cannot embed {text!r}")
        return self.embedder.embed_query(text)

    def _embed_queries(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        if self.fail in texts:
            raise ValueError(f"cannot embed {self.fail!r}")
        return self.embedder.embed_queries(texts)


def until(condition: Callable[[], bool], seconds: float = 10) -> bool:
    """Return whether `condition` came to hold within `seconds` (polled; a state to reach, not a time to wait)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def at_once(call: Callable[[str], np.ndarray], texts: list[str]) -> list[np.ndarray | BaseException]:
    """Return what `call` gave for each text (its vector or its exception), all started together."""
    start = threading.Barrier(len(texts))

    def one(text: str) -> np.ndarray | BaseException:
        start.wait()
        try:
            return call(text)
        except Exception as error:
            return error

    with ThreadPoolExecutor(len(texts)) as pool:
        return list(pool.map(one, texts))


@pytest.fixture(params=["e5", "tiny-bert"])
def embedder(request: pytest.FixtureRequest):
    """The bundled e5 model and a sentence-transformers model, each with its own batched query call."""
    return request.getfixturevalue("e5_embedder" if request.param == "e5" else "tiny_embedder")


def test_a_batch_of_queries_gives_each_query_its_own_vector(embedder) -> None:
    alone = np.stack([embedder.embed_query(q) for q in QUERIES])
    together = embedder.embed_queries(QUERIES)
    assert together.shape == (len(QUERIES), embedder.dimension) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert embedder.embed_queries([]).shape == (0, embedder.dimension)


def test_concurrent_queries_are_embedded_together_with_the_same_vectors(embedder) -> None:
    recording = Recording(embedder)
    batcher = BatchingEmbedder(recording, QueryBatchConfig(wait_ms=300, max_batch=32, cache_size=0))
    asked = QUERIES * 2  # a query asked twice at once is embedded once
    vectors = at_once(batcher.embed_query, asked)
    for query, vector in zip(asked, vectors, strict=True):
        np.testing.assert_allclose(vector, embedder.embed_query(query), atol=1e-5)
    embedded = [text for batch in recording.batches for text in batch]
    assert sorted(embedded) == sorted(QUERIES)
    assert len(recording.batches) < len(QUERIES) and max(map(len, recording.batches)) > 1
    assert recording.single == []


class Held(Recording):
    """A real embedder whose first batch takes until `release` is set, as a slow forward pass would."""

    def __init__(self, embedder) -> None:
        super().__init__(embedder)
        self.held = threading.Event()  # set when the first batch has reached the model
        self.release = threading.Event()

    def _embed_queries(self, texts: list[str]) -> np.ndarray:
        if not self.batches:
            self.held.set()
            self.release.wait(10)
        return super()._embed_queries(texts)


def test_queries_arriving_while_a_batch_runs_gather_in_the_next(e5_embedder) -> None:
    recording = Held(e5_embedder)
    batcher = BatchingEmbedder(recording, QueryBatchConfig(wait_ms=0, concurrent=1, cache_size=0))
    with ThreadPoolExecutor(len(QUERIES)) as pool:
        first = pool.submit(batcher.embed_query, QUERIES[0])
        assert recording.held.wait(10)  # its batch is being embedded (held), the one slot taken
        rest = [pool.submit(batcher.embed_query, q) for q in QUERIES[1:]]
        # Without a wait of their own, they still wait together for the slot: all of them join the open batch.
        assert until(lambda: batcher.waiting() == len(QUERIES) - 1)
        recording.release.set()
        vectors = [first.result(), *(f.result() for f in rest)]
    assert [sorted(batch) for batch in recording.batches] == [[QUERIES[0]], sorted(QUERIES[1:])]
    for query, vector in zip(QUERIES, vectors, strict=True):
        np.testing.assert_allclose(vector, e5_embedder.embed_query(query), atol=1e-5)


def test_a_batch_holds_at_most_max_batch_queries(e5_embedder) -> None:
    recording = Recording(e5_embedder)
    batcher = BatchingEmbedder(recording, QueryBatchConfig(wait_ms=300, max_batch=3, cache_size=0))
    at_once(batcher.embed_query, QUERIES)
    assert sorted(t for batch in recording.batches for t in batch) == sorted(QUERIES)
    assert all(len(batch) <= 3 for batch in recording.batches)


def test_an_error_reaches_only_the_caller_whose_query_failed(e5_embedder) -> None:
    recording = Recording(e5_embedder, fail="boom")
    batcher = BatchingEmbedder(recording, QueryBatchConfig(wait_ms=300, max_batch=32, cache_size=0))
    asked = [*QUERIES[:4], "boom", *QUERIES[4:]]
    outcomes = at_once(batcher.embed_query, asked)
    for query, outcome in zip(asked, outcomes, strict=True):
        if query == "boom":
            assert isinstance(outcome, ValueError) and "boom" in str(outcome)
        else:
            np.testing.assert_allclose(outcome, e5_embedder.embed_query(query), atol=1e-5)
    assert any("boom" in batch and len(batch) > 1 for batch in recording.batches)
    # Alone, the failing query fails for its caller, and the batcher still serves the next one.
    with pytest.raises(ValueError, match="boom"):
        batcher.embed_query("boom")
    np.testing.assert_allclose(
        batcher.embed_query(QUERIES[0]), e5_embedder.embed_query(QUERIES[0]), atol=1e-5
    )


def test_recent_queries_come_from_the_cache(e5_embedder) -> None:
    recording = Recording(e5_embedder)
    batcher = BatchingEmbedder(recording, QueryBatchConfig(wait_ms=0, cache_size=2))
    first = batcher.embed_query("年假有几天？")
    first[:] = 0  # a caller changing its vector leaves the cached one alone
    batcher.embed_query("病假每年有几天？")
    again = batcher.embed_query("年假有几天？")  # a hit, now the most recently used
    np.testing.assert_allclose(again, e5_embedder.embed_query("年假有几天？"), atol=1e-6)
    batcher.embed_query("密码多久过期？")  # evicts 病假…, the least recently used
    batcher.embed_query("年假有几天？")
    batcher.embed_query("病假每年有几天？")
    assert recording.batches == [
        ["年假有几天？"],
        ["病假每年有几天？"],
        ["密码多久过期？"],
        ["病假每年有几天？"],
    ]


def test_no_cache_and_no_batches_when_turned_off(e5_embedder) -> None:
    recording = Recording(e5_embedder)
    batcher = BatchingEmbedder(recording, QueryBatchConfig(wait_ms=300, max_batch=1, cache_size=0))
    at_once(batcher.embed_query, QUERIES[:4])
    batcher.embed_query(QUERIES[0])
    assert sorted(map(len, recording.batches)) == [1] * 5


def test_an_embedder_without_a_batched_call_is_served_one_query_at_a_time(e5_embedder) -> None:
    recording = Recording(e5_embedder, batched=False)
    batcher = BatchingEmbedder(recording, QueryBatchConfig(wait_ms=300, cache_size=0))
    vectors = at_once(batcher.embed_query, QUERIES)
    for query, vector in zip(QUERIES, vectors, strict=True):
        np.testing.assert_allclose(vector, e5_embedder.embed_query(query), atol=1e-5)
    assert sorted(recording.single) == sorted(QUERIES)


def test_the_rest_is_the_wrapped_embedder(e5_embedder) -> None:
    batcher = BatchingEmbedder(e5_embedder)
    assert (batcher.backend, batcher.model, batcher.model_name, batcher.dimension) == (
        e5_embedder.backend,
        e5_embedder.model,
        e5_embedder.model_name,
        e5_embedder.dimension,
    )
    np.testing.assert_array_equal(batcher.embed_documents(QUERIES), e5_embedder.embed_documents(QUERIES))
    assert batcher.count_tokens(QUERIES[0]) == e5_embedder.count_tokens(QUERIES[0])


def test_the_service_batches_queries_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBQA_QUERY_BATCHING__WAIT_MS", "5")
    monkeypatch.setenv("KBQA_QUERY_BATCHING__CACHE_SIZE", "0")
    embedder = KnowledgeService(load_settings()).embedder
    assert isinstance(embedder, BatchingEmbedder)
    assert embedder.config == QueryBatchConfig(wait_ms=5, max_batch=32, concurrent=2, cache_size=0)
    monkeypatch.setenv("KBQA_QUERY_BATCHING__MAX_BATCH", "0")
    with pytest.raises(Exception, match="query_batching.max_batch"):
        load_settings()
