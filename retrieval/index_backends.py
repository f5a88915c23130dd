"""Opens the vector backend a knowledge base's manifest names: FAISS files, or a Milvus collection."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from retrieval.manifest import Manifest, VectorStore
from retrieval.milvus_index import DEFAULT_URI, MilvusIndex, check_uri, collection_name, resolve_uri
from retrieval.vector_index import FaissGpu, FaissIndex, VectorIndex, faiss_gpu_problem, use_faiss_gpu


class VectorStoreConfig(BaseModel):
    """Where new knowledge bases keep their searchable vectors, and the credentials of a Milvus server.

    Each knowledge base records its own store in its manifest when it is created (`kbqa kb create
    --store`, or `store` in `POST /v1/kbs`); these are the defaults when the request names none. The
    token is never written to disk: it is read from here each time a knowledge base on a Milvus server opens.
    """

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    backend: Literal["faiss", "milvus"] = Field(
        "faiss", description="Store of a new knowledge base: faiss (files in its folder) or milvus."
    )
    milvus_uri: str = Field(
        DEFAULT_URI,
        description="Milvus URI of a new knowledge base: a server (http://milvus:19530) or a Milvus Lite "
        "file name ending in .db, kept inside the knowledge base's folder.",
    )
    milvus_token: SecretStr | None = Field(
        None,
        description="Credentials for a Milvus server with authentication: 'user:password' or an API key "
        "(Env: KBQA_VECTOR_STORE__MILVUS_TOKEN). Not used for Milvus Lite files.",
    )

    faiss_gpu: FaissGpu = Field(
        "auto",
        description="Exact FAISS search on the GPU: `auto` when faiss has GPU support and sees a CUDA device, "
        "`on` (an error where it cannot), `off`. The index file on disk is the CPU index either way.",
    )

    @field_validator("faiss_gpu")
    @classmethod
    def _check_faiss_gpu(cls, mode: FaissGpu) -> FaissGpu:
        if mode == "on" and (problem := faiss_gpu_problem()) is not None:
            raise ValueError(f"'on', but {problem}; set it to auto or off")
        return mode

    @property
    def token(self) -> str | None:
        """Return the Milvus token in clear, or None."""
        return self.milvus_token.get_secret_value() if self.milvus_token else None


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


def load_index(
    directory: Path, manifest: Manifest, milvus_token: str | None = None, faiss_gpu: FaissGpu = "off"
) -> VectorIndex | None:
    """Return the saved vector index of a knowledge base, or None when there is none to load; a FAISS one
    searches on the GPU as `faiss_gpu` says."""
    store = manifest.store
    if store.backend == "milvus":
        uri = resolve_uri(store.uri, directory)
        dimension = manifest.embedding.dimension
        return MilvusIndex.load(uri, _collection(manifest), dimension, directory, milvus_token)
    return FaissIndex.load(directory, use_faiss_gpu(faiss_gpu))


def empty_index(
    directory: Path, manifest: Manifest, milvus_token: str | None = None, faiss_gpu: FaissGpu = "off"
) -> VectorIndex:
    """Return an empty vector index for a knowledge base; for Milvus, its collection is made afresh."""
    store = manifest.store
    if store.backend == "milvus":
        uri = resolve_uri(store.uri, directory)
        dimension = manifest.embedding.dimension
        return MilvusIndex.create(uri, _collection(manifest), dimension, directory, milvus_token)
    return FaissIndex.empty(manifest.embedding.dimension, directory, use_faiss_gpu(faiss_gpu))


def _collection(manifest: Manifest) -> str:
    if manifest.store.collection is None:
        raise ValueError(f"knowledge base '{manifest.name}': its manifest names no Milvus collection")
    return manifest.store.collection
