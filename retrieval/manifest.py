"""The manifest of a knowledge base: what built it, so it is never read with the wrong model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from retrieval.atomic import atomic_write_text
from retrieval.errors import EmbeddingMismatch
from retrieval.timestamps import utc_now

if TYPE_CHECKING:
    from retrieval.embedders import Embedder

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"


class EmbeddingIdentity(BaseModel):
    """The embedding model a knowledge base was built with."""

    backend: str
    model: str = Field(description="The model as configured: a hub id or a local path.")
    model_name: str = Field(description="The model's name without its hub owner or directory.")
    dimension: int

    @classmethod
    def of(cls, embedder: Embedder) -> EmbeddingIdentity:
        """Return the identity of a loaded embedder."""
        return cls(
            backend=embedder.backend,
            model=embedder.model,
            model_name=embedder.model_name,
            dimension=embedder.dimension,
        )


class VectorStore(BaseModel):
    """Where a knowledge base keeps the searchable copy of its vectors (SQLite keeps the truth)."""

    # pgvector: the knowledge base is on the PostgreSQL store (`store.backend: postgres`), its vectors in its rows.
    backend: Literal["faiss", "milvus", "pgvector"] = "faiss"
    uri: str | None = Field(
        None,
        description="Milvus only: a server URI (http://host:19530), or a Milvus Lite file; a relative "
        "path is inside the knowledge base's directory (default milvus.db).",
    )
    collection: str | None = Field(None, description="Milvus only: the collection holding the vectors.")


class Manifest(BaseModel):
    """Everything needed to read a knowledge base back the way it was written."""

    format_version: int = FORMAT_VERSION
    name: str
    embedding: EmbeddingIdentity
    metric: Literal["cosine"] = "cosine"
    normalized: bool = Field(True, description="Vectors are L2-normalised, so inner product = cosine.")
    splitter: dict[str, Any] = Field(default_factory=dict, description="Splitter settings used at ingestion.")
    created_at: str = Field(default_factory=utc_now)
    # Manifests written before vector backends existed have none: they mean FAISS.
    store: VectorStore = Field(default_factory=VectorStore)

    def check_embedding(self, embedding: EmbeddingIdentity) -> None:
        """Raise EmbeddingMismatch unless `embedding` is the model this knowledge base was built with."""
        built = self.embedding
        if (built.backend, built.model_name, built.dimension) == (
            embedding.backend,
            embedding.model_name,
            embedding.dimension,
        ):
            return
        raise EmbeddingMismatch(
            f"knowledge base '{self.name}' was built with the {built.backend} model "
            f"'{built.model}' ({built.dimension}-d), but the configured embedding model is the "
            f"{embedding.backend} model '{embedding.model}' ({embedding.dimension}-d); configure the "
            "model it was built with, or rebuild it into a new knowledge base"
        )


def read_manifest(directory: Path) -> Manifest:
    """Return the manifest stored in a knowledge-base directory."""
    data = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory} has knowledge-base format {data.get('format_version')}; "
            f"this kbqa reads format {FORMAT_VERSION}"
        )
    return Manifest.model_validate(data)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write the manifest into a knowledge-base directory atomically; return nothing."""
    atomic_write_text(directory / MANIFEST_FILE, manifest.model_dump_json(indent=2) + "\n")
