"""The vector store contract run against FAISS, Milvus Lite and pgvector (the PostgreSQL store), migration
between them, and the CLI."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import paths
import pytest
from pieces import Piece
from postgres import pg_catalog

from retrieval import (
    EmbeddingIdentity,
    KnowledgeBase,
    KnowledgeBaseBusy,
    KnowledgeBaseCatalog,
    NewDocument,
    OpenKnowledgeBases,
    VectorStore,
    new_store,
)
from retrieval.milvus_index import STATE_FILE, connect, resolve_uri
from retrieval.vector_index import INDEX_FILE

pytest.importorskip("pymilvus")

DIM = 16
IDENTITY = EmbeddingIdentity(backend="test", model="/models/random", model_name="random", dimension=DIM)
BACKENDS = ["faiss", "milvus"]
KBQA = str(Path(sys.executable).parent / "kbqa")
REPO = paths.REPO


def normalised(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def document(source: str, vectors: np.ndarray) -> NewDocument:
    chunks = [Piece(f"{source} chunk {i}") for i in range(len(vectors))]
    return NewDocument(
        source=source,
        title=source,
        content_hash=f"hash-{source}",
        size=1,
        page_count=1,
        chunks=chunks,
        vectors=vectors,
    )


def filled(catalog: KnowledgeBaseCatalog, name: str, backend: str, seed: int = 0) -> KnowledgeBase:
    """Return a knowledge base on `backend` holding three documents of random vectors (same for a seed)."""
    rng = np.random.default_rng(seed)
    store = VectorStore(backend="pgvector") if backend == "pgvector" else new_store(name, backend)
    kb = catalog.create(name, IDENTITY, {}, store)
    with kb.writing():
        kb.add_documents([document(f"doc{i}.txt", normalised(rng, 10)) for i in range(3)])
    return kb


def top(
    kb: KnowledgeBase, query: np.ndarray, k: int, allowed: set[int] | None = None
) -> list[tuple[int, float]]:
    return [(hit.chunk.id, hit.score) for hit in kb.search(query, k, allowed)]


@pytest.fixture
def catalog(tmp_path: Path) -> KnowledgeBaseCatalog:
    return KnowledgeBaseCatalog(tmp_path / "data")


@pytest.fixture
def pg(pg_dsn: str, tmp_path: Path) -> Iterator[KnowledgeBaseCatalog]:
    """A catalog on the PostgreSQL store (its vectors in pgvector), on a database of its own."""
    catalog = pg_catalog(pg_dsn, tmp_path / "pg-data")
    yield catalog
    catalog.database.close()


@pytest.mark.parametrize("backend", [*BACKENDS, "pgvector"])
def test_store_contract(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    catalog = request.getfixturevalue("pg" if backend == "pgvector" else "catalog")
    kb = filled(catalog, "知识库", backend)
    assert kb.manifest.store.backend == backend
    assert kb.index.count == 30 and kb.check().ok
    query = normalised(np.random.default_rng(9), 1)[0]

    hits = top(kb, query, 5)
    assert len(hits) == 5
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    expected = kb.cosines(query, [chunk_id for chunk_id, _ in hits])
    np.testing.assert_allclose(scores, expected, atol=1e-5)

    first = kb.documents()[0].id
    allowed = kb.chunk_ids_where([first], None)
    filtered = top(kb, query, 20, allowed)
    assert {chunk_id for chunk_id, _ in filtered} == allowed and len(filtered) == 10
    assert top(kb, query, 5, set()) == []

    with kb.writing():
        kb.delete_documents([first])
    assert kb.index.count == 20 and kb.check().ok
    assert not {chunk_id for chunk_id, _ in top(kb, query, 30)} & allowed
    kb.close()

    reopened = catalog.open("知识库")
    assert reopened.index.count == 20 and reopened.check().ok
    reopened.close()
    catalog.delete("知识库")
    assert catalog.names() == []


def test_scores_equal_between_backends(catalog: KnowledgeBaseCatalog, pg: KnowledgeBaseCatalog) -> None:
    faiss_kb, milvus_kb = (filled(catalog, backend, backend) for backend in BACKENDS)
    pgvector_kb = filled(pg, "pgvector", "pgvector")
    for query in normalised(np.random.default_rng(3), 5):
        on_faiss = top(faiss_kb, query, 8)
        for other in (milvus_kb, pgvector_kb):
            on_other = top(other, query, 8)
            # Chunk ids are the same on every store: the same writes in the same order from id 1.
            assert [i for i, _ in on_faiss] == [i for i, _ in on_other]
            np.testing.assert_allclose([s for _, s in on_faiss], [s for _, s in on_other], atol=1e-5)
        # Among allowed ids (exact on pgvector) too.
        allowed = set(range(5, 25))
        on_faiss, on_pg = top(faiss_kb, query, 8, allowed), top(pgvector_kb, query, 8, allowed)
        assert [i for i, _ in on_faiss] == [i for i, _ in on_pg]
    faiss_kb.close()
    milvus_kb.close()


def test_migrate_keeps_top_k_and_back(catalog: KnowledgeBaseCatalog) -> None:
    kb = filled(catalog, "kb", "faiss")
    queries = normalised(np.random.default_rng(4), 5)
    before = [top(kb, query, 6) for query in queries]
    kb.switch_store(new_store("kb", "milvus"))
    kb.close()
    directory = catalog.path("kb")
    assert not (directory / INDEX_FILE).exists(), "the FAISS copy is deleted once Milvus holds the vectors"

    moved = catalog.open("kb")
    assert moved.manifest.store.backend == "milvus"
    for query, expected in zip(queries, before, strict=True):
        found = top(moved, query, 6)
        assert [i for i, _ in found] == [i for i, _ in expected]
        np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], atol=1e-5)
    with pytest.raises(ValueError, match="already uses"):
        moved.switch_store(moved.manifest.store)
    moved.switch_store(new_store("kb", "faiss"))
    assert not (directory / STATE_FILE).exists()
    assert not (directory / "milvus.db").exists(), "the emptied Milvus Lite file is deleted too"
    assert [i for i, _ in top(moved, queries[0], 6)] == [i for i, _ in before[0]]
    moved.close()


def test_stale_milvus_copy_is_rebuilt_on_open(catalog: KnowledgeBaseCatalog) -> None:
    kb = filled(catalog, "kb", "milvus")
    generation = kb.store.generation
    query = normalised(np.random.default_rng(5), 1)[0]
    expected = top(kb, query, 5)
    kb.close()
    directory = catalog.path("kb")
    # As if a write reached SQLite but the process died before Milvus caught up.
    client = connect(resolve_uri(kb.manifest.store.uri, directory))
    client.delete(kb.manifest.store.collection, ids=[i for i, _ in expected])
    client.close()
    (directory / STATE_FILE).write_text(json.dumps({"generation": generation - 1, "collection": "x"}))

    reopened = catalog.open("kb")
    assert reopened.index.generation == generation and reopened.index.count == 30
    found = top(reopened, query, 5)
    assert [i for i, _ in found] == [i for i, _ in expected]
    np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], atol=1e-5)
    reopened.close()


def test_new_knowledge_bases_use_the_configured_store(
    tmp_path: Path, e5_embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services import KnowledgeService
    from app.settings import load_settings

    monkeypatch.setenv("KBQA_VECTOR_STORE__BACKEND", "milvus")
    monkeypatch.setenv("KBQA_VECTOR_STORE__MILVUS_URI", "vectors.db")
    service = KnowledgeService(load_settings(data_dir=tmp_path / "data"))
    service.embedder = e5_embedder
    service.create("configured").close()
    service.create("files", "faiss").close()
    service.create("lite", "milvus", "other.db").close()

    configured = service.info("configured").store
    assert (configured.backend, configured.uri) == ("milvus", "vectors.db")
    assert (service.catalog.path("configured") / "vectors.db").is_dir()
    assert service.info("files").store == VectorStore()
    assert service.info("lite").store.uri == "other.db"


class TokenRecorder:
    """A gRPC endpoint on localhost that records each call's metadata and implements nothing."""

    def __init__(self) -> None:
        import grpc

        self.metadata: list[dict[str, str]] = []
        recorder = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details):
                recorder.metadata.append(dict(details.invocation_metadata))
                return None  # UNIMPLEMENTED, as an endpoint that is not Milvus answers

        self.server = grpc.server(ThreadPoolExecutor(2))
        self.server.add_generic_rpc_handlers([Handler()])
        self.uri = f"http://127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()


def test_milvus_token_signs_in_to_a_server_and_is_never_shown(tmp_path: Path) -> None:
    endpoint = TokenRecorder()
    try:
        catalog = KnowledgeBaseCatalog(tmp_path / "data", milvus_token="root:s3cret")
        with pytest.raises(ValueError, match="cannot reach Milvus at http://127.0.0.1") as refused:
            catalog.create("kb", IDENTITY, {}, new_store("kb", "milvus", endpoint.uri))
        assert "s3cret" not in str(refused.value)
        assert catalog.names() == [], "no knowledge base is left that could never open"
    finally:
        endpoint.server.stop(0)
    assert endpoint.metadata[0]["authorization"] == base64.b64encode(b"root:s3cret").decode()


def test_milvus_token_is_not_sent_to_milvus_lite(tmp_path: Path) -> None:
    catalog = KnowledgeBaseCatalog(tmp_path / "data", milvus_token="root:s3cret")
    kb = catalog.create("kb", IDENTITY, {}, new_store("kb", "milvus"))
    assert kb.index.count == 0
    kb.close()


def kbqa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KBQA, *args], capture_output=True, text=True, env=os.environ, timeout=300)


@pytest.mark.slow
def test_cli_milvus_answers_like_faiss_and_migrate(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    docs = str(REPO / "examples" / "docs" / "travel_expense_policy.md")
    found = {}
    for name, store in (("faiss_kb", "faiss"), ("milvus_kb", "milvus")):
        created = kbqa("--data-dir", data, "kb", "create", name, "--store", store)
        assert created.returncode == 0, created.stderr
        assert kbqa("--data-dir", data, "index", "build", docs, "--kb", name).returncode == 0
    for name in ("faiss_kb", "milvus_kb"):
        result = kbqa(
            "--data-dir", data, "search", "--kb", name, "报销需要多久到账", "--mode", "dense", "--json"
        )
        assert result.returncode == 0, result.stderr
        found[name] = [
            (hit["source"], hit["text"], round(hit["score"], 4)) for hit in json.loads(result.stdout)
        ]
    assert found["faiss_kb"] and found["faiss_kb"] == found["milvus_kb"]
    info = json.loads(kbqa("--data-dir", data, "kb", "info", "milvus_kb", "--json").stdout)
    assert info["store"]["backend"] == "milvus" and info["store"]["uri"] == "milvus.db"

    migrated = kbqa("--data-dir", data, "kb", "migrate", "faiss_kb", "--to", "milvus")
    assert migrated.returncode == 0, migrated.stderr
    manifest = json.loads((tmp_path / "data" / "kbs" / "faiss_kb" / "manifest.json").read_text())
    assert manifest["store"]["backend"] == "milvus"
    result = kbqa(
        "--data-dir", data, "search", "--kb", "faiss_kb", "报销需要多久到账", "--mode", "dense", "--json"
    )
    hits = [(hit["source"], hit["text"], round(hit["score"], 4)) for hit in json.loads(result.stdout)]
    assert hits == found["faiss_kb"]
    assert kbqa("--data-dir", data, "kb", "migrate", "faiss_kb", "--to", "qdrant").returncode == 1


def test_http_create_with_milvus_store_searches_like_faiss(tmp_path: Path, e5_embedder) -> None:
    from servers import LoadedTestClient

    from app.server import create_app
    from app.settings import load_settings

    app = create_app(load_settings(data_dir=tmp_path / "data"))
    app.state.service.embedder = e5_embedder
    policy = "# 报销制度\n\n差旅费用在出差结束后三十天内提交，财务审核后五个工作日内到账。\n"
    leave = "# 休假制度\n\n员工工作满一年后享有带薪年假，每年十天。\n"
    found, shown = {}, {}
    with LoadedTestClient(app) as client:
        bad = client.post("/v1/kbs", json={"name": "x", "store": "faiss", "uri": "http://h:19530"})
        assert bad.status_code == 400, bad.text
        assert client.post("/v1/kbs", json={"name": "x", "store": "qdrant"}).status_code == 422
        for uri in ("../../escape.db", "/tmp/anywhere.db", "http://127.0.0.1:1"):
            refused = client.post("/v1/kbs", json={"name": "x", "store": "milvus", "uri": uri})
            assert refused.status_code == 400, refused.text
        assert client.get("/v1/kbs").json()["data"] == []
        for store in BACKENDS:
            created = client.post("/v1/kbs", json={"name": store, "store": store})
            assert created.status_code == 201, created.text
            shown[store] = created.json()["store"]
            parts = [("files", ("policy.md", policy.encode())), ("files", ("leave.md", leave.encode()))]
            job = client.post(f"/v1/kbs/{store}/documents", files=parts).json()["job"]
            deadline = time.monotonic() + 60
            while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
                time.sleep(0.05)
                job = client.get(f"/v1/jobs/{job['id']}").json()
            assert job["status"] == "succeeded", job
            response = client.post(f"/v1/kbs/{store}/search", json={"query": "年假有几天", "mode": "dense"})
            assert response.status_code == 200, response.text
            found[store] = [(hit["source"], round(hit["score"], 4)) for hit in response.json()["data"]]
    assert found["faiss"][0][0] == "leave.md" and found["faiss"] == found["milvus"]
    manifest = json.loads((tmp_path / "data" / "kbs" / "milvus" / "manifest.json").read_text())
    assert manifest["store"]["backend"] == "milvus" and manifest["store"]["uri"] == "milvus.db"
    assert shown["milvus"] == manifest["store"] and shown["milvus"]["collection"].startswith("kbqa_")
    assert shown["faiss"] == {"backend": "faiss", "uri": None, "collection": None}


def test_a_knowledge_base_held_open_follows_a_migration_by_another_handle(
    catalog: KnowledgeBaseCatalog,
) -> None:
    filled(catalog, "kb", "faiss").close()
    held = OpenKnowledgeBases(catalog)
    query = normalised(np.random.default_rng(6), 1)[0]
    before = held.get("kb")
    expected = top(before, query, 5)
    other = catalog.open("kb")  # as `kbqa kb migrate` in another process
    other.switch_store(new_store("kb", "milvus"))
    other.close()
    after = held.get("kb")
    assert after is not before and after.manifest.store.backend == "milvus"
    assert [i for i, _ in top(after, query, 5)] == [i for i, _ in expected]

    writer = catalog.open("kb")  # another writer, straight into the shared collection
    with writer.writing():
        writer.add_documents([document("near.txt", query[None, :])])
        found = top(held.get("kb"), query, 1)
    writer.close()
    assert found[0][1] == pytest.approx(1.0, abs=1e-5) and held.get("kb").check().ok
    held.close()


HOLD_OPEN = """
import sys, time
from pathlib import Path
from retrieval import EmbeddingIdentity, KnowledgeBaseCatalog, new_store
identity = EmbeddingIdentity(backend="test", model="/models/random", model_name="random", dimension=16)
kb = KnowledgeBaseCatalog(Path(sys.argv[1])).create("kb", identity, {}, new_store("kb", "milvus"))
print("open", flush=True)
time.sleep(120)
"""


def test_a_milvus_lite_file_held_by_another_process_is_a_clear_busy_error(tmp_path: Path) -> None:
    # Milvus Lite locks its file for the life of the first process that opens it.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    catalog = KnowledgeBaseCatalog(tmp_path / "data")
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(KnowledgeBaseBusy, match="one process at a time"):
            catalog.open("kb")
    finally:
        holder.kill()
        holder.wait()
    reopened = catalog.open("kb")  # free once the other process is gone
    assert reopened.manifest.store.backend == "milvus" and reopened.index.count == 0
    reopened.close()
