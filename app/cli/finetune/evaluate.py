"""`kbqa finetune eval` and `eval-sql`: score a model (and its adapter) on a dev set."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.common import console, errors, existing_kb, fail, progress_bar, run_or_fail, service

if TYPE_CHECKING:
    from app.services import KnowledgeService
    from finetune.evaluate import EvalResult, Example
    from finetune.records import ReadReport
    from llm import GenerationParams, LLMConfig


# `kbqa finetune eval`'s table rows: label -> key of finetune.evaluate.Scores.
METRIC_LABELS = {
    "exact match": "exact_match",
    "BLEU-4, characters": "bleu_4",
    "ROUGE-1, jieba words": "rouge_1",
    "ROUGE-2, jieba words": "rouge_2",
    "ROUGE-L, jieba words": "rouge_l",
    "refusal accuracy": "refusal_accuracy",
}


def finetune_eval(
    model: Annotated[
        str, typer.Option("--model", "--model_name_or_path", help="Base model: local directory or hub id.")
    ],
    dataset: Annotated[
        str, typer.Option("--dataset", help="Dev set: registered dataset names, comma-separated.")
    ],
    adapter: Annotated[
        Path | None,
        typer.Option(
            "--adapter",
            "--adapter_name_or_path",
            help="LoRA adapter directory (from `kbqa finetune train`), scored next to the base model.",
        ),
    ] = None,
    dataset_dir: Annotated[
        Path, typer.Option("--dataset_dir", help="Folder of dataset_info.json and the data files.")
    ] = Path("data"),
    template: Annotated[
        str,
        typer.Option(
            "--template",
            help="Chat template: auto (the adapter's saved one, else the model's), hf, chatglm3, glm4, "
            "chatml, llama3 or default.",
        ),
    ] = "auto",
    max_samples: Annotated[
        int | None,
        typer.Option("--max_samples", min=1, help="Use only the first N examples of each dataset."),
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max_new_tokens", min=1, help="Most tokens per reply (decoding is greedy).")
    ] = 256,
    kb: Annotated[
        str | None,
        typer.Option(
            "--kb",
            help="End to end: ask each question through this knowledge base (retrieval, the QA prompt and "
            "the model), as the service answers it.",
        ),
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option("--predictions", help="Also write every reply to this file, one JSON line per example."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score replies on a dev set, base model and adapter side by side.

    Exact match, character BLEU-4, jieba ROUGE-1/2/L F1 and refusal accuracy (refuses where the reference
    is the refusal sentence, answers elsewhere). The llm settings other than the model, its adapters and
    the template (device, dtype, the QA prompt) come from the configuration.
    """
    import json

    from rich.table import Table

    from finetune.evaluate import ADAPTER, examples_from, llm_config, report, write_predictions
    from finetune.registry import load_dataset
    from llm import BASE_MODEL, GenerationParams

    svc = service()
    existing_kb(svc, kb)

    def read() -> tuple[list[Example], ReadReport]:
        conversations, read_report = load_dataset([dataset], dataset_dir, max_samples=max_samples)
        return examples_from(conversations), read_report

    examples, read_report = run_or_fail(read)
    if read_report.skipped:
        errors.print(f"skipped {len(read_report.skipped)} malformed records, e.g. {read_report.skipped[0]}")
    names = [BASE_MODEL, ADAPTER] if adapter else [BASE_MODEL]
    params = GenerationParams(max_new_tokens=max_new_tokens)
    prompt = svc.settings.llm.prompt
    config = llm_config(model, adapter, template, svc.settings.llm)

    def generate() -> list[EvalResult]:
        with progress_bar("generating", len(examples) * len(names)) as advance:
            return _eval_rows(svc, config, kb, examples, names, params, advance)

    results = run_or_fail(generate)
    if predictions is not None:
        write_predictions(predictions, examples, results, prompt)
    summary = {
        "model": model,
        "adapter": str(adapter) if adapter else None,
        "dataset": dataset,
        "kb": kb,
        "examples": len(examples),
        "max_new_tokens": max_new_tokens,
        "results": report(results),
    }
    if as_json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
        return
    console.print(
        f"{len(examples)} examples of {dataset} · {model}{f' + {adapter}' if adapter else ''}"
        f"{f' · end to end through knowledge base {kb}' if kb else ''} · greedy, {max_new_tokens} new tokens at most",
        highlight=False,
    )
    rows = summary["results"]
    table = Table("", *(row["name"] for row in rows))
    for label, key in METRIC_LABELS.items():
        table.add_row(label, *(f"{row[key]:.3f}" for row in rows))
    table.add_row(
        "refused where it should", *(f"{r['refused_unanswerable']}/{r['unanswerable']}" for r in rows)
    )
    table.add_row(
        "answered where it should",
        *(f"{r['answered_answerable']}/{r['examples'] - r['unanswerable']}" for r in rows),
    )
    console.print(table)


def _eval_rows(
    svc: KnowledgeService,
    config: LLMConfig,
    kb: str | None,
    examples: list[Example],
    names: list[str],
    params: GenerationParams,
    advance: Callable[[], None],
) -> list[EvalResult]:
    """Return the rows of `kbqa finetune eval`: the model's replies, or the knowledge base's answers."""
    from app.services import KnowledgeService
    from finetune.evaluate import evaluate_answers, evaluate_model
    from llm import AnswerOptions, load_chat_model

    prompt = svc.settings.llm.prompt
    if kb is None:
        return evaluate_model(load_chat_model(config), examples, names, params, prompt, advance)
    # One service, so one loaded model answers for every row; each row picks its adapter per request.
    answering = KnowledgeService(svc.settings.model_copy(update={"llm": config}))

    def answerer(adapter: str) -> Callable[[str], str]:
        options = AnswerOptions(generation=params.model_copy(update={"adapter": adapter}))
        return lambda question: answering.ask(kb, question, options=options).read().text

    return [evaluate_answers(answerer(name), examples, f"{name} + kb", prompt, advance) for name in names]


def finetune_eval_sql(
    db_dir: Annotated[
        Path, typer.Option("--db-dir", help="Spider-style folder of databases: <db_id>/<db_id>.sqlite.")
    ],
    gold: Annotated[
        Path | None,
        typer.Option(
            "--gold",
            help="Gold queries: SQL<TAB>db_id[<TAB>difficulty] a line, or Spider JSON (query, db_id).",
        ),
    ] = None,
    pred: Annotated[
        Path | None, typer.Option("--pred", help="Predicted queries, one a line, in the gold file's order.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "--model_name_or_path", help="Generate the predictions with this model first."
        ),
    ] = None,
    adapter: Annotated[
        Path | None, typer.Option("--adapter", "--adapter_name_or_path", help="LoRA adapter for --model.")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="With --model: DB-GPT-Hub-style records (instruction, input, output = gold SQL, db_id).",
        ),
    ] = None,
    template: Annotated[str, typer.Option("--template", help="Chat template of --model.")] = "auto",
    max_new_tokens: Annotated[
        int, typer.Option("--max_new_tokens", min=1, help="Most tokens per query.")
    ] = 256,
    predictions: Annotated[
        Path | None,
        typer.Option("--predictions", help="With --model: also write the queries here, one a line."),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.01, help="Seconds a query may run; past it, it counts as wrong."),
    ] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score text-to-SQL: execution accuracy and exact-set match, per difficulty when the gold gives it.

    Give --gold and --pred, or --model and --data to generate the predictions first (greedy decoding).
    Queries run read-only on SQLite, stopped after --timeout.
    """
    import json

    from rich.table import Table

    from finetune.text2sql import evaluate_sql, predict_sql, read_gold, read_predictions, read_sql_dataset

    if model is not None:
        if data is None or gold is not None or pred is not None:
            fail("--model generates the predictions for --data; give no --gold or --pred with it", code=2)
    elif gold is None or pred is None:
        fail("give --gold and --pred, or --model and --data", code=2)

    def predicted() -> tuple[list, list[str]]:
        if model is None:
            return read_gold(gold), read_predictions(pred)
        from finetune.evaluate import ADAPTER, llm_config
        from llm import BASE_MODEL, GenerationParams, load_chat_model

        examples, prompts = read_sql_dataset(data)
        chat = load_chat_model(llm_config(model, adapter, template, service().settings.llm))
        params = GenerationParams(max_new_tokens=max_new_tokens, adapter=ADAPTER if adapter else BASE_MODEL)
        with progress_bar("generating", len(prompts)) as advance:
            queries = predict_sql(lambda prompt: chat.generate(prompt, params).text, prompts, advance)
        if predictions is not None:
            predictions.write_text(
                "".join(f"{q}\t{e.db_id}\n" for q, e in zip(queries, examples, strict=True)), "utf-8"
            )
        return examples, queries

    def execute() -> list:
        examples, queries = predicted()
        with progress_bar("executing", len(examples)) as advance:
            return evaluate_sql(examples, queries, db_dir, timeout, advance)

    scores = run_or_fail(execute)
    if as_json:
        print(json.dumps([score.__dict__ for score in scores], ensure_ascii=False, indent=2))
        return
    table = Table("difficulty", "queries", "execution accuracy", "exact-set match")
    for score in scores:
        table.add_row(
            score.difficulty,
            str(score.count),
            f"{score.execution_accuracy:.3f}",
            f"{score.exact_set_match:.3f}",
        )
    console.print(table)
