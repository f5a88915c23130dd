"""Knowledge bases kept open between requests, so a search does not load a vector index from disk each time.

Opening a knowledge base reads its whole FAISS index (about 150 MB at 100k chunks of 384-d) or connects
to Milvus; a server that did that per request would spend more time opening than searching, and hold
one copy of the index per concurrent request. One shared `KnowledgeBase` per name serves every thread
instead: reads and writes already take its own locks.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

from retrieval.catalog import KnowledgeBaseCatalog
from retrieval.errors import KnowledgeBaseNotFound
from retrieval.knowledge_base import KnowledgeBase

# What tells that a knowledge base is still the one held open (`catalog.identity`): on disk its folder
# and manifest, in PostgreSQL its row id and manifest.
OnDisk = Hashable


class OpenKnowledgeBases:
    """The knowledge bases of a catalog, each opened once and shared by every thread of this process.

    Before handing one out, `get` checks with two `stat` calls and one SQLite query that no other process
    has replaced it (deleted and created again, or migrated: it is opened again) or written to it (its
    vector index catches up, see `KnowledgeBase.refresh`). At most `limit` are held: asking for one more
    lets the least recently used go. A knowledge base that is let go (replaced, deleted, least recently
    used) is not closed here, since a request may still be using it: it closes when the last one drops it. Opening happens outside the lock, so a slow one (a large index, an unreachable Milvus
    server) holds up only the requests for that knowledge base.
    """

    def __init__(self, catalog: KnowledgeBaseCatalog, limit: int = 16) -> None:
        self.catalog = catalog
        self.limit = limit
        self._open: OrderedDict[str, tuple[OnDisk, KnowledgeBase]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> KnowledgeBase:
        """Return the named knowledge base, open and current; KnowledgeBaseNotFound if it does not exist."""
        with self._lock:
            on_disk = self._on_disk(name)
            kb = self._current(name, on_disk)
        if kb is None:
            opened = self.catalog.open(name)
            with self._lock:
                # Another request may have opened it meanwhile: keep one, let the other go.
                kb = self._current(name, on_disk)
                if kb is None:
                    self._open[name] = (on_disk, opened)
                    kb = opened
                    while len(self._open) > self.limit:
                        self._open.popitem(last=False)
        kb.refresh()
        return kb

    @contextmanager
    def removing(self, name: str) -> Iterator[KnowledgeBase]:
        """Hold the named knowledge base as its only writer and let it go when the block ends.

        For deleting it: KnowledgeBaseBusy at once while an upload is being written into it.
        """
        kb = self.get(name)
        with kb.exclusive():
            try:
                yield kb
            finally:
                with self._lock:
                    self._open.pop(name, None)

    def close(self) -> None:
        """Close every knowledge base held open (at shutdown); return nothing."""
        with self._lock:
            held, self._open = list(self._open.values()), OrderedDict()
        for _, kb in held:
            kb.close()

    def _current(self, name: str, on_disk: OnDisk) -> KnowledgeBase | None:
        held = self._open.get(name)
        if held is None or held[0] != on_disk or held[1].closed:
            return None
        self._open.move_to_end(name)
        return held[1]

    def _on_disk(self, name: str) -> OnDisk:
        try:
            return self.catalog.identity(name)
        except KnowledgeBaseNotFound:
            self._open.pop(name, None)
            raise
