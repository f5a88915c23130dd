"""Generation benchmark: kbqa's local transformers backend against the plain transformers loop a user writes.

Both sides run in one process on the same loaded model (the backend's own `chat.model` and
`chat.tokenizer`) and the same conversation, decoding greedily up to the same number of new tokens:

- kbqa: `TransformersChatModel.generate(messages, params)`, and `.stream(messages, params)` read to the
  end (the chat template, the bounded queue, stop ids and strings, the cancellable streamer thread).
- plain: `tokenizer.apply_chat_template(..., add_generation_prompt=True)` + `model.generate(**inputs,
  max_new_tokens=N, do_sample=False)` + `tokenizer.decode`; for streaming, the `TextIteratorStreamer` +
  thread recipe of the transformers docs.

Figures: completion tokens per wall second for both modes, and the time to the first non-empty text delta
when streaming; a run is timed from the messages to the reply's text, templating included. A warm-up run
of each of the four comes first, then `--repeats` runs each, kbqa and plain alternating (who goes first
swaps each repetition), and the table shows medians.

Models: `--model DIR` for any local chat model (with a chat template, which the plain side needs), used as
saved, so it may stop early at EOS (the completion-token column shows it). Otherwise a random model is
built into a temp dir with the tests' tiny ChatML tokenizer: `--size tiny` (default; a 2-layer Qwen2,
for CPU) or `--size chatglm3-6b` (GlmForCausalLM in ChatGLM3-6B's shape, initialised on the device and
saved in bfloat16: about 12.5 GB under $TMPDIR, for a GPU box). A random model's output layer is
confined to whole-CJK-character tokens, so both sides always generate exactly N tokens and every token
reaches the stream at once; weights' values do not change the speed. On a small, busy CPU the tiny
model's figures (per-call overhead mostly) swing with the other load; OMP_NUM_THREADS=1 steadies them.
Run from the repository root:

    .venv/bin/python bench/generate.py --max-new-tokens 64 --repeats 5
    .venv/bin/python bench/generate.py --size chatglm3-6b --device cuda --prompt-tokens 1024 --max-new-tokens 256
    .venv/bin/python bench/generate.py --model /models/qwen2.5-0.5b-instruct --device cuda
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ruff: noqa: E402
REPO_ROOT = Path(__file__).resolve().parent.parent
# The random models are built with the test suite's builders (tests/ is no package), not a copy of them.
sys.path.insert(0, str(REPO_ROOT / "tests"))

from _common import CHATGLM3_6B, aligned_table
from models import CORPUS, build_tiny_causal_lm, train_byte_level_bpe

from llm import GenerationParams, LLMConfig, Message
from llm.transformers_backend import TransformersChatModel
from retrieval import CJK_IDEOGRAPHS

# ChatGLM3-6B's network as transformers' GlmConfig describes it (see llm/chatglm3.py's conversion).
SHAPES: dict[str, dict[str, Any]] = {
    "chatglm3-6b": CHATGLM3_6B
    | {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}},
}
SYSTEM = "你是知识库助手，只根据资料回答问题，并注明出处。"
QUESTION = "年假有几天？"
SIDES = ("plain", "kbqa")
MODES = ("generate", "stream")


@dataclass(frozen=True)
class Run:
    """One timed reply: its token counts, wall seconds and, when streamed, seconds to the first text."""

    prompt_tokens: int
    completion_tokens: int
    seconds: float
    first_text_seconds: float | None = None

    @property
    def tokens_per_second(self) -> float:
        """Return completion tokens per wall second."""
        return self.completion_tokens / self.seconds


def build_glm(directory: Path, shape: dict[str, Any], device: str) -> Path:
    """Return `directory` holding a random GlmForCausalLM of `shape` in bfloat16 and the tiny ChatML tokenizer."""
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    tokenizer = train_byte_level_bpe(directory)
    tokenizer.model_max_length = shape["max_position_embeddings"]  # long prompts without a length warning
    tokenizer.save_pretrained(directory)
    config = GlmConfig(
        **shape, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    with torch.device("meta"):
        model = GlmForCausalLM(config)
    # Materialised straight on the device in bfloat16, so CPU memory never holds 6B float32 weights (24 GB);
    # init_weights also recomputes the rotary buffers, which to_empty leaves unset.
    model = model.to(torch.bfloat16).to_empty(device=device)
    model.init_weights()
    model.save_pretrained(directory)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return directory


def confine_output(model: Any, tokenizer: Any) -> int:
    """Zero the output-layer rows of every id but whole-CJK-character tokens; return how many ids remain.

    A random model then never ends its reply early (no end-of-reply id can win), and each of its tokens is
    text a streamer passes on at once (TextStreamer holds other text back until a word ends), so the time
    to the first text is the first token's. The kept ids' logits are random, so at every step some of them
    are positive and beat the zeros.
    """
    import torch

    special = set(tokenizer.all_special_ids)
    kept = [
        i
        for i in range(len(tokenizer))
        if i not in special and (text := tokenizer.decode([i])) and "\ufffd" not in text and _is_cjk(text[-1])
    ]
    if not kept:
        raise SystemExit("the tokenizer has no whole-CJK-character tokens to confine the random model to")
    weight = model.get_output_embeddings().weight
    dropped = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    dropped[kept] = False
    with torch.no_grad():
        weight[dropped] = 0
    return len(kept)


def _is_cjk(char: str) -> bool:
    return re.fullmatch(f"[{CJK_IDEOGRAPHS}]", char) is not None


def conversation(chat: TransformersChatModel, prompt_tokens: int) -> list[Message]:
    """Return a RAG-style conversation whose rendered prompt takes at least `prompt_tokens` tokens."""
    passages: list[str] = []
    while True:
        context = "\n".join(f"[{n}] {text}" for n, text in enumerate(passages, 1))
        messages = [Message("system", SYSTEM), Message("user", f"资料：\n{context}\n\n问题：{QUESTION}")]
        if chat.count_prompt_tokens(messages) >= prompt_tokens:
            return messages
        passages.append(CORPUS[len(passages) % len(CORPUS)])


def _sync(chat: TransformersChatModel) -> None:
    import torch

    if str(chat.device).startswith("cuda"):
        torch.cuda.synchronize()


def _plain_inputs(chat: TransformersChatModel, messages: list[Message]) -> Any:
    """Return the tokenised prompt as the transformers docs build it: the tokenizer's own chat template."""
    turns = [{"role": m.role, "content": m.content} for m in messages]
    inputs = chat.tokenizer.apply_chat_template(
        turns, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return inputs.to(chat.model.device)


def kbqa_generate(chat: TransformersChatModel, messages: list[Message], max_new_tokens: int) -> Run:
    """Return one timed `chat.generate`."""
    _sync(chat)
    started = time.perf_counter()
    reply = chat.generate(messages, GenerationParams(max_new_tokens=max_new_tokens))
    seconds = time.perf_counter() - started
    return Run(reply.usage.prompt_tokens, reply.usage.completion_tokens, seconds)


def plain_generate(chat: TransformersChatModel, messages: list[Message], max_new_tokens: int) -> Run:
    """Return one timed plain `model.generate` and decode."""
    _sync(chat)
    started = time.perf_counter()
    inputs = _plain_inputs(chat, messages)
    output = chat.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    prompt = inputs["input_ids"].shape[1]
    chat.tokenizer.decode(output[0, prompt:], skip_special_tokens=True)
    seconds = time.perf_counter() - started
    return Run(prompt, output.shape[1] - prompt, seconds)


def kbqa_stream(chat: TransformersChatModel, messages: list[Message], max_new_tokens: int) -> Run:
    """Return one timed `chat.stream`, read to the end."""
    _sync(chat)
    started = time.perf_counter()
    first = None
    stream = chat.stream(messages, GenerationParams(max_new_tokens=max_new_tokens))
    for delta in stream:
        if delta and first is None:
            first = time.perf_counter() - started
    seconds = time.perf_counter() - started
    assert stream.generation is not None
    usage = stream.generation.usage
    return Run(usage.prompt_tokens, usage.completion_tokens, seconds, first)


def plain_stream(chat: TransformersChatModel, messages: list[Message], max_new_tokens: int) -> Run:
    """Return one timed TextIteratorStreamer + thread generation, read to the end."""
    from transformers import TextIteratorStreamer

    _sync(chat)
    started = time.perf_counter()
    first = None
    inputs = _plain_inputs(chat, messages)
    streamer = TextIteratorStreamer(chat.tokenizer, skip_prompt=True, skip_special_tokens=True)
    outcome: dict[str, Any] = {}

    def work() -> None:
        # The docs' recipe passes model.generate itself as the target; keeping its output gives the count.
        outcome["output"] = chat.model.generate(
            **inputs, streamer=streamer, max_new_tokens=max_new_tokens, do_sample=False
        )

    thread = threading.Thread(target=work)
    thread.start()
    for text in streamer:
        if text and first is None:
            first = time.perf_counter() - started
    thread.join()
    seconds = time.perf_counter() - started
    prompt = inputs["input_ids"].shape[1]
    return Run(prompt, outcome["output"].shape[1] - prompt, seconds, first)


RUNNERS = {
    ("generate", "plain"): plain_generate,
    ("generate", "kbqa"): kbqa_generate,
    ("stream", "plain"): plain_stream,
    ("stream", "kbqa"): kbqa_stream,
}


def measure(
    chat: TransformersChatModel, messages: list[Message], max_new_tokens: int, repeats: int
) -> dict[tuple[str, str], list[Run]]:
    """Warm every (mode, side) up once, then run each `repeats` times, alternating sides; return the runs."""
    for runner in RUNNERS.values():
        runner(chat, messages, max_new_tokens)
    runs: dict[tuple[str, str], list[Run]] = {key: [] for key in RUNNERS}
    for repeat in range(repeats):
        order = SIDES if repeat % 2 == 0 else SIDES[::-1]
        for mode in MODES:
            for side in order:
                runs[mode, side].append(RUNNERS[mode, side](chat, messages, max_new_tokens))
    return runs


def _counts(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def format_table(runs: dict[tuple[str, str], list[Run]]) -> str:
    """Return the medians of every (mode, side) as an aligned plain-text table."""
    header = ("mode", "side", "prompt tok", "completion tok", "wall ms", "tok/s", "first text ms")
    rows = [header]
    for (mode, side), side_runs in runs.items():
        firsts = [r.first_text_seconds for r in side_runs if r.first_text_seconds is not None]
        rows.append(
            (
                mode,
                side,
                _counts([r.prompt_tokens for r in side_runs]),
                _counts([r.completion_tokens for r in side_runs]),
                f"{1000 * statistics.median(r.seconds for r in side_runs):.1f}",
                f"{statistics.median(r.tokens_per_second for r in side_runs):.1f}",
                f"{1000 * statistics.median(firsts):.1f}" if firsts else "-",
            )
        )
    return aligned_table(rows, left=(0, 1))


def ratios(runs: dict[tuple[str, str], list[Run]]) -> dict[str, float]:
    """Return kbqa's median figures divided by plain's: tok/s of both modes and the streamed first text."""

    def median(mode: str, side: str, figure: str) -> float:
        return statistics.median(getattr(r, figure) for r in runs[mode, side])

    figures = {f"{mode} tok/s": (mode, "tokens_per_second") for mode in MODES}
    figures["stream first text"] = ("stream", "first_text_seconds")
    return {
        label: median(mode, "kbqa", figure) / median(mode, "plain", figure)
        for label, (mode, figure) in figures.items()
    }


def describe(chat: TransformersChatModel, source: str, kept: int | None) -> str:
    """Return the lines that say what the figures were measured on."""
    import torch
    import transformers

    parameters = sum(p.numel() for p in chat.model.parameters())
    device = str(chat.device)
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(chat.model.device)})"
    else:
        load = " ".join(f"{n:.2f}" for n in os.getloadavg())
        device += f" (torch threads: {torch.get_num_threads()}, load average 1/5/15 min: {load})"
    output = f"random weights, output confined to {kept} CJK-character tokens" if kept else "weights as saved"
    return (
        f"model: {source}, {type(chat.model).__name__}, {parameters / 1e6:,.1f}M parameters, {output}\n"
        f"device: {device}, dtype: {str(chat.dtype).removeprefix('torch.')}, chat template: "
        f"{chat.template.name}; torch {torch.__version__}, transformers {transformers.__version__}"
    )


def parse_args() -> argparse.Namespace:
    """Return the command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, default=None, help="local chat model directory, used as saved")
    source.add_argument(
        "--size",
        choices=["tiny", *SHAPES],
        default="tiny",
        help="shape of the random model built when no --model is given (default: tiny)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto", help="llm.dtype"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per reply (default 64)")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="least prompt length (default 128)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each side and mode (default 5)")
    return parser.parse_args()


def load(args: argparse.Namespace, work: Path) -> tuple[TransformersChatModel, str, int | None]:
    """Return the chat model, a line naming its source, and the kept output ids of a random model (else None)."""
    config = {"backend": "transformers", "device": args.device, "dtype": args.dtype}
    if args.model:
        return TransformersChatModel(LLMConfig(model=str(args.model), **config)), str(args.model), None
    if args.size == "tiny":
        directory = build_tiny_causal_lm(work / "tiny")
    else:
        import torch

        device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
        directory = build_glm(work / args.size, SHAPES[args.size], device)
    chat = TransformersChatModel(LLMConfig(model=str(directory), **config))
    return chat, f"random {args.size}", confine_output(chat.model, chat.tokenizer)


def main() -> None:
    """Load or build the model, measure both sides, and print the table and the kbqa/plain ratios."""
    from transformers.utils import logging as transformers_logging

    args = parse_args()
    transformers_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="kbqa-bench-generate-") as tmp:
        chat, source, kept = load(args, Path(tmp))
    messages = conversation(chat, args.prompt_tokens)
    runs = measure(chat, messages, args.max_new_tokens, args.repeats)

    print(describe(chat, source, kept))
    print(
        f"prompt: {chat.count_prompt_tokens(messages)} tokens (kbqa's template); max new tokens: "
        f"{args.max_new_tokens}; greedy; 1 warm-up + {args.repeats} runs each, sides alternating; medians"
    )
    print()
    print(format_table(runs))
    print()
    print("kbqa / plain: " + ", ".join(f"{label} {value:.3f}" for label, value in ratios(runs).items()))
    print()
    print(
        "wall ms: from the messages to the reply's text; tok/s: completion tokens / wall s;\n"
        "first text ms: to the first non-empty text delta of the stream (lower is better, so a ratio above 1\n"
        "means kbqa is slower there)"
    )


if __name__ == "__main__":
    main()
