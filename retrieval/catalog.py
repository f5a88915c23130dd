"""The named knowledge bases under a data directory: create, list, open, describe, delete."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from retrieval.calibration import find_calibration
from retrieval.errors import InvalidName, KnowledgeBaseExists, KnowledgeBaseNotFound
from retrieval.index_backends import load_index
from retrieval.knowledge_base import STORE_FILE, KnowledgeBase
from retrieval.manifest import (
    MANIFEST_FILE,
    EmbeddingIdentity,
    Manifest,
    VectorStore,
    read_manifest,
    write_manifest,
)
from retrieval.store import ChunkStore
from retrieval.vector_index import FaissGpu, FaissIndex

# Letters (CJK included), digits, '-' and '_'; no dots or slashes, so a name is never a path trick.
NAME_PATTERN = re.compile(r"^[^\W_][\w-]{0,63}$")
# The summary names a few values of each metadata key, enough to know what to filter on.
METADATA_VALUES_SHOWN = 10


@dataclass(frozen=True)
class KnowledgeBaseInfo:
    """A summary of one knowledge base."""

    name: str
    documents: int
    chunks: int
    embedding: EmbeddingIdentity
    splitter: dict[str, Any]
    created_at: str
    size_bytes: int
    store: VectorStore = field(default_factory=VectorStore)
    metadata: dict[str, list[str]] = field(default_factory=dict)  # key → its first values, sorted
    calibrated: bool = False  # its embedding model has an answerability calibration (else no refusal on it)


class _Counts(Protocol):
    """What a summary reads of a chunk store (either store has it)."""

    def count(self) -> tuple[int, int]: ...

    def metadata_values(self, limit: int) -> dict[str, list[str]]: ...


def summary(
    name: str, manifest: Manifest, store: _Counts, size_bytes: int, data_dir: Path
) -> KnowledgeBaseInfo:
    """Return the summary of a knowledge base from its manifest, its open chunk store and its size."""
    documents, chunks = store.count()
    return KnowledgeBaseInfo(
        name=name,
        documents=documents,
        chunks=chunks,
        embedding=manifest.embedding,
        splitter=manifest.splitter,
        created_at=manifest.created_at,
        store=manifest.store,
        size_bytes=size_bytes,
        metadata=store.metadata_values(METADATA_VALUES_SHOWN),
        calibrated=find_calibration(data_dir, manifest.embedding.model_name) is not None,
    )


def validate_name(name: str) -> str:
    """Return the name if it may name a knowledge base, else raise InvalidName saying why."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidName(
            f"invalid knowledge-base name {name!r}: use 1 to 64 letters (Chinese too), digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


class KnowledgeBaseCatalog:
    """Knowledge bases kept in `<data_dir>/kbs/<name>/`; `milvus_token` signs in to Milvus servers they use,
    and `faiss_gpu` says whether FAISS indexes search on the GPU."""

    def __init__(self, data_dir: Path, milvus_token: str | None = None, faiss_gpu: FaissGpu = "off") -> None:
        self.root = Path(data_dir) / "kbs"
        self.milvus_token = milvus_token
        self.faiss_gpu = faiss_gpu

    def path(self, name: str) -> Path:
        """Return the directory of the named knowledge base (which may not exist)."""
        return self.root / validate_name(name)

    def exists(self, name: str) -> bool:
        """Return whether the named knowledge base exists."""
        return (self.path(name) / MANIFEST_FILE).is_file()

    def identity(self, name: str) -> tuple[int, int, int]:
        """Return what tells the named knowledge base on disk apart from one deleted and made again (a new
        folder) or migrated (a manifest rewritten as a new file); KnowledgeBaseNotFound if it does not exist."""
        directory = self.path(name)
        try:
            folder, manifest = directory.stat(), (directory / MANIFEST_FILE).stat()
        except FileNotFoundError:
            raise KnowledgeBaseNotFound(f"knowledge base '{name}' does not exist") from None
        return folder.st_ino, manifest.st_ino, manifest.st_mtime_ns

    def names(self) -> list[str]:
        """Return the names of every knowledge base, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()
        )

    def create(
        self,
        name: str,
        embedding: EmbeddingIdentity,
        splitter: dict[str, Any],
        store: VectorStore | None = None,
    ) -> KnowledgeBase:
        """Create an empty knowledge base (FAISS unless `store` says) and return it open; KnowledgeBaseExists if taken."""
        target = self.path(name)
        if target.exists():
            raise KnowledgeBaseExists(f"knowledge base '{name}' already exists")
        self.root.mkdir(parents=True, exist_ok=True)
        # Built in a hidden directory and renamed into place, so a half-made one is never listed.
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.creating-", dir=self.root))
        try:
            manifest = Manifest(
                name=name, embedding=embedding, splitter=splitter, store=store or VectorStore()
            )
            write_manifest(staging, manifest)
            ChunkStore(staging / STORE_FILE, embedding.dimension).close()
            # A Milvus collection is made when the knowledge base first opens, in its final directory.
            if manifest.store.backend == "faiss":
                FaissIndex.empty(embedding.dimension, staging).save()
            staging.rename(target)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            if target.exists():
                raise KnowledgeBaseExists(f"knowledge base '{name}' already exists") from error
            raise
        try:
            return KnowledgeBase(target, embedding, self.milvus_token, self.faiss_gpu)
        except ValueError:
            # e.g. an unreachable Milvus server: no knowledge base is left that could never open.
            shutil.rmtree(target, ignore_errors=True)
            raise

    def open(self, name: str, embedding: EmbeddingIdentity | None = None) -> KnowledgeBase:
        """Return the named knowledge base open; with `embedding`, refuse one built with another model."""
        if not self.exists(name):
            raise KnowledgeBaseNotFound(f"knowledge base '{name}' does not exist")
        return KnowledgeBase(self.path(name), embedding, self.milvus_token, self.faiss_gpu)

    @contextlib.contextmanager
    def building(self, name: str, wait: Callable[[], None]) -> Iterator[None]:
        """Hold the lock under which one process at a time builds a knowledge base of this data directory;
        return nothing. `wait()` runs between tries (it may raise to give up).

        A lock on the knowledge bases' folder itself (no file is left behind), let go when its holder dies.
        """
        validate_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        folder = os.open(self.root, os.O_RDONLY)
        try:
            while True:
                try:
                    fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    wait()
            yield
        finally:
            os.close(folder)  # lets the lock go

    def info(self, name: str) -> KnowledgeBaseInfo:
        """Return a summary of the named knowledge base, read from its manifest and chunk store alone."""
        if not self.exists(name):
            raise KnowledgeBaseNotFound(f"knowledge base '{name}' does not exist")
        directory = self.path(name)
        manifest = read_manifest(directory)
        store = ChunkStore(directory / STORE_FILE, manifest.embedding.dimension)
        try:
            return summary(name, manifest, store, _size_on_disk(directory), self.root.parent)
        finally:
            store.close()

    def delete(self, name: str) -> None:
        """Delete the named knowledge base and everything in it; return nothing."""
        if not self.exists(name):
            raise KnowledgeBaseNotFound(f"knowledge base '{name}' does not exist")
        manifest = read_manifest(self.path(name))
        if manifest.store.backend == "milvus":
            # A Milvus server outlives the directory, so its collection is dropped explicitly.
            index = load_index(self.path(name), manifest, self.milvus_token)
            if index is not None:
                index.destroy()
                index.close()
        # Renamed away first, so it disappears at once even if removing the files is interrupted.
        trash = self.root / f".deleted-{name}-{uuid.uuid4().hex}"
        self.path(name).rename(trash)
        shutil.rmtree(trash)


def _size_on_disk(directory: Path) -> int:
    """Return the bytes of the files under `directory`.

    A file listed and then removed before it is measured (an original a delete unlinks, an index's
    temporary file renamed by a save, under a request asking for `info` at the same time) counts for
    nothing instead of failing the request.
    """
    total = 0
    for folder, _, names in os.walk(directory):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(folder, name)).st_size
    return total
