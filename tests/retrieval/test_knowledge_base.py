"""The knowledge base on disk: catalog, atomic writes, FAISS/SQLite consistency, model identity."""

from __future__ import annotations

import gc
import sqlite3
import weakref
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pieces import OcrPiece, Piece
from postgres import pg_catalog

from retrieval import (
    DocumentNotFound,
    EmbeddingIdentity,
    EmbeddingMismatch,
    InvalidName,
    KnowledgeBaseBusy,
    KnowledgeBaseCatalog,
    KnowledgeBaseExists,
    KnowledgeBaseNotFound,
    NewDocument,
    OpenKnowledgeBases,
)
from retrieval.catalog import METADATA_VALUES_SHOWN
from retrieval.knowledge_base import STORE_FILE
from retrieval.lexical import match_expression
from retrieval.vector_index import INDEX_FILE, INDEX_STATE_FILE

DIM = 8
IDENTITY = EmbeddingIdentity(
    backend="test", model="/models/unit-vectors", model_name="unit-vectors", dimension=DIM
)


def unit(axis: int, dim: int = DIM) -> np.ndarray:
    vector = np.zeros(dim, dtype=np.float32)
    vector[axis] = 1.0
    return vector


def document(source: str, axes: list[int], content_hash: str | None = None) -> NewDocument:
    chunks = [
        Piece(f"{source} chunk {i}", page=i + 1, heading_path=("H",), start=i, end=i + 1)
        for i in range(len(axes))
    ]
    return NewDocument(
        source=source,
        title=source,
        content_hash=content_hash or f"hash-{source}",
        size=10,
        page_count=len(axes),
        chunks=chunks,
        vectors=np.stack([unit(a) for a in axes]),
    )


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KnowledgeBaseCatalog]:
    """The catalog of each store: SQLite files under a data directory, or a database of its own on PostgreSQL."""
    if request.param == "sqlite":
        yield KnowledgeBaseCatalog(tmp_path / "data")
        return
    catalog = pg_catalog(request.getfixturevalue("pg_dsn"), tmp_path / "data")
    yield catalog
    catalog.database.close()


def sqlite_only(catalog: KnowledgeBaseCatalog) -> None:
    """Skip a test of the SQLite store's files on the PostgreSQL store, which keeps no files."""
    if not isinstance(catalog, KnowledgeBaseCatalog):
        pytest.skip("about the SQLite store's files; the PostgreSQL store keeps none")


def test_create_list_info_delete(catalog: KnowledgeBaseCatalog) -> None:
    catalog.create("产品手册", IDENTITY, {"chunk_size": 300}).close()
    catalog.create("hr-docs_2024", IDENTITY, {}).close()
    assert catalog.names() == ["hr-docs_2024", "产品手册"]
    info = catalog.info("产品手册")
    assert (info.documents, info.chunks) == (0, 0)
    assert info.embedding == IDENTITY
    assert info.splitter == {"chunk_size": 300}
    assert info.size_bytes > 0
    catalog.delete("产品手册")
    assert catalog.names() == ["hr-docs_2024"]
    assert not list(catalog.root.glob(".*")), "no staging or trash directory is left behind"


@pytest.mark.parametrize("name", ["", "../etc", "a/b", ".hidden", "_x", "a b", "x" * 65, "a.b", "名\n字"])
def test_invalid_names_are_refused(catalog: KnowledgeBaseCatalog, name: str) -> None:
    with pytest.raises(InvalidName, match="invalid knowledge-base name"):
        catalog.create(name, IDENTITY, {})
    assert not catalog.root.exists() or not any(catalog.root.iterdir())


def test_duplicate_and_missing(catalog: KnowledgeBaseCatalog) -> None:
    catalog.create("kb", IDENTITY, {}).close()
    with pytest.raises(KnowledgeBaseExists):
        catalog.create("kb", IDENTITY, {})
    with pytest.raises(KnowledgeBaseNotFound, match="'nope' does not exist"):
        catalog.open("nope")
    with pytest.raises(KnowledgeBaseNotFound):
        catalog.delete("nope")


def test_add_search_replace_delete(catalog: KnowledgeBaseCatalog) -> None:
    kb = catalog.create("kb", IDENTITY, {})
    with kb.writing():
        first = kb.add_documents([document("a.md", [0, 1]), document("b.md", [2])])
    assert kb.counts() == (2, 3)
    hits = kb.search(unit(2), k=2)
    assert hits[0].chunk.source == "b.md"
    assert hits[0].score == pytest.approx(1.0)
    assert hits[1].score == pytest.approx(0.0)
    assert hits[0].chunk.heading_path == ("H",) and hits[0].chunk.page == 1

    # Replacing a.md: its old chunks leave both the store and the index.
    with kb.writing():
        second = kb.add_documents([document("a.md", [3], content_hash="hash-a2")])
    assert set(second.removed_ids.tolist()) == set(first.added_ids[:2].tolist())
    assert kb.counts() == (2, 2)
    assert kb.search(unit(0), k=1)[0].score == pytest.approx(0.0)
    assert kb.search(unit(3), k=1)[0].chunk.text == "a.md chunk 0"
    assert kb.check().ok

    b = kb.document_by_source("b.md")
    with kb.writing():
        kb.delete_documents([b.id])
    assert kb.counts() == (1, 1)
    assert kb.check().ok
    kb.close()

    reopened = catalog.open("kb", IDENTITY)
    assert [d.source for d in reopened.documents()] == ["a.md"]
    assert reopened.search(unit(3), k=5)[0].chunk.source == "a.md"
    assert reopened.check().ok


def test_chunk_ids_are_never_reused(catalog: KnowledgeBaseCatalog) -> None:
    kb = catalog.create("kb", IDENTITY, {})
    with kb.writing():
        old = kb.add_documents([document("a.md", [0])]).added_ids
        kb.delete_documents([kb.document_by_source("a.md").id])
        new = kb.add_documents([document("a.md", [0])]).added_ids
    assert new.min() > old.max()


def test_writes_need_the_writer_lock(catalog: KnowledgeBaseCatalog) -> None:
    kb = catalog.create("kb", IDENTITY, {})
    with pytest.raises(RuntimeError, match="kb.writing"):
        kb.add_documents([document("a.md", [0])])
    assert kb.counts() == (0, 0)


def test_second_writer_is_refused(catalog: KnowledgeBaseCatalog) -> None:
    kb = catalog.create("kb", IDENTITY, {})
    other = catalog.open("kb")
    with kb.writing(), pytest.raises(KnowledgeBaseBusy, match="another process"), other.writing():
        pass


def test_wrong_vectors_are_refused_and_nothing_is_written(catalog: KnowledgeBaseCatalog) -> None:
    kb = catalog.create("kb", IDENTITY, {})
    bad = NewDocument("bad.md", "bad", "h", 1, None, [Piece("x")], np.zeros((1, DIM + 1), np.float32))
    with kb.writing(), pytest.raises(ValueError, match="shape"):
        kb.add_documents([document("good.md", [0]), bad])
    assert kb.counts() == (0, 0)
    with pytest.raises(ValueError, match="dimensions"):
        kb.search(np.zeros(DIM + 1, np.float32), k=1)


def test_terms_made_by_the_caller_are_the_lexical_index_and_must_match_the_chunks(
    catalog: KnowledgeBaseCatalog,
) -> None:
    kb = catalog.create("kb", IDENTITY, {})
    plain = document("plain.md", [0, 1])
    made = replace(document("made.md", [2, 3]), indexed_terms=["given words", "tricolour"])
    with kb.writing():
        kb.add_documents([plain, made])
    # The store keeps the caller's terms instead of cutting the chunk's text again ...
    assert [hit.chunk.source for hit in kb.lexical_search(match_expression("tricolour"), k=5)] == ["made.md"]
    assert kb.lexical_search(match_expression("made.md chunk 1"), k=5)[0].chunk.source != "made.md"
    # ... and makes them itself for a document without them.
    assert kb.lexical_search(match_expression("plain.md chunk 1"), k=1)[0].chunk.text == "plain.md chunk 1"
    short = replace(document("short.md", [4, 5]), indexed_terms=["one"])
    with kb.writing(), pytest.raises(ValueError, match="2 chunks but 1 indexed terms"):
        kb.add_documents([document("good.md", [6]), short])
    assert kb.counts() == (2, 4)


def test_other_embedding_model_is_refused_with_both_names(catalog: KnowledgeBaseCatalog) -> None:
    catalog.create("kb", IDENTITY, {}).close()
    other = EmbeddingIdentity(
        backend="test", model="BAAI/bge-small-zh", model_name="bge-small-zh", dimension=DIM
    )
    with pytest.raises(EmbeddingMismatch) as raised:
        catalog.open("kb", other)
    assert "/models/unit-vectors" in str(raised.value) and "BAAI/bge-small-zh" in str(raised.value)
    # The same model from another place (hub id vs local directory) is the same model.
    same = EmbeddingIdentity(
        backend="test", model="org/unit-vectors", model_name="unit-vectors", dimension=DIM
    )
    catalog.open("kb", same).close()


@pytest.mark.parametrize("damage", ["missing_index", "stale_generation", "corrupt_index"])
def test_index_is_rebuilt_from_the_store_when_it_lags(catalog: KnowledgeBaseCatalog, damage: str) -> None:
    sqlite_only(catalog)
    kb = catalog.create("kb", IDENTITY, {})
    directory = kb.directory
    with kb.writing():
        kb.add_documents([document("a.md", [0, 1])])
    saved_index = (directory / INDEX_FILE).read_bytes()
    saved_state = (directory / INDEX_STATE_FILE).read_text()
    with kb.writing():
        kb.add_documents([document("b.md", [2])])
    kb.close()
    if damage == "missing_index":
        (directory / INDEX_FILE).unlink()
    elif damage == "stale_generation":
        # As if the process died after committing b.md but before saving the index.
        (directory / INDEX_FILE).write_bytes(saved_index)
        (directory / INDEX_STATE_FILE).write_text(saved_state)
    else:
        (directory / INDEX_FILE).write_bytes(b"not a faiss index")

    reopened = catalog.open("kb")
    assert reopened.check().ok
    assert reopened.index.count == 3
    assert reopened.search(unit(2), k=1)[0].chunk.source == "b.md"


def test_metadata_round_trips_and_is_set_in_place(catalog: KnowledgeBaseCatalog) -> None:
    kb = catalog.create("kb", IDENTITY, {})
    tagged = replace(document("a.md", [0, 1]), metadata={"部门": "人事", "year": "2024"})
    with kb.writing():
        added = kb.add_documents([tagged, document("b.md", [2])])
    a = kb.document_by_source("a.md")
    assert a.metadata == {"部门": "人事", "year": "2024"}
    assert kb.document_by_source("b.md").metadata == {}
    assert kb.search(unit(0), k=1)[0].chunk.metadata == {"部门": "人事", "year": "2024"}
    assert kb.chunk_ids_where(None, None, {"部门": "人事"}) == set(added.added_ids[:2].tolist())
    assert kb.chunk_ids_where(None, "b*", {"部门": "人事"}) == set()

    with pytest.raises(RuntimeError, match="kb.writing"):
        kb.set_metadata(a.id, {"year": "2025"})
    generation = kb.store.generation
    with kb.writing():
        kb.set_metadata(a.id, {"year": "2025"})
        with pytest.raises(DocumentNotFound):
            kb.set_metadata(10**6, {})
        with pytest.raises(ValueError, match="invalid metadata key"):
            kb.set_metadata(a.id, {"a.b": "x"})
    assert kb.store.generation == generation  # chunks untouched, so the FAISS index stays current
    kb.close()

    reopened = catalog.open("kb", IDENTITY)
    assert [d.metadata for d in reopened.documents()] == [{"year": "2025"}, {}]
    assert reopened.chunk_ids_where(None, None, {"部门": "人事"}) == set()
    assert reopened.chunk_ids_where(None, None, {"year": "2025"}) == set(added.added_ids[:2].tolist())
    assert reopened.check().ok


def test_groups_are_written_with_the_document_set_in_place_and_filter_chunks(
    catalog: KnowledgeBaseCatalog,
) -> None:
    kb = catalog.create("kb", IDENTITY, {})
    with kb.writing():
        added = kb.add_documents(
            [
                replace(document("hr.md", [0]), groups=["人事", "hr", "hr"]),
                replace(document("both.md", [1]), groups=["eng", "hr"]),
                document("open.md", [2]),
            ]
        )
    hr, both, everyone = (int(i) for i in added.added_ids)
    assert [(d.source, d.groups) for d in kb.documents()] == [
        ("hr.md", ("hr", "人事")),  # sorted, without repeats
        ("both.md", ("eng", "hr")),
        ("open.md", ()),
    ]
    assert kb.document_by_source("both.md").groups == ("eng", "hr")
    assert kb.chunk_ids_where(None, None) == {hr, both, everyone}  # no groups filter: every document
    assert kb.chunk_ids_where(None, None, None, frozenset({"hr"})) == {hr, both, everyone}
    assert kb.chunk_ids_where(None, None, None, frozenset({"eng", "x"})) == {both, everyone}
    assert kb.chunk_ids_where(None, None, None, frozenset({"人事"})) == {hr, everyone}
    assert kb.chunk_ids_where(None, None, None, frozenset()) == {everyone}  # only documents without groups
    assert kb.chunk_ids_where(None, "h*", None, frozenset({"eng"})) == set()

    with pytest.raises(RuntimeError, match="kb.writing"):
        kb.set_groups(1, [])
    generation = kb.store.generation
    with kb.writing():
        kb.set_groups(kb.document_by_source("open.md").id, ["eng"])
        kb.set_groups(kb.document_by_source("hr.md").id, [])
        with pytest.raises(DocumentNotFound):
            kb.set_groups(10**6, ["hr"])
        with pytest.raises(ValueError, match="invalid group"):
            kb.set_groups(1, ["a b"])
    assert kb.store.generation == generation  # chunks untouched, so the vector index stays current
    kb.close()

    reopened = catalog.open("kb", IDENTITY)
    assert [d.groups for d in reopened.documents()] == [(), ("eng", "hr"), ("eng",)]
    assert reopened.chunk_ids_where(None, None, None, frozenset()) == {hr}
    assert reopened.chunk_ids_where(None, None, None, frozenset({"eng"})) == {hr, both, everyone}
    with reopened.writing():  # a new version of a document has the groups it is written with
        reopened.add_documents([document("both.md", [3])])
    assert reopened.document_by_source("both.md").groups == ()
    assert reopened.check().ok
    reopened.close()


def test_bad_groups_write_nothing(catalog: KnowledgeBaseCatalog) -> None:
    kb = catalog.create("kb", IDENTITY, {})
    bad = replace(document("bad.md", [1]), groups=["hr') OR 1=1 --"])
    with kb.writing(), pytest.raises(ValueError, match="invalid group"):
        kb.add_documents([document("good.md", [0]), bad])
    assert kb.counts() == (0, 0)
    assert kb.check().ok
    kb.close()


def test_bad_metadata_writes_nothing(catalog: KnowledgeBaseCatalog) -> None:
    kb = catalog.create("kb", IDENTITY, {})
    bad = replace(document("bad.md", [1]), metadata={'a") OR 1=1 --': "x"})
    with kb.writing(), pytest.raises(ValueError, match="invalid metadata key"):
        kb.add_documents([document("good.md", [0]), bad])
    assert kb.counts() == (0, 0)
    assert kb.check().ok


def test_info_shows_a_few_values_of_each_metadata_key(catalog: KnowledgeBaseCatalog) -> None:
    kb = catalog.create("kb", IDENTITY, {})
    with kb.writing():
        kb.add_documents(
            [
                replace(document(f"{i:02d}.md", [i % DIM]), metadata={"n": f"{i:02d}", "team": "hr"})
                for i in range(15)
            ]
        )
    kb.close()
    info = catalog.info("kb")
    assert info.metadata == {"n": [f"{i:02d}" for i in range(METADATA_VALUES_SHOWN)], "team": ["hr"]}


# The documents table as it was before document metadata; the rest of the schema is unchanged.
OLD_DOCUMENTS_TABLE = """
CREATE TABLE documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    page_count INTEGER,
    chunk_count INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id INTEGER NOT NULL REFERENCES documents(id),
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    heading_path TEXT NOT NULL,
    start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE VIRTUAL TABLE chunk_terms USING fts5(terms);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta (key, value) VALUES ('generation', '1');
INSERT INTO documents VALUES (1, 'old.md', 'old', 'hash-old', 10, NULL, 1, 'ready', '2024-01-01', '2024-01-01');
INSERT INTO chunk_terms (rowid, terms) VALUES (1, 'old chunk');
"""


def test_store_made_before_metadata_and_ocr_opens_and_gets_the_columns(catalog: KnowledgeBaseCatalog) -> None:
    sqlite_only(catalog)
    directory = catalog.create("kb", IDENTITY, {}).directory
    store = directory / STORE_FILE
    store.unlink()
    with sqlite3.connect(store) as db:
        db.executescript(OLD_DOCUMENTS_TABLE)
        db.execute(
            "INSERT INTO chunks VALUES (1, 1, 0, 'old chunk', NULL, '[]', 0, 9, ?)", (unit(4).tobytes(),)
        )

    kb = catalog.open("kb", IDENTITY)  # the FAISS index lags the store, so it is rebuilt from it too
    assert [(d.source, d.metadata) for d in kb.documents()] == [("old.md", {})]
    assert kb.search(unit(4), k=1)[0].chunk.metadata == {}
    assert kb.search(unit(4), k=1)[0].chunk.ocr is False
    assert kb.check().ok
    assert kb.chunk_ids_where(None, None, {"team": "hr"}) == set()
    with kb.writing():
        kb.set_metadata(1, {"team": "hr"})
        scanned = OcrPiece("new.md scanned page", page=1)
        kb.add_documents([replace(document("new.md", [5]), metadata={"team": "it"}, chunks=[scanned])])
    assert kb.chunk_ids_where(None, None, {"team": "hr"}) == {1}
    kb.close()

    with sqlite3.connect(store) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(documents)")]
        chunk_columns = [row[1] for row in db.execute("PRAGMA table_info(chunks)")]
    assert columns[-2:] == ["metadata", "access_groups"] and columns.count("metadata") == 1
    assert chunk_columns[-1] == "ocr" and chunk_columns.count("ocr") == 1
    reopened = catalog.open("kb", IDENTITY)  # a second open finds the column and leaves it be
    assert {d.source: d.metadata for d in reopened.documents()} == {
        "old.md": {"team": "hr"},
        "new.md": {"team": "it"},
    }
    assert catalog.info("kb").metadata == {"team": ["hr", "it"]}
    assert [hit.chunk.ocr for hit in reopened.search(unit(5), k=2)] == [True, False]
    reopened.close()


def test_lexical_terms_cut_the_old_way_are_remade_once_and_match_either_script(
    catalog: KnowledgeBaseCatalog,
) -> None:
    sqlite_only(catalog)
    kb = catalog.create("kb", IDENTITY, {})
    taiwan = replace(document("taiwan.md", [1]), chunks=[Piece("國立臺灣大學圖書館於西元1928年開館。")])
    with kb.writing():
        kb.add_documents([taiwan])
    kb.close()
    simplified = match_expression("台湾大学图书馆哪年开馆？")
    with sqlite3.connect(kb.directory / STORE_FILE) as db:  # as a store before LEXICAL_VERSION 2 held it
        db.execute("UPDATE chunk_terms SET terms = '國立 臺灣 大學 圖書館 於 西元 1928 年 開館'")
        db.execute("DELETE FROM meta WHERE key = 'lexical_version'")
        assert db.execute(
            "SELECT COUNT(*) FROM chunk_terms WHERE chunk_terms MATCH ?", (simplified,)
        ).fetchone() == (0,)

    reopened = catalog.open("kb", IDENTITY)
    assert [hit.chunk.text for hit in reopened.lexical_search(simplified, 1)] == [taiwan.chunks[0].text]
    assert reopened.lexical_search(match_expression("臺灣大學圖書館"), 1)  # and the script it is written in
    assert reopened.check().ok
    reopened.close()
    with sqlite3.connect(kb.directory / STORE_FILE) as db:
        db.execute("UPDATE chunk_terms SET terms = 'kept'")  # a second open finds the terms current
    again = catalog.open("kb", IDENTITY)
    assert again.lexical_search('"kept"', 1)
    again.close()


# --- knowledge bases held open by a long-running process (the server) ------------------------------


def sources_found(kb, axis: int) -> list[str]:
    return [hit.chunk.text.split()[0] for hit in kb.search(unit(axis), 3)]


def test_an_open_knowledge_base_is_shared_and_sees_other_writers(catalog: KnowledgeBaseCatalog) -> None:
    kb = catalog.create("kb", IDENTITY, {})
    with kb.writing():
        kb.add_documents([document("a.md", [0])])
    kb.close()
    held = OpenKnowledgeBases(catalog)
    shared = held.get("kb")
    assert held.get("kb") is shared, "a second request must not load the index again"
    index_before = shared.index

    # Another writer (as `kbqa index build` in another process: its own handle and file lock), seen
    # after each of its commits, before it has saved its own index.
    other = catalog.open("kb")
    with other.writing():
        other.add_documents([document("b.md", [1]), document("c.md", [3])])
        refreshed = held.get("kb")
        assert refreshed is shared and refreshed.index is index_before, "caught up in place, not reloaded"
        assert sources_found(refreshed, 1)[0] == "b.md" and refreshed.check().ok
        other.delete_documents([d.id for d in other.documents() if d.source == "a.md"])
        other.add_documents([document("c.md", [4], content_hash="c2")])  # replaced: new chunk ids
        current = held.get("kb")
        assert current.index.count == 2 and current.check().ok
        assert "a.md" not in sources_found(current, 0) and sources_found(current, 4)[0] == "c.md"
        assert current.search(unit(3), 1)[0].score < 0.5, "the replaced chunk's old vector is gone"
    other.close()

    # Deleted and created again under the same name: a different knowledge base, opened afresh.
    catalog.delete("kb")
    with pytest.raises(KnowledgeBaseNotFound):
        held.get("kb")
    again = catalog.create("kb", IDENTITY, {})
    with again.writing():
        again.add_documents([document("c.md", [2])])
    again.close()
    reopened = held.get("kb")
    assert reopened is not shared and [d.source for d in reopened.documents()] == ["c.md"]

    reopened.close()  # a caller closing the shared handle must not break the next one
    assert held.get("kb").documents()[0].source == "c.md"
    held.close()


def test_removing_refuses_while_a_writer_holds_it(catalog: KnowledgeBaseCatalog) -> None:
    catalog.create("kb", IDENTITY, {}).close()
    held = OpenKnowledgeBases(catalog)
    shared = held.get("kb")
    with shared.writing():
        shared.add_documents([document("a.md", [0])])
        with pytest.raises(KnowledgeBaseBusy), held.removing("kb"):
            catalog.delete("kb")
    assert catalog.exists("kb") and held.get("kb").counts() == (1, 1)
    with held.removing("kb"):
        catalog.delete("kb")
    assert not catalog.exists("kb")
    with pytest.raises(KnowledgeBaseNotFound):
        held.get("kb")


def test_the_least_recently_used_knowledge_base_beyond_the_limit_is_let_go(
    catalog: KnowledgeBaseCatalog,
) -> None:
    for name in ("a", "b", "c"):
        catalog.create(name, IDENTITY, {}).close()
    held = OpenKnowledgeBases(catalog, limit=2)
    first = weakref.ref(held.get("a"))
    b = held.get("b")
    assert held.get("a") is first(), "a second request for a held one reuses it"
    held.get("c")  # three asked for, two held: b is the least recently used
    assert held.get("a") is first() and held.get("b") is not b
    del b
    held.get("c")  # now a is the least recently used; let go, nothing else refers to it
    gc.collect()
    assert first() is None, "a knowledge base let go is freed once no request uses it"
    assert held.get("a").counts() == (0, 0)
