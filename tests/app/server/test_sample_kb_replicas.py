"""Replicas that start together on one store build the sample knowledge base once: the first builds it, the
others wait for it and then find it there, and none of them fails its loading (a busy writer, or a
knowledge base made by another replica in the meantime); and what fails after the loading is reported."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app.server.loading import ModelLoading
from app.services import KnowledgeService
from app.settings import load_settings

SAMPLE = "demo"


class _Gate:
    """The first replica's progress, held at its start (inside its writer lock) until the test lets it go."""

    def __init__(self, progress, inside: threading.Event, release: threading.Event) -> None:
        self.progress, self.inside, self.release = progress, inside, release

    def start(self, total_files: int) -> None:
        self.progress.start(total_files)
        self.inside.set()
        assert self.release.wait(120), "the test never let the first replica go on"

    def __getattr__(self, name: str):
        return getattr(self.progress, name)


@pytest.fixture(params=["sqlite", "postgres"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> list[KnowledgeService]:
    docs = tmp_path / "sample"
    docs.mkdir()
    for n in range(3):
        (docs / f"note{n}.md").write_text(f"# Note {n}\n\nThe office in city {n} opens at {n + 8} o'clock.\n")
    store = (
        {"backend": "postgres", "dsn": request.getfixturevalue("pg_dsn")}
        if request.param == "postgres"
        else {}
    )
    shared = tmp_path / "data"  # on SQLite the replicas share one data directory; on PostgreSQL, the database
    services = [
        KnowledgeService(
            load_settings(
                data_dir=tmp_path / f"node{i}" if store else shared,
                store=store,
                server={"sample_kb": SAMPLE, "sample_docs": docs},
            )
        )
        for i in (1, 2)
    ]
    yield services
    for service in services:
        service.close()


def test_two_replicas_starting_together_build_the_sample_kb_once(replicas: list[KnowledgeService]) -> None:
    first, second = replicas
    inside, release = threading.Event(), threading.Event()
    ingest = first.ingest
    first.ingest = lambda name, paths, progress=None, **kw: ingest(  # type: ignore[method-assign]
        name, paths, _Gate(progress, inside, release), **kw
    )
    # Both start before either has made it, as replicas started together do.
    loadings = [ModelLoading(service, then=lambda: None) for service in replicas]
    assert [loading.sample_kb for loading in loadings] == [SAMPLE, SAMPLE]
    try:
        loadings[0].start()
        assert inside.wait(120), loadings[0].error
        loadings[1].start()
        # The second waits for the first's build rather than writing it too (or failing on its writer lock).
        assert not loadings[1].finished.wait(3), loadings[1].error
        assert loadings[1].status()["pending"] == [f"sample knowledge base {SAMPLE}"]
    finally:
        release.set()
    for loading in loadings:
        assert loading.finished.wait(120)
        assert loading.error is None
        assert loading.status()["pending"] == []
    for service in replicas:
        documents = service.documents(SAMPLE)
        assert sorted(d.source for d in documents) == [
            "sample/note0.md",
            "sample/note1.md",
            "sample/note2.md",
        ]
    assert loadings[1].files["total"] == 0  # the second built nothing: it found the first's


def test_a_failure_after_the_loading_is_reported_not_left_loading(tmp_path: Path) -> None:
    # Two servers started at once on one data directory: the second's ingestion worker finds the directory
    # held once its models are loaded. /readyz must then say it failed, not "loading" for ever.
    def held() -> None:
        raise RuntimeError("another kbqa server is running on the data directory")

    service = KnowledgeService(load_settings(data_dir=tmp_path / "data"))
    try:
        loading = ModelLoading(service, then=held)
        loading.start()
        assert loading.finished.wait(120)
        assert loading.error == "another kbqa server is running on the data directory"
        assert not loading.loading
    finally:
        service.close()
