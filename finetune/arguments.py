"""The settings of a fine-tuning run, in LLaMA-Factory's (and transformers') argument names.

A YAML config holds the same keys as the flags; flags given on the command line override it. This module
imports nothing heavy, so the CLI builds its options from these fields at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from finetune.errors import FinetuneError

FINETUNING_TYPES = ("lora", "freeze", "full")
LOSS_PLOT = "training_loss.png"
# LLaMA-Factory keys that change nothing here: accepted in a YAML config and ignored.
IGNORED_KEYS = {"do_train", "stage", "overwrite_cache", "preprocessing_num_workers", "ddp_timeout"}


def _arg(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainArguments:
    """One supervised fine-tuning run, in LLaMA-Factory's (and transformers') argument names."""

    model_name_or_path: str = _arg("", "Hub id or local directory of the base model (ChatGLM3 is converted).")
    trust_remote_code: bool = _arg(False, "Run the model's own Python code from its directory.")
    template: str = _arg("auto", "Chat template: auto, chatglm3, glm4, chatml, llama3, default or hf.")
    dataset: str = _arg("", "Datasets from dataset_info.json, comma-separated; they are mixed.")
    dataset_dir: str = _arg("data", "Directory holding dataset_info.json and the data files.")
    eval_dataset: str = _arg("", "Datasets for the eval loss, comma-separated (or use --val_size).")
    val_size: float = _arg(
        0.0, "Training examples held out for the eval loss: a share below 1, else a count."
    )
    max_samples: int | None = _arg(None, "Read at most this many examples from each dataset.")
    strict: bool = _arg(False, "Fail on the first malformed record instead of skipping and counting it.")
    cutoff_len: int = _arg(2048, "Longest example in tokens; longer ones are cut, prompt and reply alike.")
    train_on_prompt: bool = _arg(False, "Learn the prompt tokens too, not only the replies.")
    mask_history: bool = _arg(False, "Learn only the last reply of a multi-turn conversation.")
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
    lr_scheduler_type: str = _arg("linear", "Learning-rate schedule: linear, cosine, constant, ...")
    warmup_steps: int = _arg(0, "Updates of linear warm-up.")
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

    def __post_init__(self) -> None:
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


def arguments_from(config: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainArguments:
    """Return TrainArguments from a YAML config's keys, overridden by the non-None `overrides` (CLI flags)."""
    known = {f.name: f for f in fields(TrainArguments)}
    values = {k: v for k, v in config.items() if k not in IGNORED_KEYS}
    if unknown := sorted(set(values) - set(known)):
        raise FinetuneError(f"unknown settings: {', '.join(unknown)}")
    values |= {k: v for k, v in (overrides or {}).items() if v is not None}
    return TrainArguments(**{name: _coerce(known[name], value) for name, value in values.items()})


def _coerce(spec: Any, value: Any) -> Any:
    """Return a config value as the field's type: YAML reads 5e-5 as a string, and a list of names as a list."""
    kind = str(spec.type).split(" ")[0]  # "int | None" -> "int"
    if value is None:
        return None
    if spec.name == "resume_from_checkpoint" and isinstance(value, bool):  # transformers' `true`
        return "auto" if value else None
    if isinstance(value, list) and kind == "str":
        return ",".join(str(item) for item in value)
    try:
        return {"bool": _boolean, "int": _integer, "float": float, "str": str}[kind](value)
    except (TypeError, ValueError) as error:
        raise FinetuneError(f"{spec.name}: expected {kind}, got {value!r}") from error


def _boolean(value: Any) -> bool:
    text = str(value).lower()
    if text not in ("true", "false"):
        raise ValueError(value)
    return text == "true"


def _integer(value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)):
        raise ValueError(value)
    return int(float(value))
