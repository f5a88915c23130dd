"""The ChatGLM3 seed's last steps on kbqa's output, run as a user runs them on a tiny ChatGLM3 checkpoint: the
adapter names its base model, `merge` takes the seed's flags and finds the base itself, and `kbqa finetune
predict` answers with history where the seed's predict.py called `model.chat`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from servers import kbqa

from llm.config import LLMConfig
from llm.transformers_backend import TransformersChatModel
from llm.types import GenerationParams, Message

HISTORY = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好，我是HR助手。"}]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a tiny ChatGLM3 checkpoint in THUDM's layout, a LoRA adapter `kbqa finetune train` made on it)."""
    import sentencepiece
    from chatglm3_checkpoints import (
        SPECIAL_TOKENS,
        TINY_CONFIG,
        random_chatglm_weights,
        train_sentencepiece,
        write_checkpoint,
    )
    from models import CORPUS

    root = tmp_path_factory.mktemp("glm-steps")
    sp_model = train_sentencepiece(root / "sp" / "tokenizer.model", CORPUS)
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
    config = TINY_CONFIG | {"padded_vocab_size": pieces + len(SPECIAL_TOKENS) + 7}
    checkpoint = write_checkpoint(root / "chatglm3", sp_model, random_chatglm_weights(config), config)
    data = root / "data"
    data.mkdir()
    records = [{"instruction": "年假有几天？", "output": "工作满一年后年假为五天。"}]
    (data / "hr.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps({"hr": {"file_name": "hr.json"}}), encoding="utf-8")
    trained = kbqa(
        "finetune", "train", "--model_name_or_path", str(checkpoint), "--dataset", "hr", "--dataset_dir",
        str(data), "--template", "chatglm3", "--lora_target", "all", "--max_steps", "2", "--learning_rate",
        "1e-2", "--output_dir", str(root / "lora"),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    return checkpoint, root / "lora"


def test_the_adapter_records_its_base_model_for_peft_config_tools(adapter: tuple[Path, Path]) -> None:
    from peft import PeftConfig

    checkpoint, lora = adapter
    assert PeftConfig.from_pretrained(str(lora)).base_model_name_or_path == str(checkpoint)


def test_merge_takes_the_seed_flags_and_the_recorded_base_then_predict_chats_with_history(
    adapter: tuple[Path, Path], tmp_path: Path
) -> None:
    _, lora = adapter
    merged = kbqa("finetune", "merge", "--lora_path", str(lora), "--output_path", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    history = json.dumps(HISTORY, ensure_ascii=False)
    predicted = kbqa(
        "finetune", "predict", "--model", str(tmp_path / "merged"), "--history", history, "--json",
        "--max_new_tokens", "6", "年假有几天？", "报销呢？",
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    first, second = (json.loads(line) for line in predicted.stdout.splitlines())
    # As model.chat returns them: the reply, and the history with the query and the reply added.
    assert first["history"] == [*HISTORY, {"role": "user", "content": "年假有几天？"}] + [
        {"role": "assistant", "content": first["response"]}
    ]
    assert second["history"][:-2] == first["history"] and second["history"][-2]["content"] == "报销呢？"
    served = TransformersChatModel(LLMConfig(backend="transformers", model=str(tmp_path / "merged")))
    turns = [Message(t["role"], t["content"]) for t in first["history"][:-1]]
    assert served.generate(turns, GenerationParams(max_new_tokens=6)).text == first["response"]

    quantised = kbqa(
        "finetune", "merge", "--lora_path", str(lora), "--output_path", str(tmp_path / "q8"), "--qbits", "8"
    )
    assert quantised.returncode == 0, quantised.stderr
    answered = kbqa("finetune", "predict", "--model", str(tmp_path / "q8"), "--max_new_tokens", "4", "你好")
    assert answered.returncode == 0 and answered.stdout.strip(), answered.stderr


def test_predict_refuses_a_malformed_history(adapter: tuple[Path, Path]) -> None:
    checkpoint, _ = adapter
    refused = kbqa("finetune", "predict", "--model", str(checkpoint), "--history", '[{"role": "boss"}]', "hi")
    assert refused.returncode == 1 and "--history turn 0" in refused.stderr
