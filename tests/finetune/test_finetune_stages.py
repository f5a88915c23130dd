"""The stages beyond SFT on tiny random models: pt learns plain text, dpo and orpo widen the preference margin,
rm learns a reward head; pairs are laid out by SFT's template; ppo and other stages are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from models import build_trainable_lm, train_byte_level_bpe
from safetensors.torch import load_file

from finetune.arguments import TrainArguments, arguments_from
from finetune.conversation import Conversation, Preference
from finetune.errors import FinetuneError
from finetune.preprocess import IGNORE_INDEX, encode_example, encode_preference, encode_text
from finetune.train import train
from llm.templates import template_for
from llm.types import Message

PAIRS = [
    ("年假有几天？", "工作满一年后年假为五天。", "不知道。"),
    ("报销多久提交？", "费用发生后三十天内提交。", "随便什么时候。"),
    ("谁审批报销？", "部门经理审批。", "没有人。"),
]
FAST = {"learning_rate": 1e-2, "max_steps": 6, "logging_steps": 2, "per_device_train_batch_size": 3}


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_trainable_lm(tmp_path_factory.mktemp("qwen") / "model", "qwen2")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset directory as LLaMA-Factory registers preference pairs (dpo_zh_demo) and plain text (c4_demo)."""
    root = tmp_path_factory.mktemp("data")
    pairs = [
        {
            "conversations": [{"from": "human", "value": q}],
            "chosen": {"from": "gpt", "value": good},
            "rejected": {"from": "gpt", "value": bad},
        }
        for q, good, bad in PAIRS
    ]
    (root / "pairs.json").write_text(json.dumps(pairs, ensure_ascii=False), encoding="utf-8")
    texts = (
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for _, t, _ in PAIRS) + '{"text": ""}\n'
    )
    (root / "c4.jsonl").write_text(texts, encoding="utf-8")
    (root / "faq.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]), encoding="utf-8")
    info = {
        "pairs": {
            "file_name": "pairs.json",
            "ranking": True,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
        },
        "c4": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}},
        "faq": {"file_name": "faq.json"},
    }
    (root / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return root


def run(qwen: Path, out: Path, data: Path, stage: str, dataset: str, **settings: object):
    args = TrainArguments(
        model_name_or_path=str(qwen),
        output_dir=str(out),
        stage=stage,
        dataset=dataset,
        dataset_dir=str(data),
        template="chatml",
        **FAST | settings,
    )
    return train(args)


@pytest.mark.parametrize("stage", ["dpo", "orpo"])
def test_preference_stages_lower_the_loss_and_widen_the_margin(
    qwen: Path, data: Path, tmp_path: Path, stage: str
) -> None:
    result = run(qwen, tmp_path / stage, data, stage, "pairs")
    assert result.examples == 3 and [step for step, _ in result.losses] == [2, 4, 6]
    assert result.losses[-1][1] < result.losses[0][1]
    assert len(result.margins) == 3 and result.margins[-1][1] > result.margins[0][1] + 0.1
    assert (result.output_dir / "adapter_model.safetensors").is_file()
    info = json.loads((result.output_dir / "kbqa_adapter.json").read_text(encoding="utf-8"))
    assert (info["template"], info["stage"], info["finetuning_type"]) == ("chatml", stage, "lora")


def test_reward_model_learns_a_value_head_that_ranks_chosen_first(
    qwen: Path, data: Path, tmp_path: Path
) -> None:
    result = run(qwen, tmp_path / "rm", data, "rm", "pairs")
    assert result.losses[-1][1] < result.losses[0][1] and result.margins[-1][1] > result.margins[0][1]
    weights = load_file(result.output_dir / "adapter_model.safetensors")
    assert any("score" in name for name in weights) and any("lora_A" in name for name in weights)


def test_pretraining_learns_every_token_of_the_prompt_column(qwen: Path, data: Path, tmp_path: Path) -> None:
    result = run(qwen, tmp_path / "pt", data, "pt", "c4")
    assert result.examples == 3 and result.losses[-1][1] < result.losses[0][1] / 2
    tokenizer = train_byte_level_bpe(tmp_path / "tok")
    example = encode_text("员工每年享有带薪年假。", tokenizer, 1024)
    assert example["labels"] == example["input_ids"] and example["input_ids"][-1] == tokenizer.eos_token_id
    assert len(encode_text("员工每年享有带薪年假。" * 50, tokenizer, 16)["input_ids"]) == 16


def test_pairs_are_laid_out_as_sft_lays_out_the_reply(tmp_path: Path) -> None:
    tokenizer = train_byte_level_bpe(tmp_path / "tok")
    template = template_for("chatml", tokenizer)
    prompt = (
        Message("system", "你是HR助手。"),
        Message("user", "在吗？"),
        Message("assistant", "在的。"),
        Message("user", "年假有几天？"),
    )
    pair = encode_preference(Preference(prompt, "五天。", "不知道，请问别人。"), template, tokenizer, 1024)
    for reply, key in (("五天。", "chosen_ids"), ("不知道，请问别人。", "rejected_ids")):
        sft = encode_example(
            Conversation((*prompt, Message("assistant", reply))), template, tokenizer, 1024, mask_history=True
        )
        assert pair["prompt_ids"] + pair[key] == sft["input_ids"]
        assert [t for t in sft["labels"] if t != IGNORE_INDEX] == pair[key]
    cut = encode_preference(Preference(prompt, "五天。", "不知道，请问别人。"), template, tokenizer, 12)
    assert len(cut["prompt_ids"]) + max(len(cut["chosen_ids"]), len(cut["rejected_ids"])) <= 12
    assert cut["prompt_ids"] == pair["prompt_ids"][-len(cut["prompt_ids"]) :]  # the question is kept


def test_other_stages_and_mismatched_data_are_refused(qwen: Path, data: Path, tmp_path: Path) -> None:
    for stage in ("ppo", "kto"):
        with pytest.raises(
            FinetuneError, match=f"--stage {stage} is not supported; kbqa trains sft, pt, dpo, orpo, rm"
        ):
            arguments_from({"stage": stage})
    assert arguments_from({"stage": "dpo", "pref_loss": "orpo"}).stage == "orpo"  # LLaMA-Factory's ORPO
    with pytest.raises(
        FinetuneError, match="dataset 'faq' holds conversations; dpo, orpo and rm train on preference"
    ):
        run(qwen, tmp_path / "x", data, "dpo", "faq")
    with pytest.raises(FinetuneError, match="holds preference data"):
        run(qwen, tmp_path / "y", data, "sft", "pairs")


def test_a_reward_adapter_is_never_merged_or_served_as_a_chat_model(
    qwen: Path, data: Path, tmp_path: Path
) -> None:
    import subprocess

    from servers import KBQA, build_small_kb, clean_env, kbqa

    reward = run(qwen, tmp_path / "rm", data, "rm", "pairs", max_steps=2).output_dir
    merged = kbqa(
        "finetune", "merge", "--base", str(qwen), "--adapter", str(reward), "--out", str(tmp_path / "m")
    )
    said = " ".join(merged.stderr.split())  # the console wraps long lines
    assert merged.returncode == 1 and "reward model (--stage rm)" in said, said
    assert "value head would be dropped" in said and not (tmp_path / "m").exists()
    env = {
        "KBQA_LLM__BACKEND": "transformers",
        "KBQA_LLM__MODEL": str(qwen),
        "KBQA_LLM__DEVICE": "cpu",
        "KBQA_LLM__ADAPTERS": json.dumps({"judge": str(reward)}),
    }
    data_dir = build_small_kb(tmp_path / "kb")
    asked = subprocess.run(
        [KBQA, "--data-dir", str(data_dir), "ask", "--kb", "demo", "--adapter", "judge", "年假有几天？"],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        timeout=300,
        check=False,
    )
    assert asked.returncode == 1, asked.stdout + asked.stderr
    said = " ".join(asked.stderr.split())
    assert "llm.adapters.judge:" in said and "trained with --stage rm" in said, said
    assert "Traceback" not in asked.stderr
