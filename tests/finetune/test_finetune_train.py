"""Fine-tuning tiny random models end to end: LoRA memorises a tiny dataset and the adapter serves through the
llm module with its saved template; merge keeps the logits; resume continues the step count; ChatGLM-style
target names on GPTNeoX and on a converted ChatGLM3 checkpoint; freeze; QLoRA's error without CUDA; the CLI
with a YAML config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from models import build_trainable_lm, train_byte_level_bpe
from safetensors.torch import load_file

from finetune.arguments import TrainArguments, arguments_from
from finetune.conversation import Conversation
from finetune.errors import FinetuneError
from finetune.merge import merge_adapter
from finetune.train import train
from finetune.trainable import lora_targets
from llm.config import LLMConfig
from llm.errors import ModelLoadError
from llm.transformers_backend import TransformersChatModel
from llm.types import BASE_MODEL, GenerationParams, Message

FAQ = [
    ("年假有几天？", "工作满一年后年假为五天。"),
    ("报销多久提交？", "费用发生后三十天内提交。"),
    ("谁审批报销？", "部门经理审批。"),
]
CONVERSATIONS = [
    Conversation((Message("user", q), Message("assistant", a)), source=f"faq#{i}")
    for i, (q, a) in enumerate(FAQ)
]
GREEDY = GenerationParams(max_new_tokens=24)
# Memorises FAQ in 30 steps (a batch holds all three examples).
MEMORISE = {"learning_rate": 1e-2, "max_steps": 30, "per_device_train_batch_size": 3, "logging_steps": 5}


def arguments(model: Path, output_dir: Path, **settings: object) -> TrainArguments:
    return TrainArguments(model_name_or_path=str(model), output_dir=str(output_dir), **settings)


def chat(model: Path, **config: object) -> TransformersChatModel:
    return TransformersChatModel(LLMConfig(backend="transformers", model=str(model), device="cpu", **config))


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(base model directory, the LoRA run's result) of a ChatML-templated run that memorises FAQ."""
    root = tmp_path_factory.mktemp(f"lora-{request.param}")
    model = build_trainable_lm(root / "model", request.param)
    args = arguments(model, root / "adapter", template="chatml", plot_loss=True, **MEMORISE)
    return model, train(args, CONVERSATIONS)


def test_lora_lowers_the_loss_and_saves_what_serving_needs(trained) -> None:
    model, result = trained
    assert result.global_step == 30 and result.examples == 3 and result.skipped == 0
    assert [step for step, _ in result.losses] == [5, 10, 15, 20, 25, 30]
    assert result.losses[-1][1] < result.losses[0][1] / 2
    saved = {path.name for path in result.output_dir.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "training_loss.png",
    } <= saved
    info = json.loads((result.output_dir / "kbqa_adapter.json").read_text(encoding="utf-8"))
    assert info == {"template": "chatml", "base_model": str(model), "finetuning_type": "lora"}
    config = json.loads((result.output_dir / "adapter_config.json").read_text(encoding="utf-8"))
    expected = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert set(config["target_modules"]) == expected  # `all`: every linear layer but lm_head
    from PIL import Image

    with Image.open(result.loss_plot) as plot:
        assert plot.size == (800, 480) and len(plot.getcolors(1 << 20)) > 3


def test_the_adapter_serves_its_answers_with_its_saved_template(trained, tmp_path: Path) -> None:
    model, result = trained
    served = chat(model, adapters={"faq": str(result.output_dir)})
    # llm.template is auto, which alone picks `hf` (the tokenizer's Jinja template); the adapter names chatml.
    assert served.template.name == "chatml" and chat(model).template.name == "hf"
    for question, answer in FAQ:
        messages = [Message("user", question)]
        assert served.generate(messages, GREEDY.model_copy(update={"adapter": "faq"})).text == answer
        assert served.generate(messages, GREEDY.model_copy(update={"adapter": BASE_MODEL})).text != answer
    assert chat(model, adapters={"faq": str(result.output_dir)}, template="hf").template.name == "hf"
    other = shutil.copytree(result.output_dir, tmp_path / "other")
    (other / "kbqa_adapter.json").write_text(json.dumps({"template": "hf"}), encoding="utf-8")
    with pytest.raises(
        ModelLoadError, match=r"different chat templates \(.*: chatml, .*other: hf\); set llm.template"
    ):
        chat(model, adapters={"faq": str(result.output_dir), "other": str(other)})


def test_merge_gives_the_adapter_models_logits(trained, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, result = trained
    merged = merge_adapter(str(model), result.output_dir, tmp_path / "merged")
    assert merged.dtype == "float32" and merged.max_abs_diff <= merged.tolerance < 1e-2
    saved = {path.name for path in merged.out.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "config.json", "kbqa_adapter.json"} <= saved
    assert not any(name.startswith("adapter") for name in saved)
    ids = torch.tensor([[5, 17, 230, 41, 99, 3]])
    reloaded = AutoModelForCausalLM.from_pretrained(merged.out)
    adapter_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), result.output_dir)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, adapter_model(ids).logits, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(reloaded(ids).logits, adapter_model.get_base_model()(ids).logits)
    assert chat(merged.out).template.name == "chatml"  # the merged model keeps the adapter's template
    with pytest.raises(FinetuneError, match="not empty"):
        merge_adapter(str(model), result.output_dir, merged.out)
    with pytest.raises(FinetuneError, match="no LoRA adapter"):
        merge_adapter(str(model), merged.out, tmp_path / "again")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_trainable_lm(tmp_path_factory.mktemp("qwen") / "model", "qwen2")


def test_resume_continues_the_step_count(qwen: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    settings = {"max_steps": 4, "save_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 1}
    first = train(arguments(qwen, out, **settings), CONVERSATIONS)
    assert first.global_step == 4 and {p.name for p in out.glob("checkpoint-*")} == {
        "checkpoint-2",
        "checkpoint-4",
    }
    with pytest.raises(FinetuneError, match="not empty; pass --resume_from_checkpoint auto"):
        train(arguments(qwen, out, **settings), CONVERSATIONS)
    resumed = train(
        arguments(qwen, out, **settings | {"max_steps": 6, "resume_from_checkpoint": "auto"}), CONVERSATIONS
    )
    assert resumed.global_step == 6
    assert [step for step, _ in resumed.losses] == [1, 2, 3, 4, 5, 6]
    assert resumed.losses[:4] == first.losses  # steps 1-4 come from the checkpoint, not a second run
    with pytest.raises(FinetuneError, match="holds no checkpoint"):
        train(arguments(qwen, tmp_path / "empty", resume_from_checkpoint="auto"), CONVERSATIONS)


def test_validation_split_reports_an_eval_loss_and_dora_rslora_are_saved(qwen: Path, tmp_path: Path) -> None:
    args = arguments(qwen, tmp_path / "run", max_steps=2, val_size=1, use_dora=True, use_rslora=True)
    result = train(args, CONVERSATIONS)
    assert result.examples == 2 and result.eval_loss is not None and result.eval_loss > 0
    config = json.loads((tmp_path / "run" / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["use_dora"] is True and config["use_rslora"] is True
    weights = load_file(tmp_path / "run" / "adapter_model.safetensors")
    assert any("lora_magnitude_vector" in name for name in weights)


def test_freeze_trains_only_the_last_layers(qwen: Path, tmp_path: Path) -> None:
    args = arguments(qwen, tmp_path / "run", finetuning_type="freeze", freeze_trainable_layers=1, max_steps=2)
    result = train(args, CONVERSATIONS)
    before, after = load_file(qwen / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("model.layers.1.") for name in changed)
    assert result.trainable_parameters == sum(
        t.numel() for n, t in before.items() if n.startswith("model.layers.1.")
    )
    info = json.loads((tmp_path / "run" / "kbqa_adapter.json").read_text(encoding="utf-8"))
    assert info["finetuning_type"] == "freeze" and info["template"] == "hf"


# --- ChatGLM-style layer names --------------------------------------------------------------------


def test_gptneox_takes_chatglm_style_target_names(tmp_path: Path) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    tokenizer = train_byte_level_bpe(tmp_path / "model")
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    GPTNeoXForCausalLM(config).save_pretrained(tmp_path / "model")
    names = "query_key_value,dense,dense_h_to_4h,dense_4h_to_h"
    assert lora_targets(GPTNeoXForCausalLM(config), "all") == sorted(names.split(","))  # not embed_out
    result = train(
        arguments(tmp_path / "model", tmp_path / "run", lora_target=names, max_steps=2), CONVERSATIONS
    )
    adapter = json.loads((result.output_dir / "adapter_config.json").read_text(encoding="utf-8"))
    assert set(adapter["target_modules"]) == set(names.split(","))
    weights = load_file(result.output_dir / "adapter_model.safetensors")
    assert any(".attention.query_key_value.lora_A" in name for name in weights)
    assert any(".mlp.dense_4h_to_h.lora_B" in name for name in weights)
    with pytest.raises(FinetuneError, match="'q_proj' names no linear layer of this model; it has dense, "):
        lora_targets(GPTNeoXForCausalLM(config), "q_proj")


def test_a_chatglm3_checkpoint_trains_with_its_own_layer_names(tmp_path: Path) -> None:
    import sentencepiece
    from chatglm3_checkpoints import (
        SPECIAL_TOKENS,
        TINY_CONFIG,
        random_chatglm_weights,
        train_sentencepiece,
        write_checkpoint,
    )
    from models import CORPUS

    sp_model = train_sentencepiece(tmp_path / "sp" / "tokenizer.model", CORPUS)
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
    config = TINY_CONFIG | {"padded_vocab_size": pieces + len(SPECIAL_TOKENS) + 7}
    checkpoint = write_checkpoint(tmp_path / "chatglm3", sp_model, random_chatglm_weights(config), config)
    args = arguments(
        checkpoint,
        tmp_path / "run",
        lora_target="query_key_value,dense_h_to_4h",
        max_steps=20,
        learning_rate=1e-2,
    )
    result = train(args, CONVERSATIONS[:1])
    assert result.template == "chatglm3"  # `auto` on ChatGLM3's tokenizer
    adapter = json.loads((result.output_dir / "adapter_config.json").read_text(encoding="utf-8"))
    # The checkpoint is converted to transformers' GLM on load, as the llm module serves it.
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "gate_up_proj"}
    served = chat(checkpoint, adapters={"hr": str(result.output_dir)})
    question = [Message("user", FAQ[0][0])]
    tuned = served.generate(question, GREEDY.model_copy(update={"adapter": "hr"})).text
    assert tuned != served.generate(question, GREEDY.model_copy(update={"adapter": BASE_MODEL})).text


# --- arguments and errors ---------------------------------------------------------------------------


def test_qlora_without_cuda_is_a_clear_error(qwen: Path, tmp_path: Path) -> None:
    with pytest.raises(FinetuneError, match=r"--quantization_bit 4 \(QLoRA\) needs a CUDA GPU"):
        train(arguments(qwen, tmp_path / "run", quantization_bit=4), CONVERSATIONS)
    assert not (tmp_path / "run").exists()
    with pytest.raises(FinetuneError, match="trains LoRA adapters only"):
        arguments(qwen, tmp_path / "run", quantization_bit=4, finetuning_type="full")


def test_yaml_values_are_coerced_and_flags_override_them() -> None:
    config = {
        "stage": "sft",
        "do_train": True,
        "model_name_or_path": "m",
        "dataset": ["faq", "rag"],
        "learning_rate": "5e-5",  # PyYAML reads a float without a dot as a string
        "num_train_epochs": 2,
        "bf16": "true",
        "resume_from_checkpoint": True,
    }
    args = arguments_from(config, {"learning_rate": 1e-3, "lora_rank": None, "output_dir": "out"})
    assert (args.dataset, args.learning_rate, args.num_train_epochs, args.bf16) == (
        "faq,rag",
        1e-3,
        2.0,
        True,
    )
    assert (args.lora_rank, args.resume_from_checkpoint, args.output_dir) == (8, "auto", "out")
    # deepspeed is a transformers key kbqa cannot carry out: refused by name, apart from the typo.
    with pytest.raises(
        FinetuneError, match=r"unknown settings: lora_rnak; settings kbqa does not support: deepspeed"
    ):
        arguments_from({"lora_rnak": 4, "deepspeed": "ds.json"})
    with pytest.raises(FinetuneError, match=r"lora_rank: expected int, got 2.5"):
        arguments_from({"lora_rank": 2.5})
    with pytest.raises(FinetuneError, match="choose one of --bf16 and --fp16"):
        arguments_from({"bf16": True, "fp16": True})


# --- the command line -------------------------------------------------------------------------------


def test_cli_trains_from_a_yaml_config_and_merges(qwen: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    data = tmp_path / "data"
    data.mkdir()
    records = [{"instruction": q, "input": "", "output": a} for q, a in FAQ] + [{"instruction": "没有回答"}]
    (data / "faq.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps({"faq": {"file_name": "faq.json"}}), encoding="utf-8")
    out = tmp_path / "adapter"
    (tmp_path / "sft.yaml").write_text(
        f"stage: sft\nmodel_name_or_path: {qwen}\ndataset: faq\ndataset_dir: {data}\ntemplate: chatml\n"
        f"output_dir: {out}\nlearning_rate: 1e-2\nmax_steps: 100\nlogging_steps: 1\nval_size: 1\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    result = runner.invoke(
        app, ["finetune", "train", "--config", str(tmp_path / "sft.yaml"), "--max_steps", "3", "--plot_loss"]
    )
    assert result.exit_code == 0, result.output
    assert "trained 3 steps on 2 examples" in result.output and "eval loss" in result.output
    assert (out / "adapter_model.safetensors").is_file() and (out / "training_loss.png").is_file()
    merged = runner.invoke(
        app, ["finetune", "merge", "--base", str(qwen), "--adapter", str(out), "--out", str(tmp_path / "m")]
    )
    assert merged.exit_code == 0, merged.output
    assert "largest logit difference from the adapter model" in merged.output
    assert (tmp_path / "m" / "model.safetensors").is_file()
    again = runner.invoke(app, ["finetune", "train", "--config", str(tmp_path / "sft.yaml")])
    assert again.exit_code == 1 and "is not empty; pass --resume_from_checkpoint" in " ".join(
        again.output.split()
    )
    bad = runner.invoke(
        app, ["finetune", "train", "--model_name_or_path", str(qwen), "--finetuning_type", "dpo"]
    )
    assert bad.exit_code == 1 and "--finetuning_type must be one of lora, freeze, full" in " ".join(
        bad.output.split()
    )


# --- LLaMA-Factory's command line and YAML as pasted, transformers' and DB-GPT-Hub's keys --------------

PASTED = (
    "--stage sft --do_train True --model_name_or_path m --dataset faq --template chatml "
    "--finetuning_type lora --lora_target q_proj,v_proj --output_dir out --overwrite_cache "
    "--per_device_train_batch_size 2 --gradient_accumulation_steps 4 --lr_scheduler_type cosine "
    "--logging_steps 10 --save_steps 100 --learning_rate 5e-5 --num_train_epochs 3.0 --fp16 True "
    "--plot_loss --val_size=0.1 --no_gradient_checkpointing --warmup-ratio 0.1 --optim adamw_torch"
)


def test_a_pasted_llamafactory_command_line_reads_with_booleans_with_or_without_a_value() -> None:
    from finetune.arguments import parse_command_line

    config, flags = parse_command_line(["sft.yaml", *PASTED.split()])
    assert config == "sft.yaml"
    args = arguments_from({}, flags)
    assert (args.stage, args.fp16, args.plot_loss, args.gradient_checkpointing) == ("sft", True, True, False)
    assert (args.lora_target, args.per_device_train_batch_size, args.learning_rate) == (
        "q_proj,v_proj",
        2,
        5e-5,
    )
    assert (args.val_size, args.warmup_ratio, args.training_arguments) == (0.1, 0.1, {"optim": "adamw_torch"})
    assert arguments_from({"fp16": "False"}, parse_command_line(["--fp16"])[1]).fp16 is True
    assert arguments_from({}).lr_scheduler_type == "cosine"  # LLaMA-Factory's documented default
    assert parse_command_line(["--plot_loss", "sft.yaml", "--bf16"]) == (
        "sft.yaml",
        {"plot_loss": "true", "bf16": "true"},
    )
    with pytest.raises(FinetuneError, match="unexpected argument 'sft'"):
        parse_command_line(["--stage", "pt", "sft", "x"])


def test_documented_names_kbqa_cannot_honour_are_refused_by_name() -> None:
    with pytest.raises(FinetuneError, match=r"settings kbqa does not support: packing, use_galore$"):
        arguments_from({"use_galore": True, "packing": "true", "template": "chatml"})
    with pytest.raises(FinetuneError, match=r"unknown settings: lora_rnak$"):
        arguments_from({"lora_rnak": 8})
    with pytest.raises(FinetuneError, match="--stage ppo is not supported"):
        arguments_from({"stage": "ppo"})
    with pytest.raises(FinetuneError, match="always trains"):
        arguments_from({"do_train": False})
    with pytest.raises(FinetuneError, match="give one of --warmup_steps and --warmup_ratio"):
        arguments_from({"warmup_ratio": 0.1, "warmup_steps": 5})


def test_db_gpt_hub_source_and_target_lengths_cut_prompt_and_reply_apart(tmp_path: Path) -> None:
    from finetune.preprocess import IGNORE_INDEX, encode_example
    from llm.templates import template_for

    tokenizer = train_byte_level_bpe(tmp_path / "tok")
    template = template_for("chatml", tokenizer)
    # Text the tokenizer was not trained on, so it takes many tokens.
    long = Conversation((Message("user", "qwzx vbnm " * 8), Message("assistant", "plokij uhygt " * 8)))
    whole = encode_example(long, template, tokenizer, 1024)
    prompt_len = whole["labels"].index(next(label for label in whole["labels"] if label != IGNORE_INDEX))
    cut = encode_example(long, template, tokenizer, 1024, turn_limits=(6, 5))
    assert cut["input_ids"][:6] == whole["input_ids"][:6]
    assert cut["input_ids"][6:11] == whole["input_ids"][prompt_len : prompt_len + 5]
    assert [label for label in cut["labels"] if label != IGNORE_INDEX][:5] == whole["input_ids"][
        prompt_len : prompt_len + 5
    ]
    assert len(cut["input_ids"]) == 6 + 5 + 1  # the cut reply still learns to end
    args = arguments_from({"max_source_length": "6", "max_target_length": 5})
    assert (args.max_source_length, args.max_target_length) == (6, 5)


def test_cli_takes_a_llamafactory_yaml_and_transformers_keys_as_pasted(qwen: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    data = tmp_path / "data"
    data.mkdir()
    records = [{"instruction": q, "input": "", "output": a} for q, a in FAQ]
    (data / "faq.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps({"faq": {"file_name": "faq.json"}}), encoding="utf-8")
    out = tmp_path / "adapter"
    # llamafactory-cli train's YAML, with the keys of a ChatGLM3 QLoRA recipe's JSON training arguments.
    (tmp_path / "sft.yaml").write_text(
        "### model\n"
        f"model_name_or_path: {qwen}\ntrust_remote_code: true\n"
        "### method\nstage: sft\ndo_train: true\nfinetuning_type: lora\nlora_rank: 8\nlora_target: all\n"
        f"### dataset\ndataset: faq\ndataset_dir: {data}\ntemplate: chatml\ncutoff_len: 2048\n"
        "max_samples: 1000\noverwrite_cache: true\npreprocessing_num_workers: 16\ndataloader_num_workers: 0\n"
        f"### output\noutput_dir: {out}\nlogging_steps: 1\nsave_steps: 500\nplot_loss: false\n"
        "overwrite_output_dir: true\nsave_only_model: false\nreport_to: none\n"
        "### train\nper_device_train_batch_size: 1\ngradient_accumulation_steps: 1\nlearning_rate: 1.0e-4\n"
        "num_train_epochs: 3.0\nlr_scheduler_type: cosine\nwarmup_ratio: 0.1\nddp_timeout: 180000000\n"
        "resume_from_checkpoint: null\noptim: adamw_torch\nweight_decay: 0.01\nsave_strategy: steps\n"
        "remove_unused_columns: false\nddp_find_unused_parameters: false\n"
        "### eval\nval_size: 1\nper_device_eval_batch_size: 1\nevaluation_strategy: steps\neval_steps: 2\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    command = ["finetune", "train", str(tmp_path / "sft.yaml"), "--max_steps", "4", "--do_train", "True"]
    result = runner.invoke(
        app, [*command, "--fp16", "False", "--plot_loss", "True", "--max_target_length", "8"]
    )
    assert result.exit_code == 0, result.output
    assert "trained 4 steps on 2 examples" in result.output and "eval loss" in result.output
    assert (out / "training_loss.png").is_file()
    saved = torch.load(out / "training_args.bin", weights_only=False)
    assert (saved.optim, saved.weight_decay, saved.warmup_steps, saved.lr_scheduler_type) == (
        "adamw_torch",
        0.01,
        0.1,
        "cosine",
    )
    assert (saved.eval_strategy, saved.eval_steps, saved.ddp_find_unused_parameters) == ("steps", 2, False)
    refused = runner.invoke(app, [*command, "--use_galore", "True", "--pref_ftx", "0.1"])
    assert refused.exit_code == 1
    assert "settings kbqa does not support: pref_ftx, use_galore" in " ".join(refused.output.split())
    no_eval = runner.invoke(app, [*command, "--val_size", "0", "--eval_strategy", "steps"])
    assert no_eval.exit_code == 1 and "needs eval data" in " ".join(no_eval.output.split())


def test_settings_transformers_refuses_are_clear_errors_and_bf16_trains_on_the_cpu(
    qwen: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    data = tmp_path / "data"
    data.mkdir()
    records = [{"instruction": q, "input": "", "output": a} for q, a in FAQ]
    (data / "faq.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps({"faq": {"file_name": "faq.json"}}), encoding="utf-8")
    base = [
        "finetune",
        "train",
        "--model_name_or_path",
        str(qwen),
        "--dataset",
        "faq",
        "--dataset_dir",
        str(data),
    ]
    base += ["--template", "chatml", "--max_steps", "2"]
    runner = CliRunner()

    def run(name: str, *flags: str):
        result = runner.invoke(app, [*base, "--output_dir", str(tmp_path / name), *flags])
        return result, " ".join(result.output.split())

    result, output = run("bf16", "--bf16", "True")  # transformers alone refuses bf16 without a GPU
    assert result.exit_code == 0, output
    assert "trained 2 steps" in output
    for flags, message in [
        (("--lr_scheduler_type", "reduce_lr_on_plateau"), "reduce_lr_on_plateau follows the eval loss"),
        (("--optim", "adamw_nonsense"), "adamw_nonsense"),
        (
            (
                "--save_strategy",
                "steps",
                "--load_best_model_at_end",
                "--val_size",
                "1",
                "--eval_strategy",
                "epoch",
            ),
            "the training settings do not work together",
        ),
    ]:
        result, output = run("bad", *flags)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (flags, output)
        assert message in output and "Traceback" not in output, (flags, output)


def test_function_call_data_trains_with_its_tools_in_the_prompt(qwen: Path, tmp_path: Path) -> None:
    from finetune.preprocess import IGNORE_INDEX, encode_example
    from finetune.tools import with_tools
    from llm.templates import template_for

    tools = json.dumps([{"name": "weather", "description": "查天气", "parameters": {"type": "object"}}])
    call = Conversation(
        (
            Message("user", "北京天气？"),
            Message("assistant", '{"name": "weather", "arguments": {"city": "北京"}}'),
            Message("observation", '{"temp": 20}'),
            Message("assistant", "北京 20 度。"),
        ),
        "glaive#0",
        tools,
        (1,),
    )
    result = train(arguments(qwen, tmp_path / "run", template="chatml", max_steps=2), [call, *CONVERSATIONS])
    assert result.examples == 4 and result.global_step == 2
    tokenizer = train_byte_level_bpe(tmp_path / "tok")
    example = encode_example(with_tools(call, "chatml"), template_for("chatml", tokenizer), tokenizer, 4096)
    learnt = tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])
    assert '<tool_call>\n{"name": "weather", "arguments": {"city": "北京"}}\n</tool_call>' in learnt
    assert "北京 20 度。" in learnt and "# Tools" not in learnt and '{"temp": 20}' not in learnt
    assert "# Tools" in tokenizer.decode(example["input_ids"])
    # llama3 has a tool format of its own in LLaMA-Factory, which kbqa does not write (default now has one:
    # tests/finetune/test_finetune_template_names.py).
    with pytest.raises(FinetuneError, match="holds function calls; train it with --template"):
        with_tools(call, "llama3")


def test_a_merged_model_carries_its_chat_template_for_servers_outside_kbqa(
    qwen: Path, tmp_path: Path
) -> None:
    import sentencepiece
    from chatglm3_checkpoints import (
        SPECIAL_TOKENS,
        TINY_CONFIG,
        random_chatglm_weights,
        train_sentencepiece,
        write_checkpoint,
    )
    from models import CORPUS
    from transformers import AutoTokenizer

    from llm.templates import TEMPLATES

    messages = [
        {"role": "system", "content": "你是HR助手。"},
        {"role": "user", "content": "年假有几天？"},
        {"role": "assistant", "content": "五天。"},
        {"role": "user", "content": "报销呢？"},
    ]
    sp_model = train_sentencepiece(tmp_path / "sp" / "tokenizer.model", CORPUS)
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
    config = TINY_CONFIG | {"padded_vocab_size": pieces + len(SPECIAL_TOKENS) + 7}
    checkpoint = write_checkpoint(tmp_path / "chatglm3", sp_model, random_chatglm_weights(config), config)
    adapter = train(arguments(checkpoint, tmp_path / "glm-lora", max_steps=1), CONVERSATIONS[:1]).output_dir
    merge_adapter(str(checkpoint), adapter, tmp_path / "glm-merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "glm-merged")  # plain transformers, as vLLM loads it
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == (
        "[gMASK]sop<|system|>\n你是HR助手。<|user|>\n年假有几天？<|assistant|>\n五天。<|user|>\n报销呢？<|assistant|>"
    )
    # The same special tokens in the same places as kbqa's own layout (text between them is encoded whole
    # there, segment by segment here, as ChatGLM3's build_chat_input does).
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    ours = TEMPLATES["chatglm3"].encode_prompt(
        tokenizer, [Message(m["role"], m["content"]) for m in messages]
    )
    specials = set(tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)))
    assert [i for i in ids if i in specials] == [i for i in ours if i in specials]

    # A template other than the tokenizer's own replaces it: here `default` over the tiny Qwen's ChatML.
    adapter = train(
        arguments(qwen, tmp_path / "qwen-lora", template="default", max_steps=1), CONVERSATIONS[:1]
    )
    merge_adapter(str(qwen), adapter.output_dir, tmp_path / "qwen-merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "qwen-merged")
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert (
        rendered
        == "System: 你是HR助手。\nHuman: 年假有几天？\nAssistant: 五天。\nHuman: 报销呢？\nAssistant:"
    )


def test_merge_saves_a_quantised_model_that_loads_back(trained, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from finetune.merge import quantization_method

    model, result = trained
    if torch.cuda.is_available():
        pytest.skip("the CPU path: torchao int8; CUDA takes bitsandbytes (tests/llm/test_gpu.py)")
    merged = merge_adapter(str(model), result.output_dir, tmp_path / "int8", qbits=8)
    assert merged.quantization == "torchao int8 weight-only"
    config = json.loads((tmp_path / "int8" / "config.json").read_text(encoding="utf-8"))
    assert config["quantization_config"]["quant_method"] == "torchao"
    full = merge_adapter(str(model), result.output_dir, tmp_path / "full")
    assert (tmp_path / "int8" / "model.safetensors").stat().st_size < (
        tmp_path / "full" / "model.safetensors"
    ).stat().st_size
    probe = torch.tensor([[1, 5, 9, 20, 33]])
    with torch.inference_mode():
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "int8")  # plain transformers
        reference = AutoModelForCausalLM.from_pretrained(full.out)(probe).logits
        assert any("Int8" in type(m.weight).__name__ for m in loaded.modules() if hasattr(m, "weight"))
        difference = (loaded(probe).logits - reference).abs().max().item()
    assert difference < 0.05 * reference.abs().max().item()
    served = chat(tmp_path / "int8")  # kbqa's transformers backend
    assert served.generate([Message("user", FAQ[0][0])], GREEDY).usage.completion_tokens > 0
    with pytest.raises(FinetuneError, match="--qbits 4 needs a CUDA GPU .* this machine has no CUDA GPU"):
        quantization_method(4)
    with pytest.raises(FinetuneError, match="--qbits must be 4 or 8"):
        quantization_method(3)


@pytest.mark.gpu
def test_merge_saves_a_bitsandbytes_4bit_model_on_cuda(trained, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")  # the `gpu` extra, as the other 4-bit tests (tests/llm/test_gpu.py)
    from transformers import AutoModelForCausalLM

    model, result = trained
    merged = merge_adapter(str(model), result.output_dir, tmp_path / "nf4", qbits=4)
    assert merged.quantization == "bitsandbytes NF4"
    config = json.loads((tmp_path / "nf4" / "config.json").read_text(encoding="utf-8"))
    assert config["quantization_config"]["quant_method"] == "bitsandbytes"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "nf4", device_map={"": 0})
    assert any(type(m).__name__ == "Linear4bit" for m in loaded.modules())
    served = TransformersChatModel(LLMConfig(backend="transformers", model=str(tmp_path / "nf4")))
    assert served.generate([Message("user", FAQ[0][0])], GREEDY).usage.completion_tokens > 0
