"""`kbqa finetune convert …` and `data-check`: fine-tuning data between formats, from tables, into
splits and RAG records, and checked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from app.cli.common import console, errors, existing_kb, fail, progress_bar, run_or_fail, service

if TYPE_CHECKING:
    from finetune.convert import OutputFormat
    from finetune.data_check import DatasetCheck
    from finetune.readers import Format
    from finetune.records import ReadReport

Result = TypeVar("Result")

convert_app = typer.Typer(
    help="Convert fine-tuning data: between formats, from tables, into splits, and into RAG records.",
    no_args_is_help=True,
)

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
    from finetune.convert import convert_file, convert_to_table
    from finetune.tables import TABLE_SUFFIXES

    source_format = _data_format(from_)
    if target.suffix.lower() in TABLE_SUFFIXES:
        _report_written(
            run_or_fail(lambda: convert_to_table(source, target, format=source_format, strict=strict)), target
        )
        return
    _report_written(
        run_or_fail(
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
    from finetune.convert import convert_table as convert

    output = _output_format(to)
    report = run_or_fail(
        lambda: convert(
            source,
            target,
            question,
            answer,
            output,
            input=input_column,
            sheet=sheet,
            system=system,
            strict=strict,
        )
    )
    _report_written(report, target)


@convert_app.command("split")
def convert_split(
    source: Annotated[Path, typer.Argument(help="Data file to split: .json or .jsonl, in any format.")],
    ratio: Annotated[
        str, typer.Option("--ratio", help="train:dev[:test] proportions, e.g. 7:3, 99:1, 8:1:1.")
    ] = "9:1",
    shuffle: Annotated[
        bool,
        typer.Option("--shuffle", help="Shuffle the records (seeded) first instead of keeping file order."),
    ] = False,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", help="Shuffling seed (implies --shuffle; default 42); the same seed, the same split."
        ),
    ] = None,
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
    """Split a data file's records by ratio into train, dev and test files of the same layout.

    As the ChatGLM3 seed's data_helper.py splits: the first records in file order train, each later part
    gets int(count × its share) records (199 at 99:1: 198 and 1); --shuffle (or --seed) shuffles first.
    """
    from finetune.convert import parse_ratios, part_names, split_file

    order_seed = (42 if seed is None else seed) if shuffle or seed is not None else None

    def split():
        ratios = parse_ratios(ratio)
        return split_file(
            source, out_dir or source.parent, ratios, order_seed, part_names(names, len(ratios))
        )

    written = run_or_fail(split)
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
            "--ratio",
            help="Split the records, e.g. 99:1, into TARGET/train.jsonl and dev.jsonl: the first in source "
            "order train, as data_helper.py splits.",
        ),
    ] = None,
    shuffle: Annotated[
        bool,
        typer.Option("--shuffle", help="With --ratio: shuffle the records (with --seed) before splitting."),
    ] = False,
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
    from finetune.convert import parse_ratios, part_names, write_examples, write_split
    from finetune.rag import (
        Passage,
        RagOptions,
        build_plain_conversations,
        build_rag_conversations,
        read_rag_samples,
    )

    output = _output_format(to)
    svc = service()
    existing_kb(svc, kb)
    if kb is not None and plain:
        fail("--plain records hold the positive document alone; they take no --kb distractors", code=2)
    ratios = run_or_fail(lambda: parse_ratios(ratio)) if ratio else None
    parts = run_or_fail(lambda: part_names(names, len(ratios))) if ratios else ()
    if names and not ratios:
        fail("--names names the files of a split; give --ratio too", code=2)

    def build():
        samples, report = read_rag_samples(source, strict)
        samples = samples[:max_samples]
        options = RagOptions(k=k, refusal_share=refusal_share, seed=seed, cite=cite)
        if plain:
            return write(build_plain_conversations(samples), report)
        if kb is None:
            return write(build_rag_conversations(samples, svc.settings.llm.prompt, options), report)
        from retrieval import SearchOptions

        with progress_bar("retrieving distractors", len(samples)) as advance:

            def search(question: str, count: int) -> list[Passage]:
                hits = svc.search(kb, question, SearchOptions(k=count))
                advance()
                return [Passage(hit.text, hit.source, hit.page) for hit in hits]

            return write(build_rag_conversations(samples, svc.settings.llm.prompt, options, search), report)

    def write(conversations, report):
        if not ratios:
            report.valid = write_examples(target, conversations, output, strict).valid
            return report, {}
        order = seed if shuffle else None
        written = write_split(target, conversations, ratios, order, parts, output, strict)
        report.valid = sum(count for _, count in written.values())
        return report, written

    report, written = run_or_fail(build)
    _report_written(report, target)
    for name, (path, count) in written.items():
        console.print(f"{name}: {count} records → {path}", highlight=False)


def data_check(
    dataset: Annotated[str, typer.Option("--dataset", help="Registered dataset names, comma-separated.")],
    dataset_dir: Annotated[
        Path, typer.Option("--dataset_dir", help="Folder of dataset_info.json and the data files.")
    ] = Path("data"),
    strict: StrictOption = False,
    show: Annotated[int, typer.Option("--show", min=0, help="Malformed records to list per dataset.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    stage: Annotated[
        str | None,
        typer.Option(
            "--stage",
            help="Check the data as `train --stage` reads it: sft (conversations), pt (plain text: the prompt "
            "column), dpo, orpo or rm (preference pairs). Default: each dataset as it is registered.",
        ),
    ] = None,
) -> None:
    """Read registered datasets and print how many records are valid, and why the others are skipped.

    Exits 1 when a dataset cannot be read or has no valid record (with --strict: any malformed record).
    """
    from finetune.data_check import check_datasets, check_stage_data

    if stage is None:
        _print_checks(*run_or_fail(lambda: check_datasets(dataset, dataset_dir, strict)), show, as_json)
        return
    from finetune.arguments import STAGES

    if stage not in STAGES:
        fail(f"--stage {stage} is not supported; kbqa trains {', '.join(STAGES)}", code=2)
    _print_checks(*run_or_fail(lambda: check_stage_data(stage, dataset, dataset_dir, strict)), show, as_json)


def _print_checks(checks: list[DatasetCheck], failures: list[str], show: int, as_json: bool) -> None:
    """Print each dataset's valid and skipped records (a table, or JSON); exit 1 when any failed."""
    import json

    from rich.markup import escape
    from rich.table import Table

    if as_json:
        print(
            json.dumps(
                [check.as_dict() for check in checks] + [{"error": f} for f in failures],
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        table = Table("dataset", "kind", "valid", "skipped")
        for check in checks:
            table.add_row(check.name, check.kind, str(check.report.valid), str(len(check.report.skipped)))
        console.print(table)
        for check in checks:
            for reason, count in check.report.reasons().most_common():
                console.print(f"{check.name}: {count} × {escape(reason)}", highlight=False)
            for skipped in check.report.skipped[:show]:
                console.print(f"  {escape(str(skipped))}", highlight=False)
    if failures:
        fail("; ".join(failures))


def _data_format(name: str) -> Format | None:
    """Return an input format by name (None for auto), or exit 2 naming the choices."""
    from finetune.readers import FORMATS

    if name == "auto":
        return None
    if name not in FORMATS:
        fail(f"--from must be auto, {', '.join(FORMATS)}; not '{name}'", code=2)
    return name


def _output_format(name: str) -> OutputFormat:
    """Return an output format by name, or exit 2 naming the choices."""
    from finetune.convert import OUTPUT_FORMATS

    if name not in OUTPUT_FORMATS:
        fail(f"--to must be one of {', '.join(OUTPUT_FORMATS)}; not '{name}'", code=2)
    return name


def _report_written(report: ReadReport, target: Path) -> None:
    """Print how many records were written and how many skipped, with the first reasons."""
    from rich.markup import escape

    console.print(f"wrote {report.valid} records to {target}", highlight=False)
    if report.skipped:
        errors.print(f"skipped {len(report.skipped)} records:", highlight=False)
        for skipped in report.skipped[:5]:
            errors.print(f"  {escape(str(skipped))}", highlight=False)
