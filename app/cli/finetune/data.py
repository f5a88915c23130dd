"""`kbqa finetune convert …` and `data-check`: fine-tuning data between formats, from tables, into
splits and RAG records, and checked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from app.cli.common import console, errors, existing_kb, fail, progress_bar, run_or_fail, service

if TYPE_CHECKING:
    from finetune.convert import OutputFormat
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
    from finetune.convert import convert_file
    from finetune.readers import read_file
    from finetune.tables import TABLE_SUFFIXES, table_rows, write_table

    source_format = _data_format(from_)
    if target.suffix.lower() in TABLE_SUFFIXES:

        def export():
            examples, report = read_file(source, source_format, strict=strict)
            write_table(target, table_rows(examples))
            return report

        _report_written(run_or_fail(export), target)
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
    from finetune.convert import write_examples
    from finetune.tables import read_table, table_conversations, table_label

    output = _output_format(to)

    def convert():
        rows = read_table(source, sheet)  # checks the file and the sheet first
        conversations, report = table_conversations(
            rows,
            table_label(source, sheet),
            question,
            answer,
            input=input_column,
            system=system,
            strict=strict,
        )
        report.valid = write_examples(target, conversations, output, strict).valid
        return report

    _report_written(run_or_fail(convert), target)


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
            conversations = build_plain_conversations(samples)
        elif kb is None:
            conversations = build_rag_conversations(samples, svc.settings.llm.prompt, options)
        else:
            from retrieval import SearchOptions

            with progress_bar("retrieving distractors", len(samples)) as advance:

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
        for name, part in zip(
            parts, split_records(conversations, ratios, seed if shuffle else None), strict=True
        ):
            path = target / f"{name}.jsonl"
            written[name] = (path, write_examples(path, part, output, strict).valid)
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
    if stage is not None:
        _check_stage(stage, dataset, dataset_dir, strict, show, as_json)
        return
    from finetune.errors import DatasetError
    from finetune.records import NoValidRecord
    from finetune.registry import read_dataset, read_dataset_info, split_names

    registry, names = run_or_fail(lambda: (read_dataset_info(dataset_dir), split_names([dataset])))
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
    _print_checks(rows, failures, show, as_json)


def _print_checks(rows: list, failures: list[str], show: int, as_json: bool) -> None:
    """Print each dataset's valid and skipped records (a table, or JSON); exit 1 when any failed."""
    import json

    from rich.markup import escape
    from rich.table import Table

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


def _check_stage(stage: str, dataset: str, dataset_dir: Path, strict: bool, show: int, as_json: bool) -> None:
    """`data-check --stage`: read each dataset exactly as `train --stage` does, and report as data-check does."""
    from finetune.arguments import STAGES
    from finetune.errors import DatasetError
    from finetune.records import NoValidRecord
    from finetune.registry import load_stage_data, split_names
    from finetune.stages import PREFERENCE_STAGES

    if stage not in STAGES:
        fail(f"--stage {stage} is not supported; kbqa trains {', '.join(STAGES)}", code=2)
    kind = "text" if stage == "pt" else "preference" if stage in PREFERENCE_STAGES else "conversation"
    rows, failures = [], []
    for name in run_or_fail(lambda: split_names([dataset])):
        try:
            _, report = load_stage_data(stage, [name], dataset_dir, strict)
        except NoValidRecord as error:
            report = error.report
            failures.append(str(error))
        except DatasetError as error:
            failures.append(str(error))
            continue
        rows.append((name, kind, report))
    _print_checks(rows, failures, show, as_json)


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
