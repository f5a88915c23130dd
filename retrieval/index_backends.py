"""Opens the vector backend a knowledge base's manifest names: FAISS files, or a Milvus collection."""

from __future__ import annotations

from pathlib import Path

from retrieval.manifest import Manifest, VectorStore
from retrieval.milvus_index import DEFAULT_URI, MilvusIndex, check_uri, collection_name, resolve_uri
from retrieval.vector_index import FaissIndex, VectorIndex


def new_store(name: str, backend: str, uri: str | None = None) -> VectorStore:
    """Return the store settings of a new knowledge base (a fresh collection name for Milvus)."""
    if backend == "faiss":
        if uri is not None:
            raise ValueError("a URI is only for the milvus store")
        return VectorStore()
    if backend == "milvus":
        return VectorStore(
            backend="milvus", uri=check_uri(uri or DEFAULT_URI), collection=collection_name(name)
        )
    raise ValueError(f"unknown vector store {backend!r}: use faiss or milvus")


def load_index(directory: Path, manifest: Manifest) -> VectorIndex | None:
    """Return the saved vector index of a knowledge base, or None when there is none to load."""
    store = manifest.store
    if store.backend == "milvus":
        uri = resolve_uri(store.uri, directory)
        return MilvusIndex.load(uri, _collection(manifest), manifest.embedding.dimension, directory)
    return FaissIndex.load(directory)


def empty_index(directory: Path, manifest: Manifest) -> VectorIndex:
    """Return an empty vector index for a knowledge base; for Milvus, its collection is made afresh."""
    store = manifest.store
    if store.backend == "milvus":
        uri = resolve_uri(store.uri, directory)
        return MilvusIndex.create(uri, _collection(manifest), manifest.embedding.dimension, directory)
    return FaissIndex.empty(manifest.embedding.dimension, directory)


def _collection(manifest: Manifest) -> str:
    if manifest.store.collection is None:
        raise ValueError(f"knowledge base '{manifest.name}': its manifest names no Milvus collection")
    return manifest.store.collection
