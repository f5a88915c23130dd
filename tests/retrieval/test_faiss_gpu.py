"""FAISS on the GPU (`vector_store.faiss_gpu`): the same hits as the CPU, the file on disk stays the CPU index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pieces import Piece

from app.settings import SettingsError, load_settings
from retrieval import EmbeddingIdentity, KnowledgeBase, KnowledgeBaseCatalog, NewDocument
from retrieval.vector_index import INDEX_FILE, faiss_gpu_problem

DIM = 32
IDENTITY = EmbeddingIdentity(backend="test", model="random", model_name="random", dimension=DIM)


def random_document(source: str, count: int, seed: int) -> NewDocument:
    vectors = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return NewDocument(
        source=source,
        title=source,
        content_hash=f"hash-{source}-{seed}",
        size=10,
        page_count=1,
        chunks=[Piece(f"{source} chunk {i}") for i in range(count)],
        vectors=vectors,
    )


def filled(catalog: KnowledgeBaseCatalog, name: str) -> KnowledgeBase:
    kb = catalog.create(name, IDENTITY, {})
    with kb.writing():
        kb.add_documents([random_document("a.md", 300, 1), random_document("b.md", 200, 2)])
    return kb


def queries(count: int = 5) -> np.ndarray:
    vectors = np.random.default_rng(7).standard_normal((count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def hits(kb: KnowledgeBase, query: np.ndarray, k: int = 10, allowed: set[int] | None = None):
    found = kb.search(query, k, allowed)
    return [hit.chunk.id for hit in found], np.array([hit.score for hit in found])


needs_faiss_gpu = pytest.mark.skipif(
    faiss_gpu_problem() is not None, reason=f"FAISS cannot use a GPU here: {faiss_gpu_problem()}"
)
needs_no_gpu = pytest.mark.skipif(faiss_gpu_problem() is None, reason="FAISS has a GPU here")


@pytest.mark.gpu
@needs_faiss_gpu
def test_exact_search_on_the_gpu_gives_the_cpu_hits(tmp_path: Path) -> None:
    import faiss

    kb = filled(KnowledgeBaseCatalog(tmp_path / "data", faiss_gpu="on"), "vectors")
    cpu = KnowledgeBaseCatalog(tmp_path / "data", faiss_gpu="off").open("vectors")
    for query in queries():
        gpu_ids, gpu_scores = hits(kb, query)
        cpu_ids, cpu_scores = hits(cpu, query)
        assert gpu_ids == cpu_ids
        np.testing.assert_allclose(gpu_scores, cpu_scores, atol=1e-4)
    assert kb.index.on_gpu and not cpu.index.on_gpu
    # The saved file is the CPU index, which a machine without a GPU opens.
    saved = faiss.read_index(str(kb.directory / INDEX_FILE))
    assert (
        isinstance(saved, faiss.IndexIDMap2) and "Gpu" not in type(faiss.downcast_index(saved.index)).__name__
    )
    # After a write the GPU copy is made again: deleted chunks are gone, new ones found.
    with kb.writing():
        kb.delete_documents([kb.documents()[0].id])
        kb.add_documents([random_document("c.md", 100, 3)])
    cpu.refresh()  # the other handle catches up with what this one wrote
    for query in queries():
        assert hits(kb, query)[0] == hits(cpu, query)[0]
    # A filtered search (an id selector, which stays on the CPU) finds the same either way.
    allowed = set(hits(cpu, queries()[0], k=50)[0][::3])
    assert hits(kb, queries()[1], 5, allowed)[0] == hits(cpu, queries()[1], 5, allowed)[0]


@pytest.mark.gpu
@needs_faiss_gpu
def test_the_service_searches_on_the_gpu_by_default(tmp_path: Path) -> None:
    from app.services import KnowledgeService

    service = KnowledgeService(load_settings(data_dir=tmp_path / "data"))
    assert service.settings.vector_store.faiss_gpu == "auto"
    kb = filled(service.catalog, "vectors")
    kb.search(queries()[0], 5)
    assert kb.index.on_gpu


@needs_no_gpu
def test_faiss_gpu_on_without_a_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KBQA_VECTOR_STORE__FAISS_GPU", "on")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "vector_store.faiss_gpu (KBQA_VECTOR_STORE__FAISS_GPU)" in message
    assert f"'on', but {faiss_gpu_problem()}; set it to auto or off" in message
    # Below the settings too: a knowledge base does not open with `on`, rather than quietly using the CPU.
    filled(KnowledgeBaseCatalog(tmp_path / "data"), "vectors").close()
    with pytest.raises(ValueError, match="faiss_gpu is 'on'"):
        KnowledgeBaseCatalog(tmp_path / "data", faiss_gpu="on").open("vectors")


def test_faiss_gpu_auto_searches_where_it_can(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    assert settings.vector_store.faiss_gpu == "auto"
    auto = filled(KnowledgeBaseCatalog(tmp_path / "data", faiss_gpu="auto"), "vectors")
    off = KnowledgeBaseCatalog(tmp_path / "data", faiss_gpu="off").open("vectors")
    for query in queries():
        assert hits(auto, query)[0] == hits(off, query)[0]
    assert auto.index.on_gpu == (faiss_gpu_problem() is None)
    assert not off.index.on_gpu
