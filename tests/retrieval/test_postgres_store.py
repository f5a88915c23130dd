"""The PostgreSQL store against the SQLite one on the same documents, and the errors a user can meet with it.

The shared contract (create, write, search, filters, metadata, writers) runs on both stores in
test_knowledge_base.py and test_vector_backends.py; here, what only this store has: BM25 computed in SQL
that must give FTS5's figures, its schema versions, and one clear line for a database that is down,
unreachable, too new, or without pgvector.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pieces import Piece
from postgres import pg_catalog
from servers import KBQA, clean_env

from retrieval import DatabaseError, DatabaseUnavailable, EmbeddingIdentity, KnowledgeBaseCatalog, NewDocument
from retrieval.lexical import content_terms, match_expression, terms
from retrieval.postgres import SCHEMA_VERSION, Database, StoreConfig

DIM = 8
IDENTITY = EmbeddingIdentity(backend="test", model="/models/random", model_name="random", dimension=DIM)
TEXTS = [
    "员工入职满一年后，每年享有十天带薪年假，年假需提前三个工作日在系统中申请。",
    "差旅费用报销单经部门经理审批后，财务部在五个工作日内将款项打入员工工资卡。",
    "Connect to the company VPN with the FortiClient app; version 3.5 needs a café-grade password.",
    "病假需要提供医院证明；年假与病假不可合并申请。臺灣分公司的年假另行規定。",
    "三楼东侧的彩色打印机需要刷工卡才能打印，卡纸时请联系行政部。API２ 的文档在内网。",
]
QUESTIONS = ["年假有多少天", "报销多久到账", "VPN 3.5 café", "台湾年假", "打印机卡纸 api2", "不存在的词语"]


def documents() -> list[NewDocument]:
    rng = np.random.default_rng(0)
    found = []
    for i, text in enumerate(TEXTS):
        vectors = rng.standard_normal((2, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        chunks = [Piece(text), Piece(text[: len(text) // 2], heading_path=("制度", f"第{i}章"))]
        found.append(
            NewDocument(
                f"d{i}.md", f"文档 {i}", f"h{i}", 1, 1, chunks, vectors, metadata={"team": str(i % 2)}
            )
        )
    return found


@pytest.fixture
def both(pg_dsn: str, tmp_path: Path):
    sqlite_kb = KnowledgeBaseCatalog(tmp_path / "sqlite").create("kb", IDENTITY, {})
    catalog = pg_catalog(pg_dsn, tmp_path / "pg")
    pg_kb = catalog.create("kb", IDENTITY, {})
    for kb in (sqlite_kb, pg_kb):
        with kb.writing():
            kb.add_documents(documents())
            kb.delete_documents([kb.documents()[1].id])  # a delete moves N and the average length too
    yield sqlite_kb, pg_kb
    sqlite_kb.close()
    catalog.database.close()


def test_bm25_scores_and_term_counts_equal_the_sqlite_stores(both) -> None:
    sqlite_kb, pg_kb = both
    for question in QUESTIONS:
        expression = match_expression(question)
        assert expression is not None
        on_sqlite = [(hit.chunk.id, hit.score) for hit in sqlite_kb.lexical_search(expression, 10)]
        on_pg = [(hit.chunk.id, hit.score) for hit in pg_kb.lexical_search(expression, 10)]
        assert [i for i, _ in on_pg] == [i for i, _ in on_sqlite], question
        np.testing.assert_allclose([s for _, s in on_pg], [s for _, s in on_sqlite], rtol=1e-9)
        allowed = pg_kb.chunk_ids_where(None, None, {"team": "0"})
        assert allowed == sqlite_kb.chunk_ids_where(None, None, {"team": "0"})
        filtered = [(h.chunk.id, h.score) for h in pg_kb.lexical_search(expression, 10, allowed)]
        expected = [(h.chunk.id, h.score) for h in sqlite_kb.lexical_search(expression, 10, allowed)]
        assert [i for i, _ in filtered] == [i for i, _ in expected], question
        np.testing.assert_allclose([s for _, s in filtered], [s for _, s in expected], rtol=1e-9)
        asked = content_terms(question) + terms(question)
        assert pg_kb.term_counts(asked) == sqlite_kb.term_counts(asked)
    assert [h.chunk.id for h in pg_kb.lexical_search(match_expression("年假"), 10)], "something to compare"


def test_source_globs_filter_as_sqlite_glob_does(both) -> None:
    sqlite_kb, pg_kb = both
    for glob in ["d*", "d[0-2].md", "d[^0]*", "?3.md", "*.txt", "D*"]:
        assert pg_kb.chunk_ids_where(None, glob) == sqlite_kb.chunk_ids_where(None, glob), glob


def test_a_schema_newer_than_kbqa_is_one_clear_error(pg_dsn: str) -> None:
    import psycopg

    database = Database(StoreConfig(backend="postgres", dsn=pg_dsn))
    database.check()  # made at the current version
    database.close()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT version FROM kbqa_schema").fetchone() == (SCHEMA_VERSION,)
        conn.execute("UPDATE kbqa_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(DatabaseError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this kbqa"):
        Database(StoreConfig(backend="postgres", dsn=pg_dsn)).check()
    result = cli(pg_dsn, "kb", "list")
    assert result.returncode == 2
    assert "newer than this kbqa" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_wrong_dsn_is_one_clear_error_on_every_face(tmp_path: Path) -> None:
    dsn = f"postgresql://kbqa:secret@/kbqa?host={tmp_path}&port=5999"  # nobody listens there
    with pytest.raises(DatabaseUnavailable, match="is unavailable"):
        Database(StoreConfig(backend="postgres", dsn=dsn, connect_timeout_s=1)).check()
    for command in (("kb", "list"), ("worker",), ("search", "--kb", "x", "VPN")):
        result = cli(dsn, *command)
        assert result.returncode != 0, command
        assert "unavailable" in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "secret" not in result.stderr, "the password is never shown"


def test_a_database_without_pgvector_for_this_user_is_one_clear_error(pg_server, pg_dsn: str) -> None:
    import psycopg

    # pgvector is not a trusted extension: a user who is not the database's superuser cannot create it.
    database = pg_dsn.split("?")[0].rsplit("/", 1)[1]
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute("DO $$ BEGIN CREATE ROLE plain LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        conn.execute(f"GRANT ALL ON DATABASE {database} TO plain")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("GRANT ALL ON SCHEMA public TO plain")
    plain = pg_dsn.replace("postgres:@", "plain:@")
    with pytest.raises(DatabaseError, match="pgvector"):
        Database(StoreConfig(backend="postgres", dsn=plain)).check()
    result = cli(plain, "kb", "list")
    assert result.returncode == 2 and "pgvector" in result.stderr and "Traceback" not in result.stderr


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess:
    env = clean_env(KBQA_STORE__BACKEND="postgres", KBQA_STORE__DSN=dsn, KBQA_STORE__CONNECT_TIMEOUT_S="1")
    return subprocess.run([KBQA, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_a_node_follows_what_another_node_writes_deletes_and_creates_again(
    pg_dsn: str, tmp_path: Path
) -> None:
    from retrieval import KnowledgeBaseBusy, KnowledgeBaseNotFound, OpenKnowledgeBases

    # Two nodes: each its own connection pool and its own knowledge bases held open, nothing else shared.
    node_a, node_b = pg_catalog(pg_dsn, tmp_path / "a"), pg_catalog(pg_dsn, tmp_path / "b")
    try:
        writer = node_b.create("kb", IDENTITY, {})
        held = OpenKnowledgeBases(node_a)
        shared = held.get("kb")
        assert shared.counts() == (0, 0)
        first, *rest = documents()
        with writer.writing():
            # One writer across the nodes.
            with pytest.raises(KnowledgeBaseBusy, match="another process"), held.get("kb").writing():
                pass
            writer.add_documents([first])
        generation = writer.store.generation
        assert held.get("kb") is shared and shared.index.generation == generation
        query = first.vectors[0]
        assert shared.search(query, 1)[0].chunk.source == "d0.md"

        with writer.writing():
            writer.delete_documents([writer.documents()[0].id])
            writer.add_documents(rest)
        assert held.get("kb").index.generation > generation
        assert "d0.md" not in {hit.chunk.source for hit in shared.search(query, 10)}

        node_b.delete("kb")
        with pytest.raises(KnowledgeBaseNotFound):
            held.get("kb")
        again = node_b.create("kb", IDENTITY, {})
        with again.writing():
            again.add_documents([first])
        reopened = held.get("kb")
        assert reopened is not shared and [d.source for d in reopened.documents()] == ["d0.md"]
        held.close()
    finally:
        node_a.database.close()
        node_b.database.close()


def test_migrate_to_postgres_and_back_keeps_ids_metadata_vectors_and_originals(
    pg_dsn: str, tmp_path: Path
) -> None:
    from app.services import KnowledgeService
    from app.settings import load_settings

    data = tmp_path / "data"
    files = KnowledgeBaseCatalog(data)
    kb = files.create("kb", IDENTITY, {"chunk_size": 300})
    with kb.writing():
        kb.add_documents(documents())
        kb.delete_documents([kb.documents()[-1].id])  # the highest ids are gone: never to be given again
    original = files.path("kb") / "originals" / "d0.md"
    original.parent.mkdir(parents=True)
    original.write_bytes(b"# the uploaded file")

    def state(kb) -> tuple:
        query = documents()[2].vectors[0]
        return (
            [(d.id, d.source, d.metadata, d.created_at) for d in kb.documents()],
            [(h.chunk.id, round(h.score, 5)) for h in kb.search(query, 10)],
            [(h.chunk.id, round(h.score, 6)) for h in kb.lexical_search(match_expression("年假 VPN"), 10)],
            kb.store.id_counters(),
        )

    before = state(kb)
    kb.close()
    service = KnowledgeService(
        load_settings(data_dir=data, store={"backend": "sqlite", "dsn": pg_dsn})  # the DSN to move to
    )
    service.migrate("kb", "postgres")
    assert files.names() == [], "the SQLite copy is gone once the database has it"
    database = pg_catalog(pg_dsn, data)
    on_pg = database.open("kb")
    assert state(on_pg) == before and on_pg.check().ok
    assert on_pg.manifest.store.backend == "pgvector" and on_pg.manifest.splitter == {"chunk_size": 300}
    assert database.original("kb", "d0.md") == b"# the uploaded file"
    on_pg.close()

    service.migrate("kb", "sqlite")
    assert database.names() == []
    back = files.open("kb")
    assert state(back) == before and back.check().ok and back.manifest.store.backend == "faiss"
    assert original.read_bytes() == b"# the uploaded file"
    with back.writing():
        added = back.add_documents(documents()[:1])
    assert added.document_ids[0] == before[0][0][0], "a replaced document keeps its id"
    assert min(added.added_ids) >= before[3][1], "no chunk id is given twice"
    back.close()
    database.database.close()


def test_settings_refuse_a_postgres_store_without_dsn_and_a_server_without_worker_on_sqlite() -> None:
    from app.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="KBQA_STORE__DSN"):
        load_settings(store={"backend": "postgres"})
    with pytest.raises(SettingsError, match="ingest_worker false .* store.backend postgres"):
        load_settings(server={"ingest_worker": False})
    settings = load_settings(store={"backend": "postgres", "dsn": "postgresql://kbqa:secret@db/kbqa"})
    assert "secret" not in repr(settings.store) and settings.server.ingest_worker


def test_kbqa_worker_on_the_sqlite_store_says_what_it_needs() -> None:
    result = subprocess.run([KBQA, "worker"], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "store.backend postgres" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
