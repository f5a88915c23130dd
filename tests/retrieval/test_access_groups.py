"""Access groups inside retrieval: a caller limited to groups gets the top-k of the documents it may read,
taken before the cut (not k minus the hidden ones), in dense, lexical, hybrid and reranked searches, on
FAISS, on Milvus Lite and on the PostgreSQL store (pgvector); and what it may not read shapes neither its
hits nor its answerability."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from models import build_tiny_cross_encoder
from pieces import Piece
from postgres import pg_catalog

from retrieval import (
    EmbeddingIdentity,
    KnowledgeBase,
    KnowledgeBaseCatalog,
    NewDocument,
    RetrievalConfig,
    Retriever,
    SearchOptions,
    new_store,
)

DIM = 16
IDENTITY = EmbeddingIdentity(backend="test", model="/models/hashed", model_name="hashed", dimension=DIM)
GROUPS = ["hr", "finance", "eng"]
WORDS = ["salary", "leave", "router", "budget", "vpn", "printer", "contract", "audit", "travel", "canteen"]
DOCUMENTS = 12
CHUNKS_PER_DOCUMENT = 3


def vector(text: str) -> np.ndarray:
    """Return a unit vector determined by `text` (the same text, the same vector)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class HashedEmbedder:
    """An embedder whose vectors come from a hash of the text: fast, deterministic, no model."""

    model_name = "hashed"
    dimension = DIM

    def embed_query(self, text: str) -> np.ndarray:
        return vector(text)

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def chunk_text(document: int, ordinal: int) -> str:
    rng = np.random.default_rng(document * 100 + ordinal)
    return " ".join(rng.choice(WORDS, size=4)) + f" d{document}c{ordinal}"


@pytest.fixture(scope="module", params=["faiss", "milvus", "pgvector"])
def kb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    data = tmp_path_factory.mktemp(request.param) / "data"
    if request.param == "pgvector":  # the PostgreSQL store: groups filtered in SQL, vectors in pgvector
        catalog = pg_catalog(request.getfixturevalue("pg_server").new_database(), data)
        kb = catalog.create("kb", IDENTITY, {})
    else:
        if request.param == "milvus":
            pytest.importorskip("pymilvus")
        catalog = KnowledgeBaseCatalog(data)
        kb = catalog.create("kb", IDENTITY, {}, new_store("kb", request.param))
    documents = []
    for d in range(DOCUMENTS):
        texts = [chunk_text(d, i) for i in range(CHUNKS_PER_DOCUMENT)]
        documents.append(
            NewDocument(
                source=f"doc{d}.txt",
                title=f"doc{d}",
                content_hash=f"h{d}",
                size=1,
                page_count=None,
                chunks=[Piece(t) for t in texts],
                vectors=np.stack([vector(t) for t in texts]),
            )
        )
    with kb.writing():
        kb.add_documents(documents)
    yield kb
    kb.close()
    if request.param == "pgvector":
        catalog.database.close()


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("models") / "cross-encoder")


@pytest.fixture(scope="module")
def retriever(cross_encoder: Path) -> Retriever:
    # Candidates deep enough to hold every chunk, so the dense and lexical lists are whole rankings.
    config = RetrievalConfig(
        candidates=DOCUMENTS * CHUNKS_PER_DOCUMENT,
        reranker={"model": str(cross_encoder), "device": "cpu", "top_n": 10},
    )
    return Retriever(HashedEmbedder(), config)


def set_groups(kb: KnowledgeBase, assignment: list[list[str]]) -> None:
    with kb.writing():
        for document, groups in zip(kb.documents(), assignment, strict=True):
            kb.set_groups(document.id, groups)


def visible_ids(kb: KnowledgeBase, key_groups: frozenset[str]) -> list[int]:
    return [d.id for d in kb.documents() if not d.groups or set(d.groups) & key_groups]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    assignment=st.lists(
        st.lists(st.sampled_from(GROUPS), max_size=2, unique=True), min_size=DOCUMENTS, max_size=DOCUMENTS
    ),
    key_groups=st.frozensets(st.sampled_from(GROUPS), max_size=2),
    query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join),
    k=st.integers(1, 8),
    mode=st.sampled_from(["dense", "lexical", "hybrid", "rerank"]),
)
# Two chunks tie in the fusion and the rarest query term breaks the tie: counted among all chunks for a
# document filter but among the readable ones for a key's groups, it ordered them differently (found here).
@example(
    assignment=[
        ["finance"],
        [],
        ["hr"],
        [],
        ["eng", "hr"],
        ["eng"],
        ["eng"],
        ["hr"],
        [],
        ["finance", "eng"],
        ["eng"],
        [],
    ],
    key_groups=frozenset(),
    query="vpn audit",
    k=7,
    mode="hybrid",
)
def test_a_readers_top_k_is_the_top_k_of_its_documents(
    kb: KnowledgeBase,
    retriever: Retriever,
    assignment: list[list[str]],
    key_groups: frozenset[str],
    query: str,
    k: int,
    mode: str,
) -> None:
    set_groups(kb, assignment)
    permitted = visible_ids(kb, key_groups)
    base = SearchOptions(
        k=k, mode="hybrid" if mode == "rerank" else mode, rerank=mode == "rerank", dedupe=False
    )
    found = retriever.retrieve(kb, query, base.within_groups(key_groups))
    hits = found.hits
    assert {hit.document_id for hit in hits} <= set(permitted)
    # The same search over exactly the permitted documents (a filter the caller could have asked for).
    reference = retriever.search(kb, query, base.model_copy(update={"document_ids": permitted or [0]}))
    assert [h.chunk_id for h in hits] == [h.chunk_id for h in reference]
    if mode in ("dense", "lexical"):
        # And, independently of the filter, the whole ranking with the hidden documents struck out: k hits
        # whenever the permitted documents hold k (never k minus the hidden ones).
        whole = retriever.search(kb, query, base.model_copy(update={"k": 200}))
        expected = [h.chunk_id for h in whole if h.document_id in permitted][:k]
        assert [h.chunk_id for h in hits] == expected
    if not permitted:
        assert hits == [] and found.answerability is None


def test_what_a_caller_may_not_read_does_not_shape_its_answerability(
    kb: KnowledgeBase, retriever: Retriever
) -> None:
    set_groups(kb, [["hr"]] + [[] for _ in range(DOCUMENTS - 1)])
    hidden = chunk_text(0, 0).split()[-1]  # "d0c0": a word only the hidden document holds
    seen = retriever.retrieve(kb, hidden, SearchOptions(k=3))
    limited = retriever.retrieve(kb, hidden, SearchOptions(k=3).within_groups(frozenset({"eng"})))
    assert hidden in seen.term_weights and seen.signals.unseen == 0.0
    assert limited.signals.unseen == 1.0  # for this caller the word is nowhere
    assert all(hit.document_id != kb.documents()[0].id for hit in limited.hits)
    # An admin (no limit) and a caller of the right group see it.
    assert retriever.search(kb, hidden, SearchOptions(k=1, mode="lexical"))[0].source == "doc0.txt"
    mine = retriever.search(kb, hidden, SearchOptions(k=1, mode="lexical").within_groups(frozenset({"hr"})))
    assert mine[0].source == "doc0.txt"


def test_groups_cannot_be_set_from_a_request_body() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SearchOptions.model_validate({"query": "x", "_groups": ["hr"]})
    assert "groups" not in SearchOptions.model_json_schema()["properties"]
    assert SearchOptions.model_validate({"k": 2}).groups is None
