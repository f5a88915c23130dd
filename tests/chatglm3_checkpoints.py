"""Tiny random ChatGLM3 checkpoints in ChatGLM3's own layout, and the sentencepiece tokenizers they carry
(for the converter's tests and the fine-tuning tests of ChatGLM3 checkpoints)."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import sentencepiece
import torch

from llm.chatglm3 import SPECIAL_TOKENS

__all__ = [
    "SPECIAL_TOKENS",
    "TINY_CONFIG",
    "random_chatglm_weights",
    "train_sentencepiece",
    "write_checkpoint",
]

# ChatGLM3-6B's config.json, shrunk: two groups of key-value heads shared by four query heads, head size 16
# with the query_key_value width (64) unlike the hidden size (32), and rope_ratio 3 (the -32k release sets one).
TINY_CONFIG = {
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "ffn_hidden_size": 48,
    "fp32_residual_connection": False,
    "hidden_dropout": 0.0,
    "hidden_size": 32,
    "kv_channels": 16,
    "layernorm_epsilon": 1e-05,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 4,
    "num_layers": 2,
    "original_rope": True,
    "post_layer_norm": True,
    "rmsnorm": True,
    "rope_ratio": 3,
    "seq_length": 128,
    "torch_dtype": "float32",
    "tie_word_embeddings": False,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def train_sentencepiece(path: Path, lines: list[str], **options) -> Path:
    """Train a small BPE sentencepiece model with byte fallback (as ChatGLM3's) and write it to `path`."""
    model = io.BytesIO()
    settings = {"normalization_rule_name": "identity", "remove_extra_whitespaces": False} | options
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 5),
        model_writer=model,
        model_type="bpe",
        vocab_size=400,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        minloglevel=2,
        **settings,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


def random_chatglm_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Return random weights with ChatGLM3's tensor names and shapes (modeling_chatglm.py's modules)."""
    generator = torch.Generator().manual_seed(seed)
    hidden, ffn, hd = config["hidden_size"], config["ffn_hidden_size"], config["kv_channels"]
    qkv = (config["num_attention_heads"] + 2 * config["multi_query_group_num"]) * hd

    def linear(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=generator) / math.sqrt(cols)

    def norm() -> torch.Tensor:
        return 1 + 0.2 * torch.randn(hidden, generator=generator)

    weights = {
        "transformer.embedding.word_embeddings.weight": torch.randn(
            config["padded_vocab_size"], hidden, generator=generator
        ),
        "transformer.rotary_pos_emb.inv_freq": 1 / 10000 ** (torch.arange(0, hd // 2, 2).float() / (hd // 2)),
        "transformer.encoder.final_layernorm.weight": norm(),
        "transformer.output_layer.weight": linear(config["padded_vocab_size"], hidden),
    }
    for layer in range(config["num_layers"]):
        prefix = f"transformer.encoder.layers.{layer}."
        weights |= {
            prefix + "input_layernorm.weight": norm(),
            prefix + "self_attention.query_key_value.weight": linear(qkv, hidden),
            prefix + "self_attention.query_key_value.bias": 0.3 * torch.randn(qkv, generator=generator),
            prefix + "self_attention.dense.weight": linear(hidden, config["num_attention_heads"] * hd),
            prefix + "post_attention_layernorm.weight": norm(),
            prefix + "mlp.dense_h_to_4h.weight": linear(2 * ffn, hidden),
            prefix + "mlp.dense_4h_to_h.weight": linear(hidden, ffn),
        }
    return weights


def write_checkpoint(directory: Path, sp_model: Path, weights: dict[str, torch.Tensor], config: dict) -> Path:
    """Write a ChatGLM3-style checkpoint: config.json, two safetensors shards with an index, tokenizer.model."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    shutil.copy(sp_model, directory / "tokenizer.model")
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        save_file({name: weights[name].contiguous() for name in shard_names}, str(directory / shard))
    weight_map = {name: shard for shard, shard_names in shards.items() for name in shard_names}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return directory
