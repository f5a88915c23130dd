"""Kill `kbqa index build` with SIGKILL mid-way: the knowledge base opens consistent, a re-run completes it."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retrieval import KnowledgeBaseCatalog

KBQA = str(Path(sys.executable).parent / "kbqa")
FILES = 200


def write_corpus(folder: Path, version: str) -> None:
    folder.mkdir(exist_ok=True)
    for i in range(FILES):
        text = f"文档{i}（版本{version}）。第{i}号设备每{i % 12 + 1}个月维护一次。"
        (folder / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")


def commits(data: Path) -> int:
    """Return the write transactions committed so far (each adds or replaces at least one document; a
    replaced document keeps its id, so ids do not count replacements)."""
    db = data / "kbs" / "kb" / "store.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            row = connection.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            return int(row[0]) if row else 0
    except sqlite3.OperationalError:
        return 0  # the knowledge base is still being created


def build_and_kill(folder: Path, data: Path, env: dict[str, str], *, after_documents: int) -> None:
    """Start an index build and SIGKILL it once `after_documents` more documents are committed (one
    transaction holds at least one)."""
    start = commits(data)
    process = subprocess.Popen(
        [KBQA, "--data-dir", str(data), "index", "build", str(folder), "--kb", "kb"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if commits(data) >= start + after_documents:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the build finished before it could be killed; make the corpus larger"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def assert_consistent(data: Path) -> dict[str, str]:
    """Check the knowledge base and return each document's version, checking its chunks agree with it."""
    kb = KnowledgeBaseCatalog(data).open("kb")
    try:
        report = kb.check()
        assert report.ok, report
        versions = {}
        chunks = kb.store.chunks(kb.store.chunk_ids().tolist()).values()
        by_document: dict[int, list[str]] = {}
        for chunk in chunks:
            by_document.setdefault(chunk.document_id, []).append(chunk.text)
        for document in kb.documents():
            texts = by_document[document.id]
            assert len(texts) == document.chunk_count
            version = "A" if "版本A" in texts[0] else "B"
            assert all(f"版本{version}" in t or "版本" not in t for t in texts), (
                "a document mixes two versions"
            )
            versions[document.source] = version
        return versions
    finally:
        kb.close()


@pytest.mark.slow
def test_sigkill_during_build_and_during_replacement(tmp_path: Path) -> None:
    folder, data = tmp_path / "docs", tmp_path / "data"
    # Small batches: many transactions, so the kill lands between and during them.
    env = {**os.environ, "KBQA_INGESTION__BATCH_CHUNKS": "2", "KBQA_SPLITTER__CHUNK_SIZE": "12"}
    env["KBQA_SPLITTER__CHUNK_OVERLAP"] = "0"
    # One engine thread: OpenMP threads spin while they wait, and with this test polling on the
    # second core they would crawl.
    env["OMP_NUM_THREADS"] = "1"

    write_corpus(folder, "A")
    build_and_kill(folder, data, env, after_documents=20)
    partial = assert_consistent(data)
    assert 20 <= len(partial) < FILES

    finish = subprocess.run(
        [KBQA, "--data-dir", str(data), "index", "build", str(folder), "--kb", "kb"], env=env
    )
    assert finish.returncode == 0
    complete = assert_consistent(data)
    assert len(complete) == FILES and set(complete.values()) == {"A"}

    # Every file changes; kill while the documents are being replaced.
    write_corpus(folder, "B")
    build_and_kill(folder, data, env, after_documents=20)
    mixed = assert_consistent(data)
    assert len(mixed) == FILES, "a replaced document is never lost: it is old or new"
    assert "A" in mixed.values() and "B" in mixed.values()

    finish = subprocess.run(
        [KBQA, "--data-dir", str(data), "index", "build", str(folder), "--kb", "kb"], env=env
    )
    assert finish.returncode == 0
    assert set(assert_consistent(data).values()) == {"B"}
