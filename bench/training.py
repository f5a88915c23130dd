"""Fine-tuning benchmark: kbqa's trainer against the plain transformers Trainer + peft script a user writes.

Both sides run in one process on the same model directory, the same conversations and the same settings
(LoRA rank, alpha and dropout on every linear layer but the output head, batch size, epochs, learning
rate and its linear schedule, cutoff length, seed, precision), each loading the model afresh:

- kbqa: `finetune.train.train(TrainArguments(...), conversations)`: the model loaded as the llm module
  serves it, each conversation laid out by the chat template (`finetune.preprocess`: the prompt masked with
  -100, cut to cutoff_len turn by turn), peft LoRA, transformers' Trainer with kbqa's collator, then the
  adapter, the tokenizer, the trainer state and `kbqa_adapter.json` saved.
- plain: `AutoTokenizer`/`AutoModelForCausalLM.from_pretrained`, each conversation tokenised with
  `tokenizer.apply_chat_template` (the prompt, rendered with `add_generation_prompt=True`, masked with -100,
  the whole cut to cutoff_len), a list of dicts as the dataset (no `datasets` library),
  `get_peft_model(LoraConfig(target_modules="all-linear"))`, `DataCollatorForSeq2Seq`, `Trainer`,
  `trainer.save_model()`.

With the `auto` template (the tokenizer's own chat template) both sides learn the same tokens, and with the
same seed they start from the same LoRA weights and see the batches in the same order, so their losses
should agree; the table shows both, and the tokens each learnt, as that check. Figures: the Trainer's own
train samples/s (its training loop: forward, backward, optimizer), the whole call's wall seconds (load,
tokenise, train, save), and peak memory: on a GPU `torch.cuda.max_memory_allocated` during the side; on the
CPU the growth of the process's peak RSS (getrusage), plus the Python-heap peak (tracemalloc) of a
second, untimed run of each side, since tracemalloc slows Python code. A warm-up run of each side (a few
steps) comes first; then `--repeats` timed runs each, sides alternating who goes first; medians.

A DPO row pair follows (`--stages sft,dpo`, the default): kbqa's `train(TrainArguments(stage="dpo"), pairs)`
against the plain TRL script, `DPOTrainer(model, args=DPOConfig(...), train_dataset=Dataset.from_list(
[{"prompt", "chosen", "rejected"} as chat messages]), peft_config=LoraConfig(...))`, which lays the pairs out
with the tokenizer's chat template itself. The pairs are the conversations, their reply chosen and another
conversation's reply rejected; both sides use TRL's sigmoid loss with beta 0.1 and the same LoRA settings.

Models: `--model DIR` for a local chat model (with a chat template, which the plain side needs). Otherwise
a random Qwen2 is built with the tests' tiny ChatML tokenizer: `--size tiny` (default; the tests' 2-layer
model, where per-step overhead dominates) or `--size small` (8 layers, hidden 512, about 20M parameters).
Data: `--dataset NAMES --dataset_dir DIR` reads registered datasets; by default `--examples` single-turn
question-answer conversations are made from the tests' corpus. Run from the repository root:

    .venv/bin/python bench/training.py
    .venv/bin/python bench/training.py --size small --examples 128 --repeats 3
    .venv/bin/python bench/training.py --model /models/qwen2.5-0.5b-instruct --bf16 --dataset my_sft
"""

from __future__ import annotations

import sys
from pathlib import Path

# ruff: noqa: E402
REPO_ROOT = Path(__file__).resolve().parent.parent
# The random models are built with the test suite's builders (tests/ is no package), not a copy of them.
sys.path.insert(0, str(REPO_ROOT / "tests"))

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from _common import aligned_table
from models import CORPUS, build_tiny_causal_lm, train_byte_level_bpe

from finetune.arguments import TrainArguments
from finetune.conversation import Conversation, Preference
from finetune.preprocess import IGNORE_INDEX, encode_example, encode_preference
from finetune.train import train
from llm.templates import template_for
from llm.types import Message

SIDES = ("plain", "kbqa")
MIB = 1024 * 1024
SMALL_SHAPE = {
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
}
QUESTIONS = ["这段资料讲了什么？", "请根据资料回答。", "What does it say?", "资料中的要点是什么？"]


@dataclass(frozen=True)
class Settings:
    """What both sides train with."""

    template: str
    lora_rank: int
    lora_alpha: int
    cutoff_len: int
    batch_size: int
    epochs: float
    learning_rate: float
    logging_steps: int
    bf16: bool
    seed: int


@dataclass(frozen=True)
class Run:
    """One side's training run: what it learnt and what it cost."""

    side: str
    examples: int
    label_tokens: int  # tokens whose label is not -100, summed over the examples of one epoch
    steps: int
    train_loss: float
    train_samples_per_second: float  # the Trainer's own figure, over its training loop
    total_seconds: float  # the whole call: load, tokenise, train, save
    rss_increase_mib: float
    gpu_peak_mib: float | None = None
    python_peak_mib: float = float("nan")


def build_model(directory: Path, size: str) -> Path:
    """Return `directory` holding a random Qwen2 chat model of `size` (tiny or small) with a ChatML tokenizer."""
    if size == "tiny":
        return build_tiny_causal_lm(directory)
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    tokenizer = train_byte_level_bpe(directory)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        **SMALL_SHAPE,
    )
    Qwen2ForCausalLM(config).save_pretrained(directory)
    return directory


def corpus_conversations(count: int) -> list[Conversation]:
    """Return `count` single-turn conversations: 1-3 corpus sentences and a question, one sentence as reply."""
    conversations = []
    for i in range(count):
        context = [CORPUS[(i + j) % len(CORPUS)] for j in range(1 + i % 3)]
        question = QUESTIONS[i % len(QUESTIONS)]
        messages = (
            Message("system", "你是知识库助手。"),
            Message("user", "资料：" + "".join(context) + "\n" + question),
            Message("assistant", context[-1]),
        )
        conversations.append(Conversation(messages, f"corpus#{i}"))
    return conversations


# --- the two sides ----------------------------------------------------------------------------------------


def run_kbqa(model_dir: Path, conversations: list[Conversation], settings: Settings, out: Path) -> Run:
    """Train with kbqa's trainer into `out`; return the run's figures (memory left for the caller)."""
    args = TrainArguments(
        model_name_or_path=str(model_dir),
        template=settings.template,
        output_dir=str(out),
        finetuning_type="lora",
        lora_rank=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=0.0,
        lora_target="all",
        cutoff_len=settings.cutoff_len,
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        logging_steps=settings.logging_steps,
        save_steps=10**9,  # no checkpoints, as on the plain side
        bf16=settings.bf16,
        seed=settings.seed,
    )
    started = time.perf_counter()
    result = train(args, conversations)
    total = time.perf_counter() - started
    metrics = json.loads((out / "train_results.json").read_text(encoding="utf-8"))
    return Run(
        "kbqa",
        result.examples,
        _kbqa_label_tokens(model_dir, conversations, settings),
        result.global_step,
        result.train_loss,
        metrics["train_samples_per_second"],
        total,
        0.0,
    )


def _kbqa_label_tokens(model_dir: Path, conversations: list[Conversation], settings: Settings) -> int:
    """Return the learnt tokens of kbqa's encoding of `conversations`, outside the timed call."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = template_for(settings.template, tokenizer)
    encoded = [encode_example(c, template, tokenizer, settings.cutoff_len) for c in conversations]
    return sum(label != IGNORE_INDEX for example in encoded for label in example["labels"])


def plain_encode(tokenizer: Any, conversation: Conversation, cutoff_len: int) -> dict[str, list[int]]:
    """Return input ids, attention mask and labels as the usual SFT script builds them with the chat template."""
    messages = [{"role": m.role, "content": m.content} for m in conversation.messages]
    prompt = tokenizer.apply_chat_template(
        messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    input_ids = list(full)[:cutoff_len]
    labels = ([IGNORE_INDEX] * len(prompt) + list(full)[len(prompt) :])[:cutoff_len]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def run_plain(model_dir: Path, conversations: list[Conversation], settings: Settings, out: Path) -> Run:
    """Train the way a hand-written transformers + peft script does, into `out`; return the run's figures."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    started = time.perf_counter()
    set_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.bfloat16 if settings.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    dataset = [plain_encode(tokenizer, c, settings.cutoff_len) for c in conversations]
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
    )
    model = get_peft_model(model, lora)
    training = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        logging_steps=settings.logging_steps,
        save_strategy="no",
        bf16=settings.bf16,
        seed=settings.seed,
        report_to="none",
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    trainer = Trainer(
        model=model, args=training, train_dataset=dataset, data_collator=collator, processing_class=tokenizer
    )
    outcome = trainer.train()
    trainer.save_model()
    total = time.perf_counter() - started
    return Run(
        "plain",
        len(dataset),
        sum(label != IGNORE_INDEX for example in dataset for label in example["labels"]),
        trainer.state.global_step,
        outcome.training_loss,
        outcome.metrics["train_samples_per_second"],
        total,
        0.0,
    )


def preference_pairs(conversations: list[Conversation]) -> list[Preference]:
    """Return one pair per conversation: its reply chosen, the next conversation's reply rejected."""
    return [
        Preference(
            c.messages[:-1],
            c.messages[-1].content,
            conversations[(i + 1) % len(conversations)].messages[-1].content,
        )
        for i, c in enumerate(conversations)
    ]


def run_kbqa_dpo(model_dir: Path, conversations: list[Conversation], settings: Settings, out: Path) -> Run:
    """Train DPO with kbqa's trainer into `out`; return the run's figures."""
    pairs = preference_pairs(conversations)
    args = TrainArguments(
        model_name_or_path=str(model_dir),
        stage="dpo",
        pref_beta=0.1,
        template=settings.template,
        output_dir=str(out),
        lora_rank=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_target="all",
        cutoff_len=settings.cutoff_len,
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        logging_steps=settings.logging_steps,
        save_steps=10**9,
        bf16=settings.bf16,
        seed=settings.seed,
    )
    started = time.perf_counter()
    result = train(args, pairs)
    total = time.perf_counter() - started
    metrics = json.loads((out / "train_results.json").read_text(encoding="utf-8"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = template_for(settings.template, tokenizer)
    encoded = [encode_preference(pair, template, tokenizer, settings.cutoff_len) for pair in pairs]
    tokens = sum(len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in encoded)
    return Run(
        "kbqa-dpo",
        result.examples,
        tokens,
        result.global_step,
        result.train_loss,
        metrics["train_samples_per_second"],
        total,
        0.0,
    )


def run_plain_dpo(model_dir: Path, conversations: list[Conversation], settings: Settings, out: Path) -> Run:
    """Train DPO the way TRL's documentation does, into `out`; return the run's figures."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    def chat(messages: Sequence[Message]) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in messages]

    started = time.perf_counter()
    set_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.bfloat16 if settings.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    rows = [
        {
            "prompt": chat(pair.prompt),
            "chosen": chat([Message("assistant", pair.chosen)]),
            "rejected": chat([Message("assistant", pair.rejected)]),
        }
        for pair in preference_pairs(conversations)
    ]
    config = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        logging_steps=settings.logging_steps,
        save_strategy="no",
        bf16=settings.bf16,
        seed=settings.seed,
        report_to="none",
        beta=0.1,
        max_length=settings.cutoff_len,
        gradient_checkpointing=False,
        activation_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
    )
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
    )
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora,
    )
    outcome = trainer.train()
    trainer.save_model()
    total = time.perf_counter() - started
    tokens = sum(len(row["chosen_ids"]) + len(row["rejected_ids"]) for row in trainer.train_dataset)
    return Run(
        "plain-dpo",
        len(rows),
        tokens,
        trainer.state.global_step,
        outcome.training_loss,
        outcome.metrics["train_samples_per_second"],
        total,
        0.0,
    )


RUNNERS: dict[str, Callable[[Path, list[Conversation], Settings, Path], Run]] = {
    "plain": run_plain,
    "kbqa": run_kbqa,
    "plain-dpo": run_plain_dpo,
    "kbqa-dpo": run_kbqa_dpo,
}
STAGE_SIDES = {"sft": ("plain", "kbqa"), "dpo": ("plain-dpo", "kbqa-dpo")}


# --- measuring --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null meanwhile, so only the report reaches stdout.

    The Trainer prints its loss dicts, and the tokenizer trainer (Rust) its progress, straight to it.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def max_rss_mib() -> float:
    """Return the process's peak resident set size so far, in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measured(
    side: str, model_dir: Path, conversations: list[Conversation], settings: Settings, out: Path
) -> Run:
    """Return one run of `side` with its peak-memory figures; the Trainer's printed logs are swallowed."""
    import torch

    gc.collect()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rss_before = max_rss_mib()
    with quiet_stdout():
        run = RUNNERS[side](model_dir, conversations, settings, out)
    gpu_peak = torch.cuda.max_memory_allocated() / MIB if cuda else None
    return replace(run, rss_increase_mib=max_rss_mib() - rss_before, gpu_peak_mib=gpu_peak)


def python_heap_peak_mib(
    side: str, model_dir: Path, conversations: list[Conversation], settings: Settings, out: Path
) -> float:
    """Return the peak Python-heap MiB (tracemalloc) of one untimed run of `side`."""
    gc.collect()
    tracemalloc.start()
    try:
        with quiet_stdout():
            RUNNERS[side](model_dir, conversations, settings, out)
        return tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()


def measure(
    model_dir: Path,
    conversations: list[Conversation],
    settings: Settings,
    repeats: int,
    work: Path,
    sides: tuple[str, ...] = SIDES,
) -> dict[str, list[Run]]:
    """Warm both sides up, run each `repeats` times (alternating who goes first), then the heap pass."""
    warm = replace(settings, epochs=1.0)
    for side in sides:
        measured(side, model_dir, conversations[: 2 * settings.batch_size], warm, work / f"warm-{side}")
    runs: dict[str, list[Run]] = {side: [] for side in sides}
    for repeat in range(repeats):
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            runs[side].append(measured(side, model_dir, conversations, settings, work / f"{side}-{repeat}"))
    for side in sides:
        peak = python_heap_peak_mib(side, model_dir, conversations, settings, work / f"heap-{side}")
        runs[side] = [replace(run, python_peak_mib=peak) for run in runs[side]]
    return runs


# --- reporting --------------------------------------------------------------------------------------------


def format_table(runs: dict[str, list[Run]]) -> str:
    """Return each side's figures (medians of the timed runs) as an aligned plain-text table."""
    header = ("side", "examples", "label tok", "steps", "train loss", "samples/s", "total s", "RSS +MiB")
    gpu = any(run.gpu_peak_mib is not None for side_runs in runs.values() for run in side_runs)
    header += ("GPU peak MiB",) if gpu else ("py peak MiB",)
    rows = [header]
    for side, side_runs in runs.items():
        first = side_runs[0]
        row = (
            side,
            str(first.examples),
            str(first.label_tokens),
            str(first.steps),
            f"{statistics.median(r.train_loss for r in side_runs):.4f}",
            f"{statistics.median(r.train_samples_per_second for r in side_runs):.2f}",
            f"{statistics.median(r.total_seconds for r in side_runs):.2f}",
            f"{max(r.rss_increase_mib for r in side_runs):.1f}",
        )
        memory = max(r.gpu_peak_mib or 0.0 for r in side_runs) if gpu else first.python_peak_mib
        rows.append((*row, f"{memory:.1f}"))
    return aligned_table(rows)


COLUMN_NOTES = """\
label tok     tokens learnt per epoch (labels other than -100; for dpo, the chosen and rejected replies'
              tokens); equal on both sides when they lay the conversations out alike
train loss    the Trainer's average training loss over the run; close on both sides when they train alike
samples/s     the Trainer's train_samples_per_second: examples x epochs over its training loop's seconds
total s       the whole call: load the model, tokenise, build the trainer, train, save the adapter
RSS +MiB      growth of the process's peak RSS (getrusage) over the side's timed runs, native memory
              included; the peak never goes down, so the side whose runs come after a bigger peak shows
              only what it needed beyond it (0 when nothing more)
py peak MiB   on the CPU: peak Python-heap allocation (tracemalloc) of a separate, untimed run of the side;
              misses torch's tensors, which are native
GPU peak MiB  on a GPU: torch.cuda.max_memory_allocated during the side (the largest of its timed runs)"""


def describe(model_dir: Path, source: str, settings: Settings, examples: int, repeats: int) -> str:
    """Return the lines that say what the figures were measured on."""
    import peft
    import torch
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name()})"
    else:
        load = " ".join(f"{n:.2f}" for n in os.getloadavg())
        device = f"cpu (torch threads: {torch.get_num_threads()}, load average 1/5/15 min: {load})"
    return (
        f"model: {source}, {config.model_type}, {config.num_hidden_layers} layers, hidden "
        f"{config.hidden_size}; device: {device}; {'bf16' if settings.bf16 else 'fp32'}\n"
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}\n"
        f"{examples} conversations; LoRA r={settings.lora_rank} alpha={settings.lora_alpha} on every linear "
        f"layer but the head; batch {settings.batch_size}, {settings.epochs:g} epoch(s), lr "
        f"{settings.learning_rate:g} linear, cutoff {settings.cutoff_len}, template {settings.template}, "
        f"seed {settings.seed}; 1 warm-up + {repeats} timed runs each, sides alternating; medians"
    )


def parse_args() -> argparse.Namespace:
    """Return the command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, default=None, help="local chat model directory")
    source.add_argument("--size", choices=["tiny", "small"], default="tiny", help="random model to build")
    parser.add_argument("--dataset", default=None, help="registered dataset names, comma-separated")
    parser.add_argument("--dataset_dir", type=Path, default=Path("data"), help="folder of dataset_info.json")
    parser.add_argument("--examples", type=int, default=64, help="conversations to train on (default 64)")
    parser.add_argument("--template", default="auto", help="kbqa's chat template (default auto)")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument("--cutoff-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision, base loaded in bf16")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side (default 3)")
    parser.add_argument("--stages", default="sft,dpo", help="stages to compare: sft, dpo (default both)")
    return parser.parse_args()


def main() -> None:
    """Build or load the model and the data, measure both sides, and print the table and the ratio."""
    import logging

    from transformers.utils import logging as transformers_logging

    args = parse_args()
    # Both sides raise the same deprecation and pin_memory-without-GPU warnings on every run.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    logging.getLogger("finetune").setLevel(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the Trainer's progress bars
    settings = Settings(
        template=args.template,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        cutoff_len=args.cutoff_len,
        batch_size=args.batch_size,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        logging_steps=10,
        bf16=args.bf16,
        seed=args.seed,
    )
    if args.dataset:
        from finetune.registry import load_dataset

        conversations, _ = load_dataset([args.dataset], args.dataset_dir, max_samples=args.examples)
    else:
        conversations = corpus_conversations(args.examples)
    with tempfile.TemporaryDirectory(prefix="kbqa-bench-finetune-") as tmp:
        work = Path(tmp)
        with quiet_stdout():
            model_dir = args.model or build_model(work / f"random-{args.size}", args.size)
        source = str(args.model) if args.model else f"random {args.size}"
        stages = [stage.strip() for stage in args.stages.split(",") if stage.strip()]
        runs: dict[str, list[Run]] = {}
        for stage in stages:
            sides = STAGE_SIDES[stage]
            runs |= measure(model_dir, conversations, settings, args.repeats, work / stage, sides)
        print(describe(model_dir, source, settings, len(conversations), args.repeats))
    print()
    print(format_table(runs))
    print()
    for stage in stages:
        plain, kbqa = STAGE_SIDES[stage]
        ratio = statistics.median(r.train_samples_per_second for r in runs[kbqa]) / statistics.median(
            r.train_samples_per_second for r in runs[plain]
        )
        print(f"{stage}: {kbqa} samples/s / {plain} samples/s = {ratio:.3f}")
    print()
    print(COLUMN_NOTES)


if __name__ == "__main__":
    main()
