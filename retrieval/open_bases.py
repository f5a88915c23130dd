"""Knowledge bases kept open between requests, so a search does not load a vector index from disk each time.

Opening a knowledge base reads its whole FAISS index (about 150 MB at 100k chunks of 384-d) or connects
to Milvus; a server that did that per request would spend more time opening than searching, and hold
one copy of the index per concurrent request. One shared `KnowledgeBase` per name serves every thread
instead: reads and writes already take its own locks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from retrieval.catalog import KnowledgeBaseCatalog
from retrieval.errors import KnowledgeBaseNotFound
from retrieval.knowledge_base import KnowledgeBase
from retrieval.manifest import MANIFEST_FILE

# What tells that a knowledge base on disk is still the one held open: its folder (a deleted and
# re-created one is a new folder) and its manifest (rewritten atomically, as a new file, by a migration).
OnDisk = tuple[int, int, int]


class OpenKnowledgeBases:
    """The knowledge bases of a catalog, each opened once and shared by every thread of this process.

    Before handing one out, `get` checks with two `stat` calls and one SQLite query that no other process
    has replaced it (deleted and created again, or migrated: it is opened again) or written to it (its
    vector index is reloaded, see `KnowledgeBase.refresh`).
    """

    def __init__(self, catalog: KnowledgeBaseCatalog) -> None:
        self.catalog = catalog
        self._open: dict[str, tuple[OnDisk, KnowledgeBase]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> KnowledgeBase:
        """Return the named knowledge base, open and current; KnowledgeBaseNotFound if it does not exist."""
        with self._lock:
            on_disk = self._on_disk(name)
            held = self._open.get(name)
            if held is not None and held[0] == on_disk and not held[1].closed:
                kb = held[1]
            else:
                if held is not None:
                    held[1].close()
                kb = self.catalog.open(name)
                self._open[name] = (on_disk, kb)
        kb.refresh()
        return kb

    @contextmanager
    def removing(self, name: str) -> Iterator[KnowledgeBase]:
        """Hold the named knowledge base as its only writer and close it for good when the block ends.

        For deleting it: KnowledgeBaseBusy at once while an upload is being written into it.
        """
        kb = self.get(name)
        with kb.exclusive():
            try:
                yield kb
            finally:
                with self._lock:
                    self._open.pop(name, None)
                kb.close()

    def close(self) -> None:
        """Close every knowledge base held open; return nothing."""
        with self._lock:
            held, self._open = list(self._open.values()), {}
        for _, kb in held:
            kb.close()

    def _on_disk(self, name: str) -> OnDisk:
        directory = self.catalog.path(name)
        try:
            folder, manifest = directory.stat(), (directory / MANIFEST_FILE).stat()
        except FileNotFoundError:
            if (held := self._open.pop(name, None)) is not None:
                held[1].close()
            raise KnowledgeBaseNotFound(f"knowledge base '{name}' does not exist") from None
        return folder.st_ino, manifest.st_ino, manifest.st_mtime_ns
