"""Supervised fine-tuning (LoRA, DoRA, rsLoRA, QLoRA, freeze, full) with transformers' Trainer and peft.

Arguments carry LLaMA-Factory's names, so its YAML files and flags carry over. The run saves what serving
needs beside the adapter (or the fully fine-tuned model): the tokenizer and `kbqa_adapter.json` naming the
chat template the examples were laid out with, which `TransformersChatModel` then uses under
`llm.template: auto`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.arguments import LOSS_PLOT, TrainArguments
from finetune.conversation import Conversation, Preference
from finetune.errors import FinetuneError
from finetune.loading import check_quantization, load_model
from finetune.preprocess import IGNORE_INDEX, encode_example, encode_preference, encode_text
from finetune.readers import Example
from finetune.stages import PREFERENCE_STAGES, check_trl, preference_trainer
from finetune.tools import with_tools
from finetune.trainable import trainable_model
from llm.adapter_info import write_adapter_info

logger = logging.getLogger(__name__)
# What TRL logs as the reward margin: DPO and ORPO "rewards/margins", the reward trainer "margin".
MARGIN_KEYS = ("rewards/margins", "margin")


@dataclass
class TrainResult:
    """What a run did: where it saved, how far it went, and its losses."""

    output_dir: Path
    template: str
    global_step: int
    train_loss: float  # the average over the run (transformers' train_loss)
    losses: list[tuple[int, float]]  # the logged training loss by step
    eval_loss: float | None
    examples: int
    skipped: int  # examples with nothing left to learn after truncation
    trainable_parameters: int
    loss_plot: Path | None
    margins: list[tuple[int, float]] = field(default_factory=list)  # dpo, orpo, rm: chosen minus rejected


def train(
    args: TrainArguments,
    conversations: Sequence[Example | str] | None = None,
    eval_conversations: Sequence[Example | str] | None = None,
) -> TrainResult:
    """Return the result of a run of `args.stage` on `conversations` (by default `args.dataset`, read).

    sft takes conversations; pt plain texts (or a conversation's first user turn); dpo, orpo and rm
    preference pairs.
    """
    from transformers import Trainer, TrainingArguments, set_seed

    from llm.templates import check_template_name, template_for

    try:
        check_template_name(args.template)
    except ValueError as error:
        raise FinetuneError(str(error)) from error
    _check_machine(args)
    output_dir = Path(args.output_dir)
    resume = _checkpoint_to_resume(args, output_dir)
    train_set, eval_set = _conversations(args, conversations, eval_conversations)
    set_seed(args.seed)
    model, tokenizer = load_model(
        args.model_name_or_path,
        _load_dtype(args),
        args.quantization_bit,
        args.trust_remote_code,
        reward=args.stage == "rm",
    )
    try:
        template = template_for(args.template, tokenizer)
    except ValueError as error:
        raise FinetuneError(str(error)) from error
    examples, skipped = _encode(train_set, template, tokenizer, args)
    eval_examples, _ = _encode(eval_set, template, tokenizer, args)
    if not examples:
        raise FinetuneError(f"no example has a reply left to learn within --cutoff_len {args.cutoff_len}")
    model = trainable_model(model, args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("%d examples (%d skipped), %d trainable parameters", len(examples), skipped, trainable)

    def config(kind: Any = TrainingArguments, **extra: Any) -> Any:
        return _training_arguments(args, bool(eval_examples), kind, extra)

    try:
        if args.stage in PREFERENCE_STAGES:
            trainer = preference_trainer(args, config, model, tokenizer, examples, eval_examples)
        else:
            trainer = Trainer(
                model=model,
                args=config(),
                train_dataset=examples,
                eval_dataset=eval_examples or None,
                data_collator=_Collator(_pad_id(tokenizer)),
                processing_class=tokenizer,
            )
        outcome = trainer.train(resume_from_checkpoint=resume)
    except ValueError as error:  # transformers' and TRL's checks of the user's settings
        raise FinetuneError(f"transformers refused the settings: {error}") from error
    trainer.save_model()
    trainer.save_state()
    trainer.save_metrics("train", outcome.metrics)
    eval_loss = None
    if eval_examples:
        metrics = trainer.evaluate()
        trainer.save_metrics("eval", metrics)
        eval_loss = metrics["eval_loss"]
    write_adapter_info(output_dir, template.name, args.model_name_or_path, args.finetuning_type, args.stage)
    _record_base_model(output_dir, args.model_name_or_path)
    history = trainer.state.log_history
    plot = None
    if args.plot_loss:
        from finetune.plot import plot_loss

        plot = plot_loss(history, output_dir / LOSS_PLOT, f"training loss of {output_dir.name}")
    return TrainResult(
        output_dir=output_dir,
        template=template.name,
        global_step=trainer.state.global_step,
        train_loss=outcome.training_loss,
        losses=[(entry["step"], entry["loss"]) for entry in history if "loss" in entry],
        eval_loss=eval_loss,
        examples=len(examples),
        skipped=skipped,
        trainable_parameters=trainable,
        loss_plot=plot,
        margins=[(entry["step"], entry[key]) for entry in history for key in MARGIN_KEYS if key in entry],
    )


def _record_base_model(output_dir: Path, base: str) -> None:
    """Name `base` in the adapter's adapter_config.json where peft left it null (a ChatGLM3 checkpoint is
    converted on load, so the model peft saw has no path), as PeftConfig-based tools read it from there."""
    path = output_dir / "adapter_config.json"
    if not path.is_file():  # freeze and full fine-tunes save a whole model
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if not config.get("base_model_name_or_path"):
        config["base_model_name_or_path"] = base
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _check_machine(args: TrainArguments) -> None:
    """Raise FinetuneError now, before any loading, for what this run needs and this machine lacks."""
    import torch

    if not args.model_name_or_path or not args.output_dir:
        raise FinetuneError("--model_name_or_path and --output_dir are required")
    check_quantization(args.quantization_bit)
    if args.stage in PREFERENCE_STAGES:
        check_trl()
    if args.fp16 and not torch.cuda.is_available():
        raise FinetuneError("--fp16 needs a CUDA GPU; use --bf16 or full precision on the CPU")
    if args.plot_loss and importlib.util.find_spec("PIL") is None:
        raise FinetuneError(
            "--plot_loss draws with Pillow, which is not installed: pip install 'kbqa[finetune]'"
        )


def _load_dtype(args: TrainArguments) -> Any:
    """Return the base model's dtype: 16-bit under LoRA with --bf16/--fp16, else float32 (AMP casts)."""
    import torch

    if args.finetuning_type == "lora" and (args.bf16 or args.fp16):
        return torch.bfloat16 if args.bf16 else torch.float16
    return torch.float32


def _training_arguments(args: TrainArguments, has_eval: bool, kind: Any, extra: dict[str, Any]) -> Any:
    """Return the run's arguments as `kind` (transformers' TrainingArguments or a TRL config extending it):
    kbqa's fields, `extra` (the stage's), then the other keys given, as given."""
    import torch

    passed = dict(args.training_arguments)
    if args.lr_scheduler_type == "reduce_lr_on_plateau" and not has_eval:
        raise FinetuneError(
            "--lr_scheduler_type reduce_lr_on_plateau follows the eval loss: give --val_size or --eval_dataset"
        )
    eval_strategy = passed.pop("eval_strategy", None)
    if eval_strategy is not None and str(eval_strategy) != "no" and not has_eval:
        raise FinetuneError(
            f"--eval_strategy {eval_strategy} needs eval data: give --val_size or --eval_dataset"
        )
    settings = dict(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_ratio if args.warmup_ratio is not None else args.warmup_steps,
        max_grad_norm=args.max_grad_norm,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        eval_strategy=(eval_strategy or "steps") if has_eval else "no",
        eval_steps=args.eval_steps,
        bf16=args.bf16,
        fp16=args.fp16,
        seed=args.seed,
        report_to=args.report_to,
        remove_unused_columns=False,  # the examples are plain dicts of exactly the model's inputs
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # else transformers refuses --bf16 on a CPU-only machine
        **_checkpointing(args, kind),
    )
    try:
        return kind(**(settings | extra | passed))
    except (ValueError, TypeError, ImportError) as error:  # the user's settings, in transformers' words
        raise FinetuneError(f"the training settings do not work together: {error}") from error


def _checkpointing(args: TrainArguments, training_arguments: Any) -> dict[str, Any]:
    """Return the Trainer's activation checkpointing settings (QLoRA's are set by peft on the model).

    Off unless asked for, also where TRL's configs default it on.
    """
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing, keeping the old name a while.
    fields = training_arguments.__dataclass_fields__
    names = [name for name in ("activation_checkpointing", "gradient_checkpointing") if name in fields]
    names = names[:1] + [name for name in names[1:] if fields[name].default is True]  # TRL's default
    on = args.gradient_checkpointing and not args.quantization_bit
    settings: dict[str, Any] = {name: on for name in names}
    if on:
        settings[f"{names[0]}_kwargs"] = {"use_reentrant": False}
    return settings


def _checkpoint_to_resume(args: TrainArguments, output_dir: Path) -> str | None:
    """Return the checkpoint to resume from, refusing to train over an earlier run unasked."""
    from transformers.trainer_utils import get_last_checkpoint

    wanted = args.resume_from_checkpoint
    if wanted and wanted.lower() in ("auto", "true", "last"):
        last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if last is None:
            raise FinetuneError(
                f"--resume_from_checkpoint {wanted}: {output_dir} holds no checkpoint-N directory"
            )
        return last
    if wanted:
        if not Path(wanted).is_dir():
            raise FinetuneError(f"--resume_from_checkpoint {wanted}: no such directory")
        return wanted
    if output_dir.is_dir() and any(output_dir.iterdir()) and not args.overwrite_output_dir:
        raise FinetuneError(
            f"{output_dir} is not empty; pass --resume_from_checkpoint auto to continue its run, "
            "--overwrite_output_dir to write over it, or choose another --output_dir"
        )
    return None


def _conversations(
    args: TrainArguments, given: Sequence[Example | str] | None, given_eval: Sequence[Example | str] | None
) -> tuple[list[Example | str], list[Example | str]]:
    """Return (training, eval) examples: given, or read from the registry and split by --val_size."""
    if given is None:
        if not args.dataset:
            raise FinetuneError("--dataset is required")
        given = _read(args.dataset, args)
    if given_eval is None and args.eval_dataset:
        given_eval = _read(args.eval_dataset, args)
    if given_eval is not None or not args.val_size:
        return list(given), list(given_eval or [])
    shuffled = list(given)
    random.Random(args.seed).shuffle(shuffled)
    held = int(args.val_size) if args.val_size >= 1 else math.ceil(len(shuffled) * args.val_size)
    if held >= len(shuffled):
        raise FinetuneError(f"--val_size {args.val_size} leaves no training example of {len(shuffled)}")
    return shuffled[held:], shuffled[:held]


def _read(names: str, args: TrainArguments) -> list[Example | str]:
    """Return the stage's data of the named datasets: conversations, texts (pt) or preference pairs."""
    from finetune.registry import load_stage_data

    found, report = load_stage_data(
        args.stage, [names], Path(args.dataset_dir), args.strict, args.max_samples, args.seed
    )
    for skipped in report.skipped:
        logger.warning("skipped %s", skipped)
    logger.info("read %d examples from %s (%d records skipped)", len(found), names, len(report.skipped))
    return list(found)


def _encode(
    items: list[Example | str], template: Any, tokenizer: Any, args: TrainArguments
) -> tuple[list[dict[str, list[int]]], int]:
    """Return (encoded examples, how many had nothing left to learn after truncation and were dropped)."""
    examples = []
    for item in items:
        if args.stage == "pt":
            text = item if isinstance(item, str) else _first_user_turn(item)
            examples.append(encode_text(text, tokenizer, args.cutoff_len))
            continue
        if args.stage in PREFERENCE_STAGES:
            if not isinstance(item, Preference):
                raise FinetuneError(
                    f"--stage {args.stage} trains on preference pairs (chosen and rejected replies)"
                )
            pair = encode_preference(item, template, tokenizer, args.cutoff_len)
            if pair["chosen_ids"] and pair["rejected_ids"]:
                examples.append(pair)
            continue
        if not isinstance(item, Conversation):
            raise FinetuneError(
                f"--stage {args.stage} trains on conversations, not preference pairs or texts"
            )
        example = encode_example(
            with_tools(item, template.name),
            template,
            tokenizer,
            args.cutoff_len,
            args.train_on_prompt,
            args.mask_history,
            (args.max_source_length, args.max_target_length),
        )
        if any(label != IGNORE_INDEX for label in example["labels"]):
            examples.append(example)
    return examples, len(items) - len(examples)


def _first_user_turn(example: Example) -> str:
    """Return the text of a conversation's first user message (pt's prompt column)."""
    messages = example.messages if isinstance(example, Conversation) else example.prompt
    return next(m.content for m in messages if m.role == "user")


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


class _Collator:
    """Pads a batch on the right: ids with the pad id, labels with -100, attention with 0."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        longest = max(len(example["input_ids"]) for example in batch)
        padding = {"input_ids": self.pad_id, "labels": IGNORE_INDEX, "attention_mask": 0}
        return {
            key: torch.tensor([example[key] + [fill] * (longest - len(example[key])) for example in batch])
            for key, fill in padding.items()
        }
