"""ChatGLM3-6B on plain transformers: its checkpoint converted to `GlmForCausalLM` and a fast tokenizer.

THUDM's remote code (modeling_chatglm.py, tokenization_chatglm.py) breaks on current transformers, but the
network is the one transformers ships as GLM (the class of glm-4-9b-chat-hf): pre-norm RMSNorm blocks,
grouped-query attention with q/k/v biases, rotary embeddings on the first half of each head with
interleaved pairs, a SwiGLU MLP whose up-projection holds [gate | up], and an untied output layer. So the
checkpoint is renamed and its packed query_key_value split, nothing recomputed, and the sentencepiece
tokenizer becomes a `tokenizers` BPE with ChatGLM3's nine special tokens appended after the sentencepiece
vocabulary, at the ids the model was trained with (64789.. in the release).

Special tokens are never matched in text (as in ChatGLM3's own tokenizer, whose `encode` runs sentencepiece
only), so a user who types "<|user|>" or "sop" gets text ids; the chat template writes them by name.

One job, hence one module past ~400 lines: converting a ChatGLM3 release for transformers. The weights
and the tokenizer are converted together, since the special tokens' ids are the ones the weights were
trained with, and nothing else in kbqa uses either half.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# ChatGLM3's SPTokenizer appends these after the sentencepiece pieces, in this order.
SPECIAL_TOKENS = (
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
)

# sentencepiece piece types (sentencepiece_model.proto)
_NORMAL, _USER_DEFINED = 1, 4
_BPE = 2
# Marks a sentencepiece piece spelled like a special token, so both keep their ids; the decoder drops it.
_ALIAS = "\ue000"

_LAYER_KEY = re.compile(r"transformer\.encoder\.layers\.(\d+)\.(.+)")
_GLOBAL_KEYS = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
_LAYER_KEYS = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    # MLP.swiglu takes silu(first half) * second half, as GlmMLP does with gate_up_proj.chunk(2).
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
# Recomputed by GlmRotaryEmbedding from the config.
_DROPPED_KEYS = {"transformer.rotary_pos_emb.inv_freq"}
# Settings under which ChatGLM's network is not GLM's; a checkpoint with another value is refused.
_REQUIRED = {
    "rmsnorm": True,
    "post_layer_norm": True,
    "apply_residual_connection_post_layernorm": False,
    "add_bias_linear": False,
}


def is_chatglm3_checkpoint(path: str) -> bool:
    """Return whether `path` is a local directory whose config.json says model_type "chatglm"."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "chatglm"


def load_chatglm3(path: str, dtype: torch.dtype, device: str) -> tuple[Any, Any]:
    """Return (GlmForCausalLM in eval mode on `device`, fast tokenizer) converted from a ChatGLM3 checkpoint."""
    source = Path(path)
    return _convert(source, _read_config(source), dtype, device)


def convert_chatglm3(src: Path, dst: Path) -> None:
    """Save the converted model and tokenizer of the ChatGLM3 checkpoint `src` into the new directory `dst`."""
    import torch

    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} exists and is not empty; choose a new directory")
    config = _read_config(src)
    dtype = getattr(torch, str(config.get("torch_dtype") or "float32"), None)
    if not isinstance(dtype, torch.dtype):
        raise ModelLoadError(f"{src / 'config.json'}: unknown torch_dtype {config.get('torch_dtype')!r}")
    model, tokenizer = _convert(src, config, dtype, "cpu")
    dst.parent.mkdir(parents=True, exist_ok=True)
    # Written beside dst and renamed, so an interrupted conversion never leaves a half-written model there.
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if dst.exists():
            dst.rmdir()
        staging.rename(dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_tokenizer(sp_model: Path, model_max_length: int = 8192) -> Any:
    """Return a fast tokenizer that encodes text as ChatGLM3's SPTokenizer does, specials after its vocab."""
    from tokenizers import AddedToken, Tokenizer, decoders, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    proto = _read_sentencepiece(sp_model)
    trainer = proto.trainer_spec
    if trainer.model_type != _BPE:
        raise ModelLoadError(f"{sp_model} is not a sentencepiece BPE model, as ChatGLM3's tokenizer.model is")
    if trainer.treat_whitespace_as_suffix:
        raise ModelLoadError(f"{sp_model} treats whitespace as a suffix, which ChatGLM3's tokenizer does not")
    if min(trainer.unk_id, trainer.eos_id) < 0:
        raise ModelLoadError(f"{sp_model} lacks <unk> or </s>, which ChatGLM3's tokenizer has (ids 0 and 2)")
    pieces = list(proto.pieces)
    size = len(pieces)
    clashes = [p.piece for p in pieces if p.piece in SPECIAL_TOKENS]
    if clashes:
        # The special keeps the name (the chat template asks for it); text that sentencepiece would cut
        # with this piece is cut into smaller pieces, and the piece's id still decodes to its text.
        logger.warning("tokenizer.model has pieces spelled like special tokens: %s", ", ".join(clashes))
    vocab = {p.piece + _ALIAS if p.piece in SPECIAL_TOKENS else p.piece: i for i, p in enumerate(pieces)}
    mergeable = {
        p.piece: (i, p.score)
        for i, p in enumerate(pieces)
        if p.type == _NORMAL and p.piece not in SPECIAL_TOKENS
    }
    backend = Tokenizer(
        BPE(
            vocab,
            _merges(mergeable),
            unk_token=pieces[trainer.unk_id].piece,
            fuse_unk=True,
            byte_fallback=trainer.byte_fallback,
        )
    )
    backend.normalizer = _normalizer(proto.normalizer_spec)
    steps = [
        decoders.Replace(_ALIAS, ""),
        decoders.Replace("▁", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
    ]
    if proto.normalizer_spec.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(steps)
    # sentencepiece cuts user-defined pieces out of the text before merging; these are matched likewise.
    backend.add_tokens([AddedToken(p.piece, normalized=True) for p in pieces if p.type == _USER_DEFINED])
    backend.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in SPECIAL_TOKENS])
    ids = {name: backend.token_to_id(name) for name in SPECIAL_TOKENS}
    if list(ids.values()) != list(range(size, size + len(SPECIAL_TOKENS))):
        raise ModelLoadError(f"{sp_model}: the special tokens did not land after the vocabulary: {ids}")
    eos = pieces[trainer.eos_id].piece
    # What ChatGLMTokenizer.build_inputs_with_special_tokens adds; the chat templates pass add_special_tokens=False.
    backend.post_processor = processors.TemplateProcessing(
        single="[gMASK] sop $A",
        pair=f"[gMASK] sop $A $B {eos}",
        special_tokens=[("[gMASK]", ids["[gMASK]"]), ("sop", ids["sop"]), (eos, trainer.eos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=pieces[trainer.bos_id].piece if trainer.bos_id >= 0 else None,
        eos_token=eos,
        unk_token=pieces[trainer.unk_id].piece,
        pad_token=pieces[trainer.unk_id].piece,  # ChatGLM3 pads with <unk>, id 0
        extra_special_tokens=list(SPECIAL_TOKENS),
        split_special_tokens=True,
        padding_side="left",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def _glm_kwargs(chatglm: dict[str, Any]) -> dict[str, Any]:
    """Return GlmConfig's arguments for a ChatGLM config, or raise ModelLoadError naming what is unsupported."""
    for key, value in _REQUIRED.items():
        if chatglm.get(key, value) != value:
            raise ModelLoadError(
                f"unsupported ChatGLM checkpoint: {key}={chatglm[key]!r} (ChatGLM3 has {value!r})"
            )
    if chatglm.get("quantization_bit"):
        raise ModelLoadError(
            f"quantized ChatGLM checkpoints (quantization_bit={chatglm['quantization_bit']}) are not supported; "
            "use the float16 release"
        )
    if chatglm.get("pre_seq_len"):
        raise ModelLoadError(
            "P-tuning ChatGLM checkpoints (pre_seq_len) are not supported; use a LoRA adapter"
        )
    try:
        heads = int(chatglm["num_attention_heads"])
        hidden = int(chatglm["hidden_size"])
        kwargs = {
            "vocab_size": int(chatglm["padded_vocab_size"]),
            "hidden_size": hidden,
            "intermediate_size": int(chatglm["ffn_hidden_size"]),
            "num_hidden_layers": int(chatglm["num_layers"]),
            "num_attention_heads": heads,
            "num_key_value_heads": (
                int(chatglm["multi_query_group_num"]) if chatglm.get("multi_query_attention") else heads
            ),
            "head_dim": int(chatglm.get("kv_channels") or hidden // heads),
            "hidden_act": "silu",
            "max_position_embeddings": int(chatglm.get("seq_length", 8192)),
            "rms_norm_eps": float(chatglm.get("layernorm_epsilon", 1e-5)),
            # RotaryEmbedding(rotary_dim // 2) with base 10000 * rope_ratio: half of each head rotates.
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0 * float(chatglm.get("rope_ratio") or 1),
                "partial_rotary_factor": 0.5,
            },
            "attention_bias": bool(chatglm.get("add_qkv_bias", True)),
            "tie_word_embeddings": False,
            "pad_token_id": chatglm.get("pad_token_id", 0),
            "eos_token_id": chatglm.get("eos_token_id", 2),
            "bos_token_id": None,
        }
    except (KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(f"ChatGLM config.json lacks or mangles {error}") from error
    if heads % kwargs["num_key_value_heads"]:
        raise ModelLoadError(
            f"{heads} attention heads cannot share {kwargs['num_key_value_heads']} key-value groups"
        )
    return kwargs


def _read_config(source: Path) -> dict[str, Any]:
    if not source.is_dir():
        raise ModelLoadError(f"{source} is not a directory holding a ChatGLM3 checkpoint")
    try:
        config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read {source / 'config.json'}: {error}") from error
    if not isinstance(config, dict) or config.get("model_type") != "chatglm":
        raise ModelLoadError(
            f"{source / 'config.json'} does not describe a ChatGLM checkpoint (model_type chatglm)"
        )
    return config


def _read_sentencepiece(path: Path) -> Any:
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as error:
        raise ModelLoadError(
            "reading ChatGLM3's tokenizer.model needs `pip install sentencepiece protobuf`"
        ) from error
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except OSError as error:
        raise ModelLoadError(f"cannot read the tokenizer {path}: {error}") from error
    except Exception as error:  # protobuf raises its own DecodeError
        raise ModelLoadError(f"{path} is not a sentencepiece model: {error}") from error
    if not proto.pieces:
        raise ModelLoadError(f"{path} is not a sentencepiece model: it has no pieces")
    return proto


def _merges(pieces: dict[str, tuple[int, float]]) -> list[tuple[str, str]]:
    """Return BPE merges ranked as sentencepiece merges: the pair whose joined piece scores highest first."""
    ranked = []
    for piece, (piece_id, score) in pieces.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in pieces and right in pieces:
                ranked.append((-score, piece_id, pieces[left][0], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _normalizer(spec: Any) -> Any:
    """Return the `tokenizers` normalizer doing what sentencepiece's Normalizer does under `spec`."""
    from tokenizers import Regex, normalizers

    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        # sentencepiece trims and collapses spaces only, not newlines or tabs.
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    return normalizers.Sequence(steps)


def _weight_files(source: Path) -> list[Path]:
    """Return the checkpoint's weight files, checking that every shard its index names is there."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = source / index_name
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as error:
                raise ModelLoadError(f"cannot read {index}: {error!r}") from error
            missing = [name for name in names if not (source / name).is_file()]
            if missing:
                raise ModelLoadError(
                    f"incomplete checkpoint {source}: missing {', '.join(missing)} (named in {index_name})"
                )
            return [source / name for name in names]
    files = sorted(source.glob("*.safetensors")) or sorted(source.glob("pytorch_model*.bin"))
    if not files:
        raise ModelLoadError(f"no weights in {source}: expected *.safetensors or pytorch_model*.bin files")
    return files


def _tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the (name, tensor) pairs of one weight file, read on the CPU."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    yield name, handle.get_tensor(name)
        else:
            yield from torch.load(path, map_location="cpu", weights_only=True, mmap=True).items()
    except (OSError, RuntimeError, ValueError) as error:
        raise ModelLoadError(f"cannot read the weights {path}: {error}") from error


def _converted(
    name: str, tensor: torch.Tensor, kwargs: dict[str, Any]
) -> list[tuple[str, torch.Tensor]] | None:
    """Return GLM's (name, tensor) pairs for one ChatGLM tensor; None for a name ChatGLM3 does not have."""
    if name in _GLOBAL_KEYS:
        return [(_GLOBAL_KEYS[name], tensor)]
    if name in _DROPPED_KEYS:
        return []
    match = _LAYER_KEY.fullmatch(name)
    if not match:
        return None
    layer, rest = f"model.layers.{match[1]}.", match[2]
    if rest in _LAYER_KEYS:
        return [(layer + _LAYER_KEYS[rest], tensor)]
    if rest in ("self_attention.query_key_value.weight", "self_attention.query_key_value.bias"):
        # SelfAttention.forward splits the packed rows as [q (heads*hd) | k (groups*hd) | v (groups*hd)].
        head_dim, kind = kwargs["head_dim"], rest.rsplit(".", 1)[1]
        sizes = [kwargs["num_attention_heads"] * head_dim] + [kwargs["num_key_value_heads"] * head_dim] * 2
        if tensor.shape[0] != sum(sizes):
            raise ModelLoadError(f"{name} has {tensor.shape[0]} rows, the config implies {sum(sizes)}")
        parts = tensor.split(sizes, dim=0)
        return [(f"{layer}self_attn.{p}_proj.{kind}", part) for p, part in zip("qkv", parts, strict=True)]
    return None


def _expected_names(kwargs: dict[str, Any]) -> set[str]:
    """Return the tensor names a ChatGLM3 checkpoint with this config holds (inv_freq is optional)."""
    names = set(_GLOBAL_KEYS)
    per_layer = [*_LAYER_KEYS, "self_attention.query_key_value.weight"]
    if kwargs["attention_bias"]:
        per_layer.append("self_attention.query_key_value.bias")
    for layer in range(kwargs["num_hidden_layers"]):
        names.update(f"transformer.encoder.layers.{layer}.{rest}" for rest in per_layer)
    return names


def _load_model(source: Path, chatglm: dict[str, Any], dtype: torch.dtype, device: str) -> Any:
    """Return GlmForCausalLM holding the checkpoint's weights, built on the meta device so nothing is doubled."""
    import torch
    from transformers import GlmConfig, GlmForCausalLM
    from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

    kwargs = _glm_kwargs(chatglm)
    files = _weight_files(source)
    state: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    for path in files:
        for name, tensor in _tensors(path):
            converted = _converted(name, tensor, kwargs)
            if converted is None:
                raise ModelLoadError(
                    f"{path.name} holds {name}, which a plain ChatGLM3 checkpoint does not "
                    "(quantized or P-tuning weights are not supported)"
                )
            seen.add(name)
            for new_name, part in converted:
                state[new_name] = part.to(device=device, dtype=dtype, copy=True)
    missing = sorted(_expected_names(kwargs) - seen)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelLoadError(f"incomplete checkpoint {source}: missing {shown}")
    config = GlmConfig(**kwargs, dtype=dtype)
    with torch.device("meta"):
        model = GlmForCausalLM(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise ModelLoadError(f"the weights in {source} do not fit its config.json: {error}") from error
    # Buffers are not in the checkpoint; rebuild them off the meta device.
    model.model.rotary_emb = GlmRotaryEmbedding(config).to(device)
    return model.eval()


def _convert(source: Path, chatglm: dict[str, Any], dtype: torch.dtype, device: str) -> tuple[Any, Any]:
    """Return (model, tokenizer) converted from the checkpoint in `source` whose config.json is `chatglm`."""
    from transformers import GenerationConfig

    from llm.templates import TEMPLATES

    max_length = _glm_kwargs(chatglm)["max_position_embeddings"]
    tokenizer = build_tokenizer(source / "tokenizer.model", model_max_length=max_length)
    model = _load_model(source, chatglm, dtype, device)
    # Plain `generate` (and a saved copy) then stops where ChatGLM3 stops: EOS, <|user|>, <|observation|>.
    model.generation_config = GenerationConfig(
        eos_token_id=TEMPLATES["chatglm3"].stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id
    )
    return model, tokenizer
