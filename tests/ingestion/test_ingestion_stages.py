"""The ingestion pipeline's stages: reading ahead in bounded memory, parsing in processes, length-sorted batches."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from app.services import KnowledgeService
from app.settings import load_settings
from ingestion import IngestionConfig, IngestionPipeline, collect_files

BATCH = 4


class RecordingEmbedder:
    """Passes calls to an embedder and keeps each call's texts and the vector it gave every text."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.backend, self.model, self.model_name = inner.backend, inner.model, inner.model_name
        self.dimension = inner.dimension
        self.calls: list[list[str]] = []
        self.vectors: dict[str, np.ndarray] = {}

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        vectors = self._inner.embed_documents(texts)
        self.calls.append(list(texts))
        self.vectors.update(zip(texts, vectors, strict=True))
        return vectors

    def embed_query(self, text: str) -> np.ndarray:
        return self._inner.embed_query(text)

    def count_tokens(self, text: str) -> int:
        return self._inner.count_tokens(text)


def write_files(folder: Path, count: int) -> Path:
    """Write `count` small notes of different lengths, each its own chunk; return the folder."""
    folder.mkdir(parents=True)
    for i in range(count):
        body = f"第{i}条记录：" + "设备巡检完成，" * (1 + i % 7) + f"编号 {i:04d}。"
        (folder / f"note-{i:03d}.txt").write_text(body, encoding="utf-8")
    return folder


def ingest(tmp_path: Path, embedder, folder: Path, **ingestion) -> tuple[IngestionPipeline, object, object]:
    """Ingest `folder` into a new knowledge base; return the pipeline, its report and the knowledge base."""
    service = KnowledgeService(load_settings(data_dir=tmp_path / "data"))
    service.embedder = embedder  # the knowledge base is created for this model
    service.create("notes").close()
    files, _ = collect_files([folder])
    kb = service.open("notes")
    with kb.writing():
        pipeline = IngestionPipeline(kb, embedder, IngestionConfig(**ingestion))
        report = pipeline.run(files)
    return pipeline, report, kb


def test_memory_holds_about_two_batches_however_many_files(tmp_path: Path, tiny_embedder) -> None:
    folder = write_files(tmp_path / "docs", 60)
    pipeline, report, kb = ingest(tmp_path, tiny_embedder, folder, batch_chunks=BATCH)
    assert report.count("added") == 60
    largest = max(outcome.chunks for outcome in report.outcomes)
    # Pending batch + queued batch (each under BATCH plus one file) + the file being split.
    bound = 2 * BATCH + 3 * largest
    assert report.chunks > 3 * bound  # the run held far fewer chunks than it stored
    assert 0 < pipeline.peak_chunks_held <= bound
    assert pipeline.chunks_held == 0
    assert kb.check().ok


def test_batches_are_embedded_longest_first_and_vectors_stay_with_their_chunks(
    tmp_path: Path, tiny_embedder
) -> None:
    folder = write_files(tmp_path / "docs", 24)
    recorder = RecordingEmbedder(tiny_embedder)
    _, report, kb = ingest(tmp_path, recorder, folder, batch_chunks=32)
    assert report.count("added") == 24
    texts = [text for call in recorder.calls for text in call]
    assert len(texts) == report.chunks
    lengths = [len(text) for text in texts]
    assert lengths == sorted(lengths, reverse=True)  # one batch of 24 chunks, in EMBED_STEP pieces
    ids = kb.store.chunk_ids().tolist()
    stored = kb.vectors(ids)
    for chunk_id, vector in zip(ids, stored, strict=True):
        text = kb.store.chunks([chunk_id])[chunk_id].text
        (embedded,) = [t for t in recorder.vectors if t.endswith(text)]
        np.testing.assert_allclose(vector, recorder.vectors[embedded], atol=1e-6)


@pytest.mark.slow
def test_parsing_in_worker_processes_stores_the_same_chunks(tmp_path: Path, tiny_embedder) -> None:
    folder = write_files(tmp_path / "docs", 12)
    (folder / "broken.docx").write_bytes(b"not a zip file")  # fails in its worker, alone
    _, one, kb_one = ingest(tmp_path / "one", tiny_embedder, folder, batch_chunks=BATCH)
    _, two, kb_two = ingest(tmp_path / "two", tiny_embedder, folder, batch_chunks=BATCH, workers=2)
    by_source = {o.source: (o.status, o.chunks, o.reason) for o in one.outcomes}
    assert {o.source: (o.status, o.chunks, o.reason) for o in two.outcomes} == by_source
    assert by_source["docs/broken.docx"][0] == "failed"
    texts_one = sorted(c.text for c in kb_one.store.chunks(kb_one.store.chunk_ids().tolist()).values())
    texts_two = sorted(c.text for c in kb_two.store.chunks(kb_two.store.chunk_ids().tolist()).values())
    assert texts_one == texts_two


def test_a_stop_while_embedding_ends_the_reading_stage_and_writes_nothing(
    tmp_path: Path, tiny_embedder
) -> None:
    folder = write_files(tmp_path / "docs", 40)

    class Stop(Exception):
        pass

    class StopAfterFirstPiece:
        def start(self, total_files: int) -> None: ...
        def file_done(self, outcome) -> None: ...
        def chunks_written(self, count: int) -> None: ...

        def chunks_embedded(self, count: int) -> None:
            raise Stop

    service = KnowledgeService(load_settings(data_dir=tmp_path / "data"))
    service.embedder = tiny_embedder
    service.create("notes").close()
    files, _ = collect_files([folder])
    kb = service.open("notes")
    with kb.writing():
        pipeline = IngestionPipeline(kb, tiny_embedder, IngestionConfig(batch_chunks=BATCH))
        with pytest.raises(Stop):
            pipeline.run(files, StopAfterFirstPiece())
    assert kb.counts() == (0, 0)
    assert not [t for t in threading.enumerate() if t.name == "kbqa-ingest-prepare"]
