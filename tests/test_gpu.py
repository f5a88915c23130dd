"""GPU paths, run only where CUDA is present (`pytest -m gpu` on a GPU box)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.embedder import EmbeddingConfig, load_embedder

pytestmark = pytest.mark.gpu

TEXTS = ["年假有几天？", "报销需要多久到账", "The quick brown fox jumps over the lazy dog."]


def test_fp16_embedding_on_cuda_matches_cpu(tiny_model_dir: Path) -> None:
    config = EmbeddingConfig(backend="sentence-transformers", model=str(tiny_model_dir))
    gpu = load_embedder(config.model_copy(update={"device": "auto", "fp16": True}))
    cpu = load_embedder(config.model_copy(update={"device": "cpu"}))
    parameter = next(gpu._model.parameters())
    assert parameter.device.type == "cuda" and str(parameter.dtype) == "torch.float16"
    on_gpu, on_cpu = gpu.embed_documents(TEXTS), cpu.embed_documents(TEXTS)
    assert on_gpu.dtype == np.float32
    cosines = (on_gpu * on_cpu).sum(axis=1)
    assert np.all(cosines > 0.99)
