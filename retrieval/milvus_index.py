"""The Milvus backend of a knowledge base's vectors: a Milvus server by URI, or Milvus Lite (a local file).

One collection per knowledge base, COSINE metric, so scores mean what FAISS's inner product over
normalised vectors means. The generation lives in a sidecar file in the knowledge base's directory,
written after the vectors, so a copy that missed a write is found stale and rebuilt from SQLite.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.atomic import atomic_write_text
from retrieval.errors import KnowledgeBaseBusy

if TYPE_CHECKING:
    from pymilvus import MilvusClient

STATE_FILE = "milvus.json"
DEFAULT_URI = "milvus.db"
# Milvus caps a search's limit (topk) and a query's page at 16384.
MAX_LIMIT = 16_384
INSERT_BATCH = 2_000
CONNECT_TIMEOUT_S = 10
SERVER_SCHEMES = ("http://", "https://", "tcp://")
LITE_FILE = re.compile(r"^[A-Za-z0-9_.-]+\.db$")


def collection_name(kb_name: str) -> str:
    """Return a fresh Milvus collection name for a knowledge base (Milvus names are ASCII only)."""
    # The random part keeps two data directories on one Milvus server from sharing a collection.
    digest = hashlib.sha256(kb_name.encode("utf-8")).hexdigest()[:16]
    return f"kbqa_{digest}_{uuid.uuid4().hex[:8]}"


def resolve_uri(uri: str | None, directory: Path) -> str:
    """Return the URI to connect to: a server URI as given, a relative Lite file inside `directory`."""
    uri = uri or DEFAULT_URI
    return uri if is_server(uri) else str(directory / uri)


def check_uri(uri: str) -> str:
    """Return the URI if it names a Milvus server or a Milvus Lite file in the knowledge base's folder."""
    if is_server(uri) or LITE_FILE.fullmatch(uri):
        return uri
    # A Lite file stays inside the knowledge base's folder, so a URI from a request never names a path.
    raise ValueError(
        f"invalid Milvus URI {uri!r}: use a server (http://host:19530) or a Milvus Lite file name ending in .db"
    )


def is_server(uri: str) -> bool:
    """Return whether `uri` names a Milvus server rather than a Milvus Lite file."""
    return uri.startswith(SERVER_SCHEMES)


def connect(uri: str, token: str | None = None) -> MilvusClient:
    """Return a client of the Milvus server (with `token`, if given) or Milvus Lite file at `uri`.

    Raises ValueError if it cannot be reached or refuses the credentials.
    """
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    credentials = {"token": token} if token and is_server(uri) else {}
    try:
        return MilvusClient(uri=uri, timeout=CONNECT_TIMEOUT_S, **credentials)
    except MilvusException as error:
        if not is_server(uri) and lite_locked(uri):
            raise KnowledgeBaseBusy(
                f"the Milvus Lite file {uri} is open in another process, and Milvus Lite serves one process "
                "at a time: a running `kbqa serve` holds its knowledge bases open, so upload through its "
                "API, or stop it; for several processes keep the knowledge base on a Milvus server"
            ) from error
        raise ValueError(f"cannot reach Milvus at {uri}: {error.message}") from error


def lite_locked(uri: str) -> bool:
    """Return whether another process holds the Milvus Lite file at `uri` (its folder's LOCK file)."""
    try:
        with open(Path(uri) / "LOCK", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(lock, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


class MilvusIndex:
    """A Milvus collection holding one knowledge base's vectors, with its generation in a sidecar."""

    def __init__(
        self,
        client: MilvusClient,
        uri: str,
        collection: str,
        dimension: int,
        directory: Path,
        generation: int,
    ) -> None:
        self.client = client
        self.uri = uri
        self.collection = collection
        self.dimension = dimension
        self.directory = directory
        self.generation = generation

    @classmethod
    def load(
        cls, uri: str, collection: str, dimension: int, directory: Path, token: str | None = None
    ) -> MilvusIndex | None:
        """Return the collection with its saved generation, or None when either is missing."""
        try:
            state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        client = connect(uri, token)
        if state.get("collection") != collection or not client.has_collection(collection):
            client.close()
            return None
        # A collection starts each server (or Lite) process released: searchable only once loaded.
        client.load_collection(collection)
        return cls(client, uri, collection, dimension, directory, int(state["generation"]))

    @classmethod
    def create(
        cls, uri: str, collection: str, dimension: int, directory: Path, token: str | None = None
    ) -> MilvusIndex:
        """Return an empty collection, replacing any of that name, at generation 0."""
        client = connect(uri, token)
        if client.has_collection(collection):
            client.drop_collection(collection)
        client.create_collection(
            collection,
            dimension=dimension,
            primary_field_name="id",
            id_type="int",
            vector_field_name="vector",
            metric_type="COSINE",
            auto_id=False,
            # Strong: a search right after a write sees it, as with FAISS.
            consistency_level="Strong",
        )
        return cls(client, uri, collection, dimension, directory, generation=0)

    @property
    def count(self) -> int:
        """Return the number of vectors held."""
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (or replace) vectors under their ids; return nothing."""
        vectors = np.asarray(vectors, dtype=np.float32)
        for start in range(0, len(ids), INSERT_BATCH):
            rows = [
                {"id": int(i), "vector": v.tolist()}
                for i, v in zip(
                    ids[start : start + INSERT_BATCH], vectors[start : start + INSERT_BATCH], strict=True
                )
            ]
            self.client.upsert(self.collection, rows)

    def remove(self, ids: np.ndarray) -> None:
        """Remove the vectors with these ids; return nothing."""
        if len(ids):
            self.client.delete(self.collection, ids=[int(i) for i in ids])

    def ids(self) -> np.ndarray:
        """Return every id held, ascending."""
        # Windows of MAX_LIMIT consecutive ids hold at most MAX_LIMIT rows, so each fits one query
        # (Milvus Lite has no query iterator); chunk ids are positive and dense, so few windows are empty.
        total, found, start = self.count, [], 0
        while len(found) < total:
            window = f"id >= {start} and id < {start + MAX_LIMIT}"
            rows = self.client.query(self.collection, filter=window, output_fields=["id"], limit=MAX_LIMIT)
            found.extend(row["id"] for row in rows)
            start += MAX_LIMIT
        return np.sort(np.asarray(found, dtype=np.int64))

    def search(
        self, query: np.ndarray, k: int, allowed: set[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (cosine scores, ids) of the `k` nearest vectors, best first, among `allowed` ids if given."""
        # No count query first: Milvus returns fewer hits when the collection holds fewer than k.
        k = min(k, MAX_LIMIT) if allowed is None else min(k, MAX_LIMIT, len(allowed))
        if k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        id_filter = "" if allowed is None else f"id in [{','.join(str(int(i)) for i in allowed)}]"
        hits = self.client.search(
            self.collection,
            data=[np.asarray(query, dtype=np.float32).reshape(-1).tolist()],
            limit=k,
            filter=id_filter,
            output_fields=["id"],
        )[0]
        scores = np.asarray([hit["distance"] for hit in hits], dtype=np.float32)
        return scores, np.asarray([hit["id"] for hit in hits], dtype=np.int64)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Return the stored vectors of these ids, in the same order."""
        if not len(ids):
            return np.zeros((0, self.dimension), np.float32)
        rows = self.client.query(self.collection, ids=[int(i) for i in ids], output_fields=["vector"])
        by_id = {row["id"]: row["vector"] for row in rows}
        return np.asarray([by_id[int(i)] for i in ids], dtype=np.float32)

    def save(self) -> None:
        """Flush the collection, then write its generation; return nothing."""
        self.client.flush(self.collection)
        state = {"generation": self.generation, "collection": self.collection}
        atomic_write_text(self.directory / STATE_FILE, json.dumps(state) + "\n")

    def close(self) -> None:
        """Close the client; return nothing."""
        self.client.close()

    def destroy(self) -> None:
        """Drop the collection and forget its generation; a Milvus Lite file left empty goes too; return nothing."""
        (self.directory / STATE_FILE).unlink(missing_ok=True)
        if self.client.has_collection(self.collection):
            self.client.drop_collection(self.collection)
        if not is_server(self.uri) and not self.client.list_collections():
            self.client.close()
            lite = Path(self.uri)
            shutil.rmtree(lite) if lite.is_dir() else lite.unlink(missing_ok=True)
