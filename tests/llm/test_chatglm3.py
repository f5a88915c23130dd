"""ChatGLM3 checkpoints converted to transformers' GLM: a tiny random checkpoint in ChatGLM3's own layout,
checked against ChatGLM3's math written out here, and a sentencepiece tokenizer checked against sentencepiece.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import sentencepiece
import torch
from chatglm3_checkpoints import TINY_CONFIG, random_chatglm_weights, train_sentencepiece, write_checkpoint
from models import CORPUS
from sentencepiece import sentencepiece_model_pb2

from llm.chatglm3 import (
    SPECIAL_TOKENS,
    build_tokenizer,
    convert_chatglm3,
    is_chatglm3_checkpoint,
    load_chatglm3,
)
from llm.errors import ModelLoadError
from llm.templates import TEMPLATES, template_for
from llm.types import Message

CHATGLM3 = TEMPLATES["chatglm3"]
TEXTS = [
    "你好",
    "\n",
    "员工每年享有带薪年假，工作满一年后年假为五天。",
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces, two  inner and a trailing one ",
    "行一\n行二\t制表\r\n",
    "unseen: ÆØÅ ß 😀 ☃",
    "<|user|> sop [gMASK] </s> <s> <unk>",
    "",
]


def chatglm3_reference_logits(w: dict[str, torch.Tensor], config: dict, ids: list[int]) -> torch.Tensor:
    """Return [len(ids), vocab] logits computed the way THUDM's modeling_chatglm.py computes them."""
    heads, groups, hd = config["num_attention_heads"], config["multi_query_group_num"], config["kv_channels"]
    eps, n = config["layernorm_epsilon"], len(ids)

    def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # RMSNorm.forward
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    # ChatGLMModel.__init__: RotaryEmbedding(rotary_dim // 2, rope_ratio) with rotary_dim = kv_channels, so
    # only the first hd/2 channels of a head rotate; forward_impl: base = 10000 * rope_ratio,
    # theta_i = base^(-2i / n_elem), positions 0..n-1 (get_position_ids), cache = stack([cos, sin], -1).
    rot = hd // 2
    theta = 1.0 / ((10000 * config.get("rope_ratio", 1)) ** (torch.arange(0, rot, 2).float() / rot))
    angles = torch.outer(torch.arange(n).float(), theta)[:, None, :]  # [sq, 1, rot/2]
    cos, sin = angles.cos(), angles.sin()

    def rope(x: torch.Tensor) -> torch.Tensor:  # apply_rotary_pos_emb: x is [sq, np, hn]
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        pairs = x_rot.reshape(n, -1, rot // 2, 2)  # interleaved pairs (x0, x1), (x2, x3), ...
        rotated = torch.stack(
            [pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 1] * cos + pairs[..., 0] * sin], -1
        )
        return torch.cat([rotated.flatten(-2), x_pass], -1)

    causal = torch.ones(n, n, dtype=torch.bool).tril()  # CoreAttention: is_causal / tril_ mask
    h = w["transformer.embedding.word_embeddings.weight"][ids]  # Embedding.forward
    for layer in range(config["num_layers"]):  # GLMTransformer.forward -> GLMBlock.forward
        p = f"transformer.encoder.layers.{layer}."
        x = rms_norm(h, w[p + "input_layernorm.weight"])
        # SelfAttention.forward: mixed_x_layer.split([np*hn, groups*hn, groups*hn]) when multi_query_attention
        mixed = (
            x @ w[p + "self_attention.query_key_value.weight"].T
            + w[p + "self_attention.query_key_value.bias"]
        )
        q, k, v = mixed.split([heads * hd, groups * hd, groups * hd], -1)
        q, k, v = rope(q.view(n, heads, hd)), rope(k.view(n, groups, hd)), v.view(n, groups, hd)
        # key_layer.unsqueeze(-2).expand(..., np // groups, ...): query head j reads group j // (np // groups)
        k, v = k.repeat_interleave(heads // groups, 1), v.repeat_interleave(heads // groups, 1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)  # norm_factor = sqrt(hn)
        probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        context = torch.einsum("hqk,khd->qhd", probs, v).reshape(n, heads * hd)
        h = h + context @ w[p + "self_attention.dense.weight"].T  # residual = hidden_states (pre-norm)
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"])
        gate, up = (x @ w[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, -1)  # MLP: swiglu(x) = silu(x0) * x1
        h = h + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.dense_4h_to_h.weight"].T
    h = rms_norm(h, w["transformer.encoder.final_layernorm.weight"])  # post_layer_norm
    return h @ w["transformer.output_layer.weight"].T  # ChatGLMModel.output_layer


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BPE sentencepiece model normalised as ChatGLM3's: identity rule, spaces and newlines kept."""
    return train_sentencepiece(tmp_path_factory.mktemp("sp") / "tokenizer.model", CORPUS)


@pytest.fixture(scope="module")
def sp(sp_model: Path):
    """sentencepiece itself, which ChatGLM3's SPTokenizer.encode calls."""
    return sentencepiece.SentencePieceProcessor(model_file=str(sp_model))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, sp_model: Path, sp) -> tuple[Path, dict, dict]:
    """(directory, weights, config) of a tiny random ChatGLM3 checkpoint in the original layout."""
    config = TINY_CONFIG | {"padded_vocab_size": sp.get_piece_size() + len(SPECIAL_TOKENS) + 7}
    weights = random_chatglm_weights(config)
    return write_checkpoint(tmp_path_factory.mktemp("chatglm3"), sp_model, weights, config), weights, config


@pytest.fixture(scope="module")
def loaded(checkpoint):
    """(model, tokenizer) converted in memory from the tiny checkpoint."""
    return load_chatglm3(str(checkpoint[0]), torch.float32, "cpu")


def prompt_ids(tokenizer) -> list[int]:
    conversation = [
        Message("system", "你是知识库问答助手。"),
        Message("user", "年假有几天？"),
        Message("assistant", "工作满一年后年假为五天。"),
        Message("user", "报销申请需要多久提交？"),
    ]
    return CHATGLM3.encode_prompt(tokenizer, conversation)


@pytest.mark.slow
def test_converted_model_computes_chatglm3s_logits(checkpoint, loaded) -> None:
    _, weights, config = checkpoint
    model, tokenizer = loaded
    ids = prompt_ids(tokenizer)
    assert type(model).__name__ == "GlmForCausalLM" and not model.training
    assert all(not t.is_meta for t in [*model.parameters(), *model.buffers()])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    expected = chatglm3_reference_logits(weights, config, ids)
    assert logits.shape == (len(ids), config["padded_vocab_size"])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_greedy_generation_follows_the_reference(checkpoint, loaded) -> None:
    _, weights, config = checkpoint
    model, tokenizer = loaded
    prompt = prompt_ids(tokenizer)
    stops = set(CHATGLM3.stop_token_ids(tokenizer))
    expected = list(prompt)
    for _ in range(8):
        expected.append(int(chatglm3_reference_logits(weights, config, expected)[-1].argmax()))
        if expected[-1] in stops:
            break
    with torch.no_grad():
        generated = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
    assert generated[0].tolist() == expected


@pytest.mark.slow
def test_pytorch_bin_checkpoint_loads_the_same(tmp_path: Path, checkpoint, loaded) -> None:
    source, weights, config = checkpoint
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(source / name, bin_dir / name)
    torch.save(weights, bin_dir / "pytorch_model.bin")
    model, _ = load_chatglm3(str(bin_dir), torch.float32, "cpu")
    ids = torch.tensor([[5, 9, 300, 17]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, loaded[0](ids).logits)


def test_special_tokens_follow_the_sentencepiece_vocabulary(sp_model: Path, sp) -> None:
    tokenizer = build_tokenizer(sp_model)
    size = sp.get_piece_size()
    assert [tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS] == list(range(size, size + 9))
    assert tokenizer.convert_ids_to_tokens(size + 3) == "sop"
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("</s>", 2)
    assert (tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id) == (0, 0, 1)
    assert (sp.eos_id(), sp.unk_id(), sp.bos_id()) == (2, 0, 1)
    assert CHATGLM3.stop_token_ids(tokenizer) == [2, size + 6, size + 8]
    assert template_for("auto", tokenizer) is CHATGLM3
    assert tokenizer.decode([size + 1, size + 3, *sp.encode("你好"), 2], skip_special_tokens=True) == "你好"
    # ChatGLMTokenizer.build_inputs_with_special_tokens puts [gMASK] sop before plain encodings.
    assert tokenizer("你好")["input_ids"] == [size + 1, size + 3, *sp.encode("你好")]


@pytest.mark.parametrize(
    "options",
    [{}, {"normalization_rule_name": "nmt_nfkc", "remove_extra_whitespaces": True}],
    ids=["chatglm3-normalizer", "nfkc-trimming-normalizer"],
)
def test_text_is_encoded_and_decoded_as_sentencepiece_does(tmp_path: Path, options: dict) -> None:
    model_file = train_sentencepiece(tmp_path / "tokenizer.model", CORPUS, **options)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    tokenizer = build_tokenizer(model_file)
    joined = " ".join(CORPUS)
    pick = random.Random(0).randrange
    slices = [joined[start : start + pick(1, 40)] for start in (pick(len(joined)) for _ in range(300))]
    for text in TEXTS + CORPUS + slices:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == sp.encode(text), text
        assert tokenizer.decode(ids) == sp.decode(ids), text
    assert sp.encode("unseen 😀")[-4:] == [3 + byte for byte in "😀".encode()]  # byte fallback was exercised


def test_chatglm3_template_writes_each_segment_as_sentencepiece_encodes_it(sp_model: Path, sp) -> None:
    tokenizer = build_tokenizer(sp_model)
    special = {name: sp.get_piece_size() + i for i, name in enumerate(SPECIAL_TOKENS)}

    def turn(role: str, text: str) -> list[int]:  # build_chat_input: role token, encode("\n"), encode(text)
        return [special[f"<|{role}|>"], *sp.encode("\n"), *sp.encode(text)]

    expected = [
        special["[gMASK]"],
        special["sop"],
        *turn("system", "你是知识库问答助手。"),
        *turn("user", "年假有几天？"),
        *turn("assistant", "工作满一年后年假为五天。"),
        *turn("user", "报销申请需要多久提交？"),
        special["<|assistant|>"],
    ]
    assert prompt_ids(tokenizer) == expected


def test_a_vocabulary_of_the_real_size_puts_the_specials_at_the_real_ids(
    tmp_path: Path, sp_model: Path, sp
) -> None:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp_model.read_bytes())
    for index in range(len(proto.pieces), 64789):  # ChatGLM3's sentencepiece vocabulary has 64789 pieces
        proto.pieces.add(
            piece=f"<filler_{index}>", score=0.0, type=sentencepiece_model_pb2.ModelProto.SentencePiece.UNUSED
        )
    padded = tmp_path / "tokenizer.model"
    padded.write_bytes(proto.SerializeToString())
    real_sp = sentencepiece.SentencePieceProcessor(model_file=str(padded))
    tokenizer = build_tokenizer(padded)

    ids = CHATGLM3.encode_prompt(tokenizer, [Message("user", "你好")])
    # ChatGLM3-6B's ids for this turn are [64790, 64792, 64795, 30910, 13, 36474, 54591, 64796]: the text ids
    # come from its tokenizer.model; "\n" ends in byte piece <0x0A> = 13 in both.
    newline, hello = real_sp.encode("\n"), real_sp.encode("你好")
    assert ids == [64790, 64792, 64795, *newline, *hello, 64796]
    assert newline[-1] == 13 and (newline, hello) == (sp.encode("\n"), sp.encode("你好"))
    assert CHATGLM3.stop_token_ids(tokenizer) == [2, 64795, 64797]
    assert tokenizer.get_vocab()["<|observation|>"] == 64797 and len(tokenizer) == 64798


def test_a_piece_spelled_like_a_special_token_keeps_both_ids(tmp_path: Path) -> None:
    lines = ["philosophy desop isop gasop sopping", "the people of Europe eope"] + CORPUS
    model_file = train_sentencepiece(tmp_path / "tokenizer.model", lines)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    clashes = {sp.piece_to_id(name) for name in SPECIAL_TOKENS} - {sp.unk_id()}
    assert clashes == {sp.piece_to_id("sop"), sp.piece_to_id("eop")}, "the corpus should make them pieces"
    tokenizer = build_tokenizer(model_file)
    assert tokenizer.convert_tokens_to_ids(["sop", "eop"]) == [
        sp.get_piece_size() + 3,
        sp.get_piece_size() + 4,
    ]
    assert tokenizer.decode([sp.piece_to_id("sop"), sp.piece_to_id("eop")]) == "sopeop"
    for text in lines + TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == sp.decode(sp.encode(text)), text
        if not clashes & set(sp.encode(text)):
            assert ids == sp.encode(text), text


@pytest.mark.slow
def test_converted_directory_loads_with_plain_transformers(tmp_path: Path, checkpoint, loaded) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, _, config = checkpoint
    model, tokenizer = loaded
    dst = tmp_path / "chatglm3-glm"
    convert_chatglm3(source, dst)
    assert json.loads((dst / "config.json").read_text())["model_type"] == "glm"
    assert not is_chatglm3_checkpoint(str(dst)) and is_chatglm3_checkpoint(str(source))
    saved_model = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    saved_tokenizer = AutoTokenizer.from_pretrained(dst)
    ids = prompt_ids(saved_tokenizer)
    assert ids == prompt_ids(tokenizer)
    assert saved_tokenizer.encode("<|user|> sop", add_special_tokens=False) == tokenizer.encode(
        "<|user|> sop", add_special_tokens=False
    )
    assert CHATGLM3.stop_token_ids(saved_tokenizer) == CHATGLM3.stop_token_ids(tokenizer)
    assert saved_model.generation_config.eos_token_id == CHATGLM3.stop_token_ids(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(saved_model(torch.tensor([ids])).logits, model(torch.tensor([ids])).logits)
    with pytest.raises(FileExistsError):
        convert_chatglm3(source, dst)


@pytest.mark.slow
def test_cli_converts_and_reports_a_bad_source(tmp_path: Path, checkpoint) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["llm", "convert-chatglm3", str(checkpoint[0]), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.safetensors").is_file() and (
        tmp_path / "out" / "tokenizer.json"
    ).is_file()

    missing = runner.invoke(app, ["llm", "convert-chatglm3", str(tmp_path / "nowhere"), str(tmp_path / "x")])
    assert missing.exit_code == 1
    assert "is not a directory holding a ChatGLM3 checkpoint" in " ".join(missing.stderr.split())
    assert not (tmp_path / "x").exists()


def break_checkpoint(directory: Path, how: str) -> None:
    config = json.loads((directory / "config.json").read_text())
    if how == "shard deleted":
        (directory / "model-00002-of-00002.safetensors").unlink()
    elif how == "tensor missing":
        from safetensors.torch import load_file, save_file

        shard = directory / "model-00001-of-00002.safetensors"
        save_file({k: v for k, v in load_file(shard).items() if ".layers.1." not in k}, shard)
    elif how == "no tokenizer":
        (directory / "tokenizer.model").unlink()
    elif how == "quantized":
        (directory / "config.json").write_text(json.dumps(config | {"quantization_bit": 4}))
    elif how == "wrong shapes":
        (directory / "config.json").write_text(json.dumps(config | {"ffn_hidden_size": 40}))
    elif how == "not chatglm":
        (directory / "config.json").write_text(json.dumps(config | {"model_type": "llama"}))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("shard deleted", "missing model-00002-of-00002.safetensors"),
        ("tensor missing", "incomplete checkpoint .*: missing transformer.encoder.layers.1."),
        ("no tokenizer", "tokenizer.model"),
        ("quantized", "quantization_bit=4"),
        ("wrong shapes", "do not fit its config.json"),
        ("not chatglm", "does not describe a ChatGLM checkpoint"),
    ],
)
def test_a_broken_checkpoint_is_refused_with_a_clear_message(
    tmp_path: Path, checkpoint, how, message
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint[0], broken)
    break_checkpoint(broken, how)
    with pytest.raises(ModelLoadError, match=message):
        load_chatglm3(str(broken), torch.float32, "cpu")


def test_only_local_chatglm_directories_are_chatglm3_checkpoints(tmp_path: Path) -> None:
    assert not is_chatglm3_checkpoint("THUDM/chatglm3-6b")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert not is_chatglm3_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    assert not is_chatglm3_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "chatglm"}))
    assert is_chatglm3_checkpoint(str(tmp_path))
