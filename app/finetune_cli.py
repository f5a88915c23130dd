"""`kbqa finetune …`: data conversion, LoRA/QLoRA training, adapter merge, and evaluation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from app.services import KnowledgeService
    from finetune.evaluate import EvalResult, Example
    from llm import GenerationParams, LLMConfig

finetune_app = typer.Typer(
    help="Fine-tune chat models with LoRA/QLoRA on your own data.", no_args_is_help=True
)


# `kbqa finetune eval`'s table rows: label -> key of finetune.evaluate.Scores.
METRIC_LABELS = {
    "exact match": "exact_match",
    "BLEU-4, characters": "bleu_4",
    "ROUGE-1, jieba words": "rouge_1",
    "ROUGE-2, jieba words": "rouge_2",
    "ROUGE-L, jieba words": "rouge_l",
    "refusal accuracy": "refusal_accuracy",
}


@finetune_app.command("eval")
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

    from app.cli import _bar, console, errors, fail, service
    from finetune.errors import FinetuneError
    from finetune.evaluate import ADAPTER, examples_from, llm_config, report, write_predictions
    from finetune.registry import load_dataset
    from llm import BASE_MODEL, GenerationParams, LLMError
    from retrieval import KnowledgeBaseError

    svc = service()
    if kb is not None and not svc.catalog.exists(kb):
        fail(f"knowledge base '{kb}' does not exist")
    try:
        conversations, read_report = load_dataset([dataset], dataset_dir, max_samples=max_samples)
        examples = examples_from(conversations)
    except (FinetuneError, ValueError) as error:
        fail(str(error))
    if read_report.skipped:
        errors.print(f"skipped {len(read_report.skipped)} malformed records, e.g. {read_report.skipped[0]}")
    names = [BASE_MODEL, ADAPTER] if adapter else [BASE_MODEL]
    params = GenerationParams(max_new_tokens=max_new_tokens)
    prompt = svc.settings.llm.prompt
    config = llm_config(model, adapter, template, svc.settings.llm)
    try:
        with _bar("generating", len(examples) * len(names)) as advance:
            results = _eval_rows(svc, config, kb, examples, names, params, advance)
    except (FinetuneError, LLMError, KnowledgeBaseError, ValueError) as error:
        fail(str(error))
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


@finetune_app.command("eval-sql")
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

    from app.cli import _bar, console, fail, service
    from finetune.errors import FinetuneError
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
        with _bar("generating", len(prompts)) as advance:
            queries = predict_sql(lambda prompt: chat.generate(prompt, params).text, prompts, advance)
        if predictions is not None:
            predictions.write_text(
                "".join(f"{q}\t{e.db_id}\n" for q, e in zip(queries, examples, strict=True)), "utf-8"
            )
        return examples, queries

    try:
        examples, queries = predicted()
        with _bar("executing", len(examples)) as advance:
            scores = evaluate_sql(examples, queries, db_dir, timeout, advance)
    except (FinetuneError, ValueError) as error:
        fail(str(error))
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


# --- data: conversion, tables, splits, RAG records, checks ------------------------------------------

if TYPE_CHECKING:
    from typing import TypeVar

    from finetune.convert import OutputFormat
    from finetune.readers import Format, ReadReport

    Result = TypeVar("Result")

convert_app = typer.Typer(
    help="Convert fine-tuning data: between formats, from tables, into splits, and into RAG records.",
    no_args_is_help=True,
)
finetune_app.add_typer(convert_app, name="convert")

StrictOption = Annotated[
    bool, typer.Option("--strict", help="Fail on the first malformed record instead of skipping it.")
]
ToOption = Annotated[str, typer.Option("--to", help="Output format: alpaca, sharegpt, openai or xtuner.")]


@convert_app.command("format")
def convert_format(
    source: Annotated[Path, typer.Argument(help="Data file: .json (a list) or .jsonl.")],
    target: Annotated[
        Path, typer.Argument(help="Output: .json or .jsonl, or .xlsx/.csv for single-turn data to review.")
    ],
    to: ToOption = "sharegpt",
    from_: Annotated[
        str,
        typer.Option("--from", help="Input format: auto, alpaca, sharegpt (OpenAI messages too) or xtuner."),
    ] = "auto",
    strict: StrictOption = False,
) -> None:
    """Convert alpaca, sharegpt (or OpenAI messages) and xtuner data into one another."""
    from finetune.convert import convert_file
    from finetune.readers import read_file
    from finetune.tables import TABLE_SUFFIXES, table_rows, write_table

    source_format = _data_format(from_)
    if target.suffix.lower() in TABLE_SUFFIXES:

        def export():
            examples, report = read_file(source, source_format, strict=strict)
            write_table(target, table_rows(examples))
            return report

        _report_written(_data_run(export), target)
        return
    _report_written(
        _data_run(
            lambda: convert_file(source, target, _output_format(to), format=source_format, strict=strict)
        ),
        target,
    )


@convert_app.command("table")
def convert_table(
    source: Annotated[
        Path, typer.Argument(help="Spreadsheet (.xlsx) or .csv file; its first row names the columns.")
    ],
    target: Annotated[Path, typer.Argument(help="Output: .json or .jsonl.")],
    question: Annotated[str, typer.Option("--question", help="Column of the questions (header name).")],
    answer: Annotated[str, typer.Option("--answer", help="Column of the answers (header name).")],
    input_column: Annotated[
        str | None, typer.Option("--input", help="Column appended to the question on a new line, if any.")
    ] = None,
    sheet: Annotated[
        str | None, typer.Option("--sheet", help="Sheet of an .xlsx file (default: the first).")
    ] = None,
    system: Annotated[str, typer.Option("--system", help="Fixed system prompt for every record.")] = "",
    to: Annotated[
        str, typer.Option("--to", help="Output format: alpaca, xtuner, sharegpt or openai.")
    ] = "alpaca",
    strict: StrictOption = False,
) -> None:
    """Turn the question and answer columns of an .xlsx sheet or .csv file into training records."""
    from finetune.convert import write_examples
    from finetune.tables import read_table, table_conversations

    output = _output_format(to)

    def convert():
        rows = read_table(source, sheet)
        conversations, report = table_conversations(
            rows, str(source), question, answer, input=input_column, system=system, strict=strict
        )
        report.valid = write_examples(target, conversations, output, strict).valid
        return report

    _report_written(_data_run(convert), target)


@convert_app.command("split")
def convert_split(
    source: Annotated[Path, typer.Argument(help="Data file to split: .json or .jsonl, in any format.")],
    ratio: Annotated[
        str, typer.Option("--ratio", help="train:dev[:test] proportions, e.g. 7:3, 99:1, 8:1:1.")
    ] = "9:1",
    seed: Annotated[
        int, typer.Option("--seed", help="Shuffling seed; the same seed gives the same split.")
    ] = 42,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out-dir", help="Folder of train/dev/test files (default: beside the source)."),
    ] = None,
    names: Annotated[
        str | None,
        typer.Option(
            "--names", help="Names of the parts, one per ratio, e.g. train,test (default: train,dev[,test])."
        ),
    ] = None,
) -> None:
    """Shuffle a data file's records with a seed and split them by ratio into train, dev and test files."""
    from app.cli import console
    from finetune.convert import parse_ratios, part_names, split_file

    def split():
        ratios = parse_ratios(ratio)
        return split_file(source, out_dir or source.parent, ratios, seed, part_names(names, len(ratios)))

    written = _data_run(split)
    for name, (path, count) in written.items():
        console.print(f"{name}: {count} records → {path}", highlight=False)


@convert_app.command("rag")
def convert_rag(
    source: Annotated[
        Path,
        typer.Argument(
            help="SQuAD-format .json (e.g. DRCD), or Multi-Doc-QA records — Multi-Doc-QA-Chinese's "
            "{QA, positive_doc, negative_doc} or {question, answer, positive_doc, negative_docs}, a JSON "
            "list or JSON Lines — in a file or a folder of files."
        ),
    ],
    target: Annotated[
        Path, typer.Argument(help="Output: .json or .jsonl; with --ratio, the folder of the split files.")
    ],
    k: Annotated[int, typer.Option("-k", min=0, help="Distractor passages beside the answering one.")] = 4,
    refusal_share: Annotated[
        float,
        typer.Option(
            "--refusal-share",
            min=0.0,
            max=1.0,
            help="Share of records whose context lacks the answer (target: the refusal sentence).",
        ),
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the shuffles and draws.")] = 42,
    kb: Annotated[
        str | None,
        typer.Option(
            "--kb", help="Knowledge base to retrieve hard-negative distractors from (by the question)."
        ),
    ] = None,
    cite: Annotated[
        bool, typer.Option("--cite/--no-cite", help="End each answer with its passage's number, like [2].")
    ] = True,
    max_samples: Annotated[
        int | None, typer.Option("--max_samples", min=1, help="Use only the first N questions.")
    ] = None,
    plain: Annotated[
        bool,
        typer.Option(
            "--plain",
            help="Write Multi-Doc-QA-Chinese's single-document instruction (你现在是一个可以根据文档内容进行"
            "问答的机器人…{doc}\\n问题为：{query}\\n答：) → answer instead of the service's prompt; "
            "no distractors, refusals or citations.",
        ),
    ] = False,
    ratio: Annotated[
        str | None,
        typer.Option(
            "--ratio", help="Split the records seeded, e.g. 99:1, into TARGET/train.jsonl and dev.jsonl."
        ),
    ] = None,
    names: Annotated[
        str | None, typer.Option("--names", help="Names of the split files (default: train,dev[,test]).")
    ] = None,
    to: ToOption = "alpaca",
    strict: StrictOption = False,
) -> None:
    """Build RAG training records in the service's own QA prompt (from the configured llm.prompt).

    The positive passage sits among k shuffled distractors and the target is the answer; a share of the
    records gets only distractors and the refusal sentence, so the model learns to say it does not know.
    """
    from app.cli import _bar, console, fail, service
    from finetune.convert import parse_ratios, part_names, split_records, write_examples
    from finetune.errors import DatasetError
    from finetune.rag import (
        Passage,
        RagOptions,
        build_plain_conversations,
        build_rag_conversations,
        read_rag_samples,
    )

    output = _output_format(to)
    svc = service()
    if kb is not None and not svc.catalog.exists(kb):
        fail(f"knowledge base '{kb}' does not exist")
    if kb is not None and plain:
        fail("--plain records hold the positive document alone; they take no --kb distractors", code=2)
    ratios = _data_run(lambda: parse_ratios(ratio)) if ratio else None
    parts = _data_run(lambda: part_names(names, len(ratios))) if ratios else ()
    if names and not ratios:
        fail("--names names the files of a split; give --ratio too", code=2)

    def build():
        samples, report = read_rag_samples(source, strict)
        samples = samples[:max_samples]
        options = RagOptions(k=k, refusal_share=refusal_share, seed=seed, cite=cite)
        if plain:
            conversations = build_plain_conversations(samples)
        elif kb is None:
            conversations = build_rag_conversations(samples, svc.settings.llm.prompt, options)
        else:
            from retrieval import SearchOptions

            with _bar("retrieving distractors", len(samples)) as advance:

                def search(question: str, count: int) -> list[Passage]:
                    hits = svc.search(kb, question, SearchOptions(k=count))
                    advance()
                    return [Passage(hit.text, hit.source, hit.page) for hit in hits]

                conversations = build_rag_conversations(samples, svc.settings.llm.prompt, options, search)
        if not ratios:
            report.valid = write_examples(target, conversations, output, strict).valid
            return report, {}
        if len(conversations) < len(ratios):
            raise DatasetError(f"{len(conversations)} records cannot be split into {len(ratios)} parts")
        written = {}
        for name, part in zip(parts, split_records(conversations, ratios, seed), strict=True):
            path = target / f"{name}.jsonl"
            written[name] = (path, write_examples(path, part, output, strict).valid)
        report.valid = sum(count for _, count in written.values())
        return report, written

    report, written = _data_run(build)
    _report_written(report, target)
    for name, (path, count) in written.items():
        console.print(f"{name}: {count} records → {path}", highlight=False)


@finetune_app.command("data-check")
def data_check(
    dataset: Annotated[str, typer.Option("--dataset", help="Registered dataset names, comma-separated.")],
    dataset_dir: Annotated[
        Path, typer.Option("--dataset_dir", help="Folder of dataset_info.json and the data files.")
    ] = Path("data"),
    strict: StrictOption = False,
    show: Annotated[int, typer.Option("--show", min=0, help="Malformed records to list per dataset.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Read registered datasets and print how many records are valid, and why the others are skipped.

    Exits 1 when a dataset cannot be read or has no valid record (with --strict: any malformed record).
    """
    import json

    from rich.markup import escape
    from rich.table import Table

    from app.cli import console, fail
    from finetune.errors import DatasetError, NoValidRecord
    from finetune.registry import read_dataset, read_dataset_info, split_names

    try:
        registry = read_dataset_info(dataset_dir)
        names = split_names([dataset])
    except DatasetError as error:
        fail(str(error))
    rows, failures = [], []
    for name in names:
        if name not in registry:
            failures.append(
                f"no dataset '{name}' in {dataset_dir} (registered: {', '.join(sorted(registry)) or 'none'})"
            )
            continue
        spec = registry[name]
        try:
            _, report = read_dataset(spec, dataset_dir, strict)
        except NoValidRecord as error:
            report, message = error.report, str(error)
            failures.append(message)
        except DatasetError as error:
            failures.append(str(error))
            continue
        kind = "preference" if spec.ranking else "conversation"
        rows.append((name, kind, report))
    if as_json:
        print(
            json.dumps(
                [_check_dict(name, kind, report) for name, kind, report in rows]
                + [{"error": f} for f in failures],
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        table = Table("dataset", "kind", "valid", "skipped")
        for name, kind, report in rows:
            table.add_row(name, kind, str(report.valid), str(len(report.skipped)))
        console.print(table)
        for name, _, report in rows:
            for reason, count in report.reasons().most_common():
                console.print(f"{name}: {count} × {escape(reason)}", highlight=False)
            for skipped in report.skipped[:show]:
                console.print(f"  {escape(str(skipped))}", highlight=False)
    if failures:
        fail("; ".join(failures))


def _check_dict(name: str, kind: str, report: ReadReport) -> dict:
    """Return one dataset's check as JSON-ready data."""
    return {
        "dataset": name,
        "kind": kind,
        "valid": report.valid,
        "skipped": len(report.skipped),
        "reasons": dict(report.reasons().most_common()),
        "malformed": [str(skipped) for skipped in report.skipped],
    }


def _data_format(name: str) -> Format | None:
    """Return an input format by name (None for auto), or exit 2 naming the choices."""
    from app.cli import fail
    from finetune.readers import FORMATS

    if name == "auto":
        return None
    if name not in FORMATS:
        fail(f"--from must be auto, {', '.join(FORMATS)}; not '{name}'", code=2)
    return name


def _output_format(name: str) -> OutputFormat:
    """Return an output format by name, or exit 2 naming the choices."""
    from app.cli import fail
    from finetune.convert import OUTPUT_FORMATS

    if name not in OUTPUT_FORMATS:
        fail(f"--to must be one of {', '.join(OUTPUT_FORMATS)}; not '{name}'", code=2)
    return name


def _data_run(action: Callable[[], Result]) -> Result:
    """Return `action()`, turning data errors into a message and exit code 1 (as every command does)."""
    from app.cli import run_or_fail

    return run_or_fail(action)


def _report_written(report: ReadReport, target: Path) -> None:
    """Print how many records were written and how many skipped, with the first reasons."""
    from rich.markup import escape

    from app.cli import console, errors

    console.print(f"wrote {report.valid} records to {target}", highlight=False)
    if report.skipped:
        errors.print(f"skipped {len(report.skipped)} records:", highlight=False)
        for skipped in report.skipped[:5]:
            errors.print(f"  {escape(str(skipped))}", highlight=False)


# --- training and merging ----------------------------------------------------------------------------


def finetune_train(**options: object) -> None:
    """Fine-tune a chat model on registered datasets: LoRA (DoRA, rsLoRA, QLoRA), freeze or full.

    Takes LLaMA-Factory's command line as written: `kbqa finetune train config.yaml --name value ...`,
    booleans with or without a value (`--fp16`, `--fp16 True`). Beside the options below, any transformers
    TrainingArguments key (--optim, --weight_decay, --save_strategy, ...) goes to the Trainer; a name
    LLaMA-Factory documents that kbqa does not honour is an error naming it. The adapter (or whole model),
    its tokenizer, checkpoints, logs and kbqa_adapter.json (its chat template) go to --output_dir.
    """
    import yaml

    from app.cli import console, fail
    from finetune.arguments import arguments_from, parse_command_line
    from finetune.errors import FinetuneError
    from finetune.train import train

    try:
        config, flags = parse_command_line(options["ctx"].meta[_TRAIN_ARGS])
    except FinetuneError as error:
        fail(str(error), code=2)
    try:
        settings = yaml.safe_load(Path(config).read_text(encoding="utf-8")) if config else {}
    except (OSError, yaml.YAMLError) as error:
        fail(f"cannot read the config {config}: {error}")
    if not isinstance(settings, dict):
        fail(f"the config {config} must hold a mapping of settings")
    try:
        result = train(arguments_from(settings, flags))
    except FinetuneError as error:
        fail(str(error))
    last_loss = f"{result.losses[-1][1]:.4f}" if result.losses else "not logged"
    eval_loss = f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""
    console.print(
        f"trained {result.global_step} steps on {result.examples} examples ({result.skipped} with nothing to "
        f"learn left out), template {result.template}; last loss {last_loss}{eval_loss}\n"
        f"saved to {result.output_dir}" + (f"; loss curve in {result.loss_plot}" if result.loss_plot else ""),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


_TRAIN_ARGS = "kbqa.finetune.train.args"


class _TrainCommand(typer.core.TyperCommand):
    """`kbqa finetune train`: its options show in --help, but the command line is read by
    finetune.arguments.parse_command_line, which takes LLaMA-Factory's forms that click's parser refuses."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if any(arg in ("--help", "-h") for arg in args):
            return super().parse_args(ctx, args)
        ctx.meta[_TRAIN_ARGS] = list(args)
        return super().parse_args(ctx, [])


def _train_signature() -> object:
    """Return `kbqa finetune train`'s parameters for --help: the config file, then one per TrainArguments field."""
    import inspect
    from dataclasses import MISSING, fields

    from finetune.arguments import TrainArguments

    def parameter(name: str, annotation: object) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)

    types = {"str": str, "int": int, "float": float, "bool": bool}
    config_help = "YAML or JSON file of these settings (LLaMA-Factory's keys), first or as --config."
    parameters = [
        inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
        parameter("config", Annotated[Path | None, typer.Argument(help=config_help, show_default=False)]),
    ]
    for spec in fields(TrainArguments):
        if not spec.metadata["help"]:
            continue
        kind = types[str(spec.type).split(" ")[0]]  # "int | None" -> int
        flags = f"--{spec.name}" if kind is not bool else f"--{spec.name}/--no_{spec.name}"
        default = "" if spec.default in (MISSING, None, "", False) else f" (default: {spec.default})"
        option = typer.Option(flags, help=spec.metadata["help"] + default, show_default=False)
        parameters.append(parameter(spec.name, Annotated[kind | None, option]))
    return inspect.Signature(parameters)


finetune_train.__signature__ = _train_signature()  # type: ignore[attr-defined]
finetune_app.command("train", cls=_TrainCommand)(finetune_train)


@finetune_app.command("merge")
def finetune_merge(
    base: Annotated[
        str,
        typer.Option("--base", "--model_name_or_path", help="The adapter's base model: directory or hub id."),
    ],
    adapter: Annotated[
        Path, typer.Option("--adapter", "--adapter_name_or_path", help="LoRA adapter directory.")
    ],
    out: Annotated[Path, typer.Option("--out", "--export_dir", help="New directory for the merged model.")],
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype", help="auto (the base checkpoint's), float32, float16 or bfloat16; never 4/8-bit."
        ),
    ] = "auto",
    tolerance: Annotated[
        float | None,
        typer.Option(
            "--tolerance",
            min=0.0,
            help="Largest |logit difference| allowed between the merged and the adapter model on a probe "
            "prompt (default: 1e-4 of the largest logit in float32, 1e-2 in float16, 3e-2 in bfloat16).",
        ),
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust_remote_code", help="Run the model's own Python code.")
    ] = False,
    qbits: Annotated[
        int | None,
        typer.Option(
            "--qbits",
            "--export_quantization_bit",
            help="Save the merged model quantised to 4 or 8 bits: bitsandbytes on CUDA, else torchao "
            "weight-only (8 bits on the CPU too).",
        ),
    ] = None,
) -> None:
    """Merge a LoRA adapter into its base model's weights and save it (safetensors and tokenizer).

    The merged model's logits are checked against the adapter model's on a probe prompt; above the
    tolerance nothing is saved and the command fails.
    """
    from app.cli import console, fail
    from finetune.errors import FinetuneError
    from finetune.merge import merge_adapter

    try:
        result = merge_adapter(base, adapter, out, dtype, tolerance, trust_remote_code, qbits)
    except FinetuneError as error:
        fail(str(error))
    console.print(
        f"merged {adapter} into {base} ({result.dtype}) → {result.out}; largest logit difference from the "
        f"adapter model {result.max_abs_diff:.2e} (tolerance {result.tolerance:.2e})"
        + (
            f"; saved quantised to {qbits} bits with {result.quantization} (largest logit change "
            f"{result.quantized_max_abs_diff:.2e})"
            if result.quantization
            else ""
        ),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
