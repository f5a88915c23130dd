"""The template names of LLaMA-Factory's and DB-GPT-Hub's recipes, through `kbqa finetune train` as their
commands are pasted: `qwen` and `llama2` train, an unknown name is refused before any model loads, and
`default` trains function-call data in LLaMA-Factory's default tool format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from models import build_trainable_lm, train_byte_level_bpe
from servers import kbqa

from finetune.conversation import Conversation
from finetune.preprocess import IGNORE_INDEX, encode_example
from finetune.tools import with_tools
from llm.templates import TEMPLATES, template_for
from llm.types import Message

TOOLS = [
    {
        "name": "weather",
        "description": "查天气",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "城市"}},
            "required": ["city"],
        },
    }
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a tiny Qwen2, a dataset dir with `faq` (alpaca) and `calls` (sharegpt function calls) registered)."""
    root = tmp_path_factory.mktemp("names")
    model = build_trainable_lm(root / "model", "qwen2")
    data = root / "data"
    data.mkdir()
    faq = [{"instruction": "年假有几天？", "output": "五天。", "system": "你是HR助手。"}]
    calls = [
        {
            "conversations": [
                {"from": "human", "value": "北京天气？"},
                {
                    "from": "function_call",
                    "value": json.dumps({"name": "weather", "arguments": {"city": "北京"}}),
                },
                {"from": "observation", "value": '{"temp": 20}'},
                {"from": "gpt", "value": "北京 20 度。"},
            ],
            "tools": json.dumps(TOOLS, ensure_ascii=False),
        }
    ]
    (data / "faq.json").write_text(json.dumps(faq, ensure_ascii=False), encoding="utf-8")
    (data / "calls.json").write_text(json.dumps(calls, ensure_ascii=False), encoding="utf-8")
    info = {
        "faq": {
            "file_name": "faq.json",
            "columns": {"prompt": "instruction", "response": "output", "system": "system"},
        },
        "calls": {
            "file_name": "calls.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "tools": "tools"},
        },
    }
    (data / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return model, data


def train(setup: tuple[Path, Path], out: Path, template: str, dataset: str = "faq", model: str | None = None):
    base, data = setup
    return kbqa(
        "finetune", "train", "--model_name_or_path", model or str(base), "--dataset", dataset, "--dataset_dir",
        str(data), "--template", template, "--max_steps", "1", "--output_dir", str(out),
    )  # fmt: skip


@pytest.mark.parametrize("template", ["qwen", "llama2"])
def test_the_seeds_template_names_train(setup: tuple[Path, Path], tmp_path: Path, template: str) -> None:
    trained = train(setup, tmp_path / "run", template)
    assert trained.returncode == 0, trained.stderr
    info = json.loads((tmp_path / "run" / "kbqa_adapter.json").read_text(encoding="utf-8"))
    assert info["template"] == template


def test_an_unknown_template_is_refused_before_the_model_loads(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    # The model path does not exist: the template is what the user hears about, at once.
    refused = train(setup, tmp_path / "run", "qwen9", model=str(tmp_path / "no-model"))
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 1 and "unknown chat template 'qwen9'" in said and "llama2" in said, said
    assert "cannot load the model" not in said


def test_default_trains_function_calls_in_llama_factorys_default_tool_format(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    trained = train(setup, tmp_path / "run", "default", dataset="calls")
    assert trained.returncode == 0, trained.stderr
    call = Conversation(
        (
            Message("user", "北京天气？"),
            Message("assistant", '{"name": "weather", "arguments": {"city": "北京"}}'),
            Message("observation", '{"temp": 20}'),
            Message("assistant", "北京 20 度。"),
        ),
        "calls#0",
        json.dumps(TOOLS, ensure_ascii=False),
        (1,),
    )
    tokenizer = train_byte_level_bpe(tmp_path / "tok")
    example = encode_example(with_tools(call, "default"), template_for("default", tokenizer), tokenizer, 4096)
    prompt = tokenizer.decode(example["input_ids"])
    learnt = tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])
    assert 'Action: weather\nAction Input: {"city": "北京"}' in learnt
    assert (
        "> Tool Name: weather\nTool Description: 查天气\nTool Args:\n  - city (string, required): 城市\n"
        in prompt
    )
    assert "Action: tool name (one of [weather])" in prompt


def test_llama2_fuses_the_system_block_into_the_first_user_turn(tmp_path: Path) -> None:
    tokenizer = train_byte_level_bpe(tmp_path / "tok")
    messages = [
        Message("system", "你是HR助手。"),
        Message("user", "年假有几天？"),
        Message("assistant", "五天。"),
        Message("user", "报销呢？"),
    ]
    prompt = tokenizer.decode(TEMPLATES["llama2"].encode_prompt(tokenizer, messages))
    assert (
        prompt
        == "[INST] <<SYS>>\n你是HR助手。\n<</SYS>>\n\n年假有几天？ [/INST]五天。[INST] 报销呢？ [/INST]"
    )
    qwen = tokenizer.decode(TEMPLATES["qwen"].encode_prompt(tokenizer, [Message("user", "hi")]))
    assert qwen.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi")
