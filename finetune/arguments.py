"""The settings of a fine-tuning run, in LLaMA-Factory's (and transformers') argument names.

A YAML (or JSON) config holds the same keys as the flags; flags given on the command line override it.
Every name is either honoured or refused by name, never dropped: TrainArguments' fields, a few aliases
(transformers' `evaluation_strategy`, `warmup_ratio`), keys that change only speed or bookkeeping here,
and any other transformers `TrainingArguments` key, passed to the Trainer as given. A name LLaMA-Factory
documents that kbqa does not honour is an error saying so. This module imports nothing heavy at import
time, so the CLI builds its options from these fields at start-up.
"""

from __future__ import annotations

import json
import logging
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from finetune.argument_names import LLAMAFACTORY_NAMES
from finetune.errors import FinetuneError

logger = logging.getLogger(__name__)

FINETUNING_TYPES = ("lora", "freeze", "full")
STAGES = ("sft", "pt", "dpo", "orpo", "rm")
LOSS_PLOT = "training_loss.png"
# Keys that change only speed or caching here (kbqa tokenises in one process, in memory): accepted.
NO_EFFECT_KEYS = {
    "overwrite_cache": "kbqa keeps no tokenised cache",
    "preprocessing_num_workers": "kbqa tokenises in one process",
    "preprocessing_batch_size": "kbqa tokenises in one process",
    "flash_attn": "the attention kernel changes speed, not results",
    "remove_unused_columns": "kbqa's examples hold only the model's inputs",
}
# transformers' older or other names of a key.
ALIASES = {"evaluation_strategy": "eval_strategy", "activation_checkpointing": "gradient_checkpointing"}
# transformers TrainingArguments keys kbqa sets from its own fields, or cannot carry out.
REFUSED_TRAINING_KEYS = {
    "do_predict": "kbqa finetune eval scores predictions",
    "deepspeed": "kbqa trains in one process, without DeepSpeed",
    "fsdp": "kbqa trains in one process, without FSDP",
    "fsdp_config": "kbqa trains in one process, without FSDP",
    "push_to_hub": "kbqa works offline",
    "hub_model_id": "kbqa works offline",
    "output_dir": "",
}


def _arg(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainArguments:
    """One supervised fine-tuning run, in LLaMA-Factory's (and transformers') argument names."""

    stage: str = _arg(
        "sft", "sft (supervised), pt (plain text), dpo or orpo (preference pairs), rm (reward model)."
    )
    model_name_or_path: str = _arg("", "Hub id or local directory of the base model (ChatGLM3 is converted).")
    trust_remote_code: bool = _arg(False, "Run the model's own Python code from its directory.")
    template: str = _arg(
        "auto", "Chat template: auto, chatglm3, glm4, chatml, qwen, llama3, llama2, default or hf."
    )
    dataset: str = _arg("", "Datasets from dataset_info.json, comma-separated; they are mixed.")
    dataset_dir: str = _arg("data", "Directory holding dataset_info.json and the data files.")
    eval_dataset: str = _arg("", "Datasets for the eval loss, comma-separated (or use --val_size).")
    val_size: float = _arg(
        0.0, "Training examples held out for the eval loss: a share below 1, else a count."
    )
    max_samples: int | None = _arg(None, "Read at most this many examples from each dataset.")
    strict: bool = _arg(False, "Fail on the first malformed record instead of skipping and counting it.")
    cutoff_len: int = _arg(2048, "Longest example in tokens; longer ones are cut, prompt and reply alike.")
    max_source_length: int | None = _arg(
        None, "Cut each prompt to this many tokens first (DB-GPT-Hub's source cut-off)."
    )
    max_target_length: int | None = _arg(
        None, "Cut each reply to this many tokens first (DB-GPT-Hub's target cut-off)."
    )
    train_on_prompt: bool = _arg(False, "Learn the prompt tokens too, not only the replies.")
    mask_history: bool = _arg(False, "Learn only the last reply of a multi-turn conversation.")
    pref_beta: float = _arg(0.1, "dpo, orpo: the beta of the preference loss.")
    pref_loss: str = _arg("sigmoid", "dpo: TRL's loss type (sigmoid, ipo, hinge, ...); orpo runs ORPO.")
    finetuning_type: str = _arg("lora", "lora, freeze (the last layers) or full.")
    lora_rank: int = _arg(8, "LoRA rank.")
    lora_alpha: int | None = _arg(None, "LoRA scale numerator; None: twice the rank.")
    lora_dropout: float = _arg(0.0, "Dropout on the LoRA path.")
    lora_target: str = _arg(
        "all", "Layers that get LoRA: all (every linear but the output) or names, comma-separated."
    )
    use_dora: bool = _arg(False, "Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = _arg(False, "Rank-stabilised LoRA scaling (alpha / sqrt(rank)).")
    freeze_trainable_layers: int = _arg(2, "freeze: train the last N layers (the first N when negative).")
    quantization_bit: int | None = _arg(None, "Load the base in 4 (QLoRA, NF4) or 8 bits; needs CUDA.")
    output_dir: str = _arg("", "Where the adapter (or model), checkpoints, logs and the loss plot go.")
    overwrite_output_dir: bool = _arg(False, "Train into a non-empty output_dir, writing over its files.")
    resume_from_checkpoint: str | None = _arg(
        None, "A checkpoint directory, or auto: the last in output_dir."
    )
    per_device_train_batch_size: int = _arg(8, "Examples per step on each device.")
    per_device_eval_batch_size: int = _arg(8, "Examples per eval step on each device.")
    gradient_accumulation_steps: int = _arg(1, "Steps whose gradients add up before an update.")
    learning_rate: float = _arg(5e-5, "Peak learning rate.")
    num_train_epochs: float = _arg(3.0, "Passes over the training data.")
    max_steps: int = _arg(-1, "Stop after this many updates (overrides num_train_epochs when positive).")
    lr_scheduler_type: str = _arg("cosine", "Learning-rate schedule: cosine, linear, constant, ...")
    warmup_steps: float = _arg(0.0, "Updates of linear warm-up; below 1, a share of all updates.")
    warmup_ratio: float | None = _arg(
        None, "Share of all updates spent warming up (instead of warmup_steps)."
    )
    max_grad_norm: float = _arg(1.0, "Gradient clipping norm.")
    logging_steps: int = _arg(10, "Log the loss every N updates.")
    save_steps: int = _arg(500, "Save a checkpoint every N updates.")
    save_total_limit: int | None = _arg(None, "Keep at most this many checkpoints.")
    eval_steps: int | None = _arg(None, "Eval loss every N updates; None: every logging_steps.")
    bf16: bool = _arg(False, "bfloat16 mixed precision (and a bfloat16 base under LoRA).")
    fp16: bool = _arg(False, "float16 mixed precision (and a float16 base under LoRA); needs CUDA.")
    gradient_checkpointing: bool = _arg(False, "Recompute activations in the backward pass to save memory.")
    plot_loss: bool = _arg(False, f"Draw the loss curve into output_dir/{LOSS_PLOT}.")
    seed: int = _arg(42, "Random seed of initialisation, shuffling and the validation split.")
    report_to: str = _arg("none", "Where transformers reports metrics: none, tensorboard, wandb, ...")
    # Any other transformers TrainingArguments key (optim, weight_decay, save_strategy, ...), as given.
    training_arguments: dict[str, Any] = field(default_factory=dict, metadata={"help": ""})

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise FinetuneError(f"--stage {self.stage} is not supported; kbqa trains {', '.join(STAGES)}")
        if self.stage == "dpo" and self.pref_loss == "orpo":  # LLaMA-Factory's way of asking for ORPO
            self.stage = "orpo"
        if self.finetuning_type not in FINETUNING_TYPES:
            raise FinetuneError(f"--finetuning_type must be one of {', '.join(FINETUNING_TYPES)}")
        if self.quantization_bit is not None and self.finetuning_type != "lora":
            raise FinetuneError(
                "--quantization_bit trains LoRA adapters only (QLoRA); use --finetuning_type lora"
            )
        if self.bf16 and self.fp16:
            raise FinetuneError("choose one of --bf16 and --fp16")
        for name in ("cutoff_len", "lora_rank", "per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise FinetuneError(f"--{name} must be at least 1")
        if self.finetuning_type == "freeze" and self.freeze_trainable_layers == 0:
            raise FinetuneError("--freeze_trainable_layers must not be 0 (no layer would learn)")
        if self.val_size < 0:
            raise FinetuneError("--val_size must not be negative")
        if self.warmup_ratio is not None:
            if self.warmup_steps:
                raise FinetuneError("give one of --warmup_steps and --warmup_ratio")
            if not 0 <= self.warmup_ratio < 1:
                raise FinetuneError("--warmup_ratio must lie in [0, 1)")
        for name in ("max_source_length", "max_target_length"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise FinetuneError(f"--{name} must be at least 1")


def arguments_from(config: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainArguments:
    """Return TrainArguments from a config's keys, overridden by the non-None `overrides` (CLI flags).

    FinetuneError names every key that is unknown, or documented by LLaMA-Factory but not honoured here.
    """
    known = {f.name: f for f in fields(TrainArguments) if f.name != "training_arguments"}
    settings = dict(config) | {k: v for k, v in (overrides or {}).items() if v is not None}
    values: dict[str, Any] = {}
    passed: dict[str, Any] = {}
    refused, unknown = [], []
    hf_fields = None
    for key, value in settings.items():
        key = ALIASES.get(key, key)
        if key in known:
            values[key] = _coerce(known[key], value)
        elif key == "do_train":
            if not _boolean(value):
                raise FinetuneError("--do_train false: `kbqa finetune train` always trains")
        elif key in NO_EFFECT_KEYS:
            logger.warning("--%s is accepted and has no effect: %s", key, NO_EFFECT_KEYS[key])
        elif key in REFUSED_TRAINING_KEYS:
            refused.append(f"{key} ({REFUSED_TRAINING_KEYS[key] or 'kbqa sets it'})")
        elif key in (hf_fields := hf_fields or _training_fields()):
            passed[key] = _coerce_training(key, hf_fields[key], value)
        elif key in LLAMAFACTORY_NAMES:
            refused.append(key)
        else:
            unknown.append(key)
    problems = []
    if unknown:
        problems.append(f"unknown settings: {', '.join(sorted(unknown))}")
    if refused:
        problems.append(f"settings kbqa does not support: {', '.join(sorted(refused))}")
    if problems:
        raise FinetuneError("; ".join(problems))
    return TrainArguments(**values, training_arguments=passed)


def parse_command_line(args: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Return (the config file, the settings) of a `llamafactory-cli train`-style command line.

    `--name value`, `--name=value`, and a bare `--name` for true (so `--fp16` and `--fp16 True` agree);
    `--no_name` for false; dashes in names read as underscores; the config file is the bare .yaml, .yml or
    .json argument, or `--config`. Values stay text: `arguments_from` gives them their field's type.
    """
    config, settings = None, {}
    index = 0
    while index < len(args):
        token = args[index]
        index += 1
        if not token.startswith("--"):
            if config is None and token.lower().endswith((".yaml", ".yml", ".json")):
                config = token
                continue
            raise FinetuneError(f"unexpected argument {token!r}; settings are given as --name value")
        name, has_value, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if not has_value:
            following = args[index] if index < len(args) else "--"
            if following.startswith("--") or (name in _BOOLEAN_FIELDS and following.lower() not in _BOOLEANS):
                value = "true"  # a bare boolean flag
            else:
                value = following
                index += 1
        if name.startswith("no_") and name[3:] in _BOOLEAN_FIELDS and not has_value and value == "true":
            name, value = name[3:], "false"
        if name == "config":
            config = value
        else:
            settings[name] = value
    return config, settings


def _coerce(spec: Any, value: Any) -> Any:
    """Return a config value as the field's type: YAML reads 5e-5 as a string, and a list of names as a list."""
    kind = str(spec.type).split(" ")[0]  # "int | None" -> "int"
    if value is None or (
        isinstance(value, str) and value.lower() in ("none", "null") and "None" in spec.type
    ):
        return None
    if spec.name == "resume_from_checkpoint" and isinstance(value, bool):  # transformers' `true`
        return "auto" if value else None
    if isinstance(value, list) and kind == "str":
        return ",".join(str(item) for item in value)
    try:
        return {"bool": _boolean, "int": _integer, "float": float, "str": str}[kind](value)
    except (TypeError, ValueError) as error:
        raise FinetuneError(f"{spec.name}: expected {kind}, got {value!r}") from error


def _training_fields() -> dict[str, Any]:
    """Return transformers TrainingArguments' fields by name, with their types."""
    from transformers import TrainingArguments

    return {f.name: f.type for f in fields(TrainingArguments) if f.init}


def _coerce_training(name: str, kind: Any, value: Any) -> Any:
    """Return a TrainingArguments value given as text (from the command line) as its field's type."""
    if not isinstance(value, str):
        return value
    kinds = typing.get_args(kind) or (kind,)
    if value.lower() in ("none", "null") and type(None) in kinds:
        return None
    for candidate, convert in ((bool, _boolean), (int, _integer), (float, float), (dict, json.loads)):
        if candidate in kinds:
            try:
                return convert(value)
            except (TypeError, ValueError):
                continue
    if str in kinds or any(isinstance(k, type) and issubclass(k, str) for k in kinds):
        return value
    raise FinetuneError(f"{name}: cannot read {value!r} as {kind}")


def _boolean(value: Any) -> bool:
    text = str(value).lower()
    if text not in ("true", "false"):
        raise ValueError(value)
    return text == "true"


def _integer(value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)):
        raise ValueError(value)
    return int(float(value))


_BOOLEAN_FIELDS = {f.name for f in fields(TrainArguments) if str(f.type) == "bool"}
_BOOLEANS = ("true", "false")
