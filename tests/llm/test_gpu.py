"""GPU paths, run only where CUDA is present (`pytest -m gpu` on a GPU box)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llm import GenerationParams, LLMConfig, Message
from llm.transformers_backend import TransformersChatModel
from retrieval.embedders import EmbeddingConfig, load_embedder

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


QUESTION = [Message("user", "报销需要多久到账？")]


def test_bf16_generation_on_cuda(tiny_lm_dir: Path) -> None:
    chat = TransformersChatModel(LLMConfig(backend="transformers", model=str(tiny_lm_dir)))
    parameter = next(chat.model.parameters())
    assert parameter.device.type == "cuda" and str(parameter.dtype) == "torch.bfloat16"
    params = GenerationParams(max_new_tokens=16)
    whole = chat.generate(QUESTION, params)
    assert whole.usage.completion_tokens > 0
    assert "".join(chat.stream(QUESTION, params)) == whole.text


def test_4bit_loading_on_cuda(tiny_lm_dir: Path) -> None:
    pytest.importorskip("bitsandbytes")
    chat = TransformersChatModel(
        LLMConfig(backend="transformers", model=str(tiny_lm_dir), quantization="4bit")
    )
    assert getattr(chat.model, "is_loaded_in_4bit", False)
    assert chat.generate(QUESTION, GenerationParams(max_new_tokens=8)).usage.completion_tokens > 0


def test_qlora_4bit_training_steps_on_cuda(tiny_lm_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    import math

    import torch

    from finetune.arguments import TrainArguments
    from finetune.conversation import Conversation
    from finetune.loading import load_model
    from finetune.train import train

    quantized, _ = load_model(str(tiny_lm_dir), torch.bfloat16, quantization_bit=4)
    assert getattr(quantized, "is_loaded_in_4bit", False)
    assert quantized.model.layers[0].self_attn.q_proj.weight.quant_type == "nf4"
    del quantized
    faq = [("年假有几天？", "五天。"), ("报销多久提交？", "三十天内提交。")]
    conversations = [Conversation((Message("user", q), Message("assistant", a))) for q, a in faq]
    args = TrainArguments(
        model_name_or_path=str(tiny_lm_dir),
        output_dir=str(tmp_path / "qlora"),
        quantization_bit=4,
        bf16=True,
        gradient_checkpointing=True,
        max_steps=6,
        logging_steps=1,
        learning_rate=1e-2,
        per_device_train_batch_size=2,
    )
    result = train(args, conversations)
    assert result.global_step == 6 and all(math.isfinite(loss) for _, loss in result.losses)
    assert result.losses[-1][1] < result.losses[0][1]
    # An adapter trained on 4-bit weights serves on the 16-bit base.
    chat = TransformersChatModel(
        LLMConfig(backend="transformers", model=str(tiny_lm_dir), adapters={"qlora": str(tmp_path / "qlora")})
    )
    reply = chat.generate(QUESTION, GenerationParams(max_new_tokens=8, adapter="qlora"))
    assert reply.usage.completion_tokens > 0
