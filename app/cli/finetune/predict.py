"""`kbqa finetune predict`: the ChatGLM3 seed's predict.py step (`model.chat` with history) on a kbqa model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import console, run_or_fail, service


def finetune_predict(
    model: Annotated[
        str,
        typer.Option(
            "--model", "--model_name_or_path", help="Merged or quantised model: directory or hub id."
        ),
    ],
    queries: Annotated[
        list[str] | None,
        typer.Argument(help="Queries, each asked after the ones before it; none: one a line from stdin."),
    ] = None,
    adapter: Annotated[
        Path | None,
        typer.Option("--adapter", "--adapter_name_or_path", "--lora_path", help="LoRA adapter for --model."),
    ] = None,
    history: Annotated[
        str | None,
        typer.Option(
            "--history",
            help='Earlier turns as JSON (or @file): [{"role": "user", "content": …}, …] as ChatGLM3\'s '
            "model.chat takes them, or [[query, response], …]; at most 50 turns.",
        ),
    ] = None,
    template: Annotated[str, typer.Option("--template", help="Chat template of --model.")] = "auto",
    max_new_tokens: Annotated[
        int, typer.Option("--max_new_tokens", min=1, max=32768, help="Most tokens per reply.")
    ] = 512,
    temperature: Annotated[
        float, typer.Option("--temperature", min=0.0, max=2.0, help="Sampling temperature; 0 is greedy.")
    ] = 0.0,
    as_json: Annotated[
        bool,
        typer.Option("--json", help='Print {"response", "history"} per query, as model.chat returns them.'),
    ] = False,
) -> None:
    """Answer queries as `response, history = model.chat(tokenizer, query, history)` does, keeping the history.

    Replaces the ChatGLM3 seed's predict.py on a model kbqa merged (or quantised): its `model.chat` exists only
    in THUDM's own modelling code, which a converted model no longer runs.
    """
    from finetune.evaluate import ADAPTER, llm_config
    from finetune.predict import chat, read_history
    from llm import BASE_MODEL, GenerationParams, load_chat_model

    raw = history or "[]"
    if raw.startswith("@"):
        raw = run_or_fail(lambda: Path(raw[1:]).read_text(encoding="utf-8"))
    turns = run_or_fail(lambda: read_history(raw))
    asked = queries or (line.rstrip("\n") for line in sys.stdin if line.strip())
    config = llm_config(model, adapter, template, service().settings.llm)
    chat_model = run_or_fail(lambda: load_chat_model(config))
    params = GenerationParams(
        max_new_tokens=max_new_tokens, temperature=temperature, adapter=ADAPTER if adapter else BASE_MODEL
    )
    for query in asked:
        response, turns = run_or_fail(lambda q=query, h=turns: chat(chat_model, q, h, params))
        if as_json:
            record = {
                "response": response,
                "history": [{"role": t.role, "content": t.content} for t in turns],
            }
            print(json.dumps(record, ensure_ascii=False))
        else:
            console.print(response, highlight=False, markup=False, soft_wrap=True)
