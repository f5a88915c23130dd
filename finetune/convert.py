"""Format writers (alpaca, sharegpt, OpenAI messages, xtuner), file conversion, and seeded splits.

Writers take the internal form (Conversation or Preference), so any readable format converts to any
writable one. Alpaca joins instruction and input into one user turn when read, so it is written back
with the whole turn as `instruction` and an empty `input`. A conversation a format cannot hold (tool
results in alpaca or xtuner, preferences in xtuner) is skipped and reported like a malformed record.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TypeVar

from finetune.conversation import Conversation, Preference
from finetune.errors import DatasetError
from finetune.readers import Example, Format, read_file
from finetune.records import Malformed, ReadReport, Skipped, Unparsable, load_records
from llm.types import Message

OutputFormat = Literal["alpaca", "sharegpt", "openai", "xtuner"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("alpaca", "sharegpt", "openai", "xtuner")
SPLIT_NAMES = ("train", "dev", "test")
_SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "observation": "observation", "system": "system"}
T = TypeVar("T")


def to_record(example: Example, format: OutputFormat) -> dict:
    """Return an example as one record of `format`; Malformed when the format cannot hold it."""
    system, messages = _split_system(example)
    tools = isinstance(example, Conversation) and bool(example.tools or example.calls)
    if tools and format in ("alpaca", "xtuner") and all(m.role != "observation" for m in messages):
        raise Malformed(f"the {format} format has no place for tools and function calls; write sharegpt")
    if format == "alpaca":
        return _alpaca(example, system, messages)
    if format == "sharegpt":
        offset = len(example.messages) - len(messages) if isinstance(example, Conversation) else 0
        calls = set(example.calls) if isinstance(example, Conversation) else set()
        record: dict = {
            "conversations": [
                {
                    "from": "function_call" if n + offset in calls else _SHAREGPT_ROLES[m.role],
                    "value": m.content,
                }
                for n, m in enumerate(messages)
            ]
        }
        if system:
            record["system"] = system
        if isinstance(example, Conversation) and example.tools:
            record["tools"] = example.tools
        if isinstance(example, Preference):
            record |= {key: {"from": "gpt", "value": text} for key, text in _pair(example).items()}
        return record
    if format == "openai":
        head = [Message("system", system)] if system else []
        roles = {"observation": "tool"}
        record = {
            "messages": [{"role": roles.get(m.role, m.role), "content": m.content} for m in head + messages]
        }
        if isinstance(example, Preference):
            record |= {key: {"role": "assistant", "content": text} for key, text in _pair(example).items()}
        elif example.tools:
            record["tools"] = json.loads(example.tools)
        return record
    if format == "xtuner":
        if isinstance(example, Preference):
            raise Malformed("the xtuner format holds no preference data")
        turns = [{"input": q.content, "output": a.content} for q, a in _exchanges(messages, "xtuner")]
        return {"conversation": [{"system": system, **turns[0]} if system else turns[0], *turns[1:]]}
    raise DatasetError(f"unknown output format '{format}'; use one of {', '.join(OUTPUT_FORMATS)}")


def write_records(path: Path, records: Sequence[dict], as_list: bool | None = None) -> None:
    """Write records as a JSON list (.json) or one object a line (.jsonl), UTF-8 with text unescaped;
    `as_list` overrides the suffix's layout (a split keeps its input's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() not in (".json", ".jsonl"):
        raise DatasetError(f"{path}: write .json or .jsonl")
    if as_list is None:
        as_list = path.suffix.lower() == ".json"
    if as_list:
        text = json.dumps(list(records), ensure_ascii=False, indent=2) + "\n"
    else:
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    path.write_text(text, encoding="utf-8")


def write_examples(
    path: Path, examples: Sequence[Example], format: OutputFormat, strict: bool = False
) -> ReadReport:
    """Write examples in `format` and return a report of those written and those the format cannot hold."""
    records: list[dict] = []
    report = ReadReport()
    for index, example in enumerate(examples):
        try:
            records.append(to_record(example, format))
        except Malformed as error:
            report.skip(_origin(example, index, path, str(error)), strict)
    if not records:
        raise DatasetError(f"{path}: nothing to write: no example fits the {format} format")
    write_records(path, records)
    report.valid = len(records)
    return report


def convert_file(
    source: Path, target: Path, to: OutputFormat, *, format: Format | None = None, strict: bool = False
) -> ReadReport:
    """Convert a data file to another format and return one report of what was read and written."""
    examples, report = read_file(source, format, strict=strict)
    written = write_examples(target, examples, to, strict)
    report.skipped += written.skipped
    report.valid = written.valid
    return report


def convert_to_table(
    source: Path, target: Path, *, format: Format | None = None, strict: bool = False
) -> ReadReport:
    """Write a data file's single-turn examples as an .xlsx or .csv table to review; return the read report."""
    from finetune.tables import table_rows, write_table

    examples, report = read_file(source, format, strict=strict)
    write_table(target, table_rows(examples))
    return report


def convert_table(
    source: Path,
    target: Path,
    question: str,
    answer: str,
    to: OutputFormat,
    *,
    input: str | None = None,
    sheet: str | None = None,
    system: str = "",
    strict: bool = False,
) -> ReadReport:
    """Write the question and answer columns of an .xlsx sheet or .csv file as training records in `to`;
    return the report of the rows read and the records written."""
    from finetune.tables import read_table, table_conversations, table_label

    rows = read_table(source, sheet)  # checks the file and the sheet first
    conversations, report = table_conversations(
        rows, table_label(source, sheet), question, answer, input=input, system=system, strict=strict
    )
    report.valid = write_examples(target, conversations, to, strict).valid
    return report


def write_split(
    folder: Path,
    examples: Sequence[Example],
    ratios: Sequence[float],
    seed: int | None,
    names: Sequence[str],
    to: OutputFormat,
    strict: bool = False,
) -> dict[str, tuple[Path, int]]:
    """Write examples split by `ratios` (in order, or shuffled with `seed`) into FOLDER/<name>.jsonl files in
    `to`; return each part's path and the records written to it."""
    if len(examples) < len(ratios):
        raise DatasetError(f"{len(examples)} records cannot be split into {len(ratios)} parts")
    written = {}
    for name, part in zip(names, split_records(examples, ratios, seed), strict=True):
        path = folder / f"{name}.jsonl"
        written[name] = (path, write_examples(path, part, to, strict).valid)
    return written


def parse_ratios(text: str) -> tuple[float, ...]:
    """Return split ratios from "7:3", "8:1:1" or "0.9,0.1"; DatasetError unless 2 or 3 positive numbers."""
    try:
        ratios = tuple(float(part) for part in text.replace(",", ":").split(":"))
    except ValueError:
        ratios = ()
    if not 2 <= len(ratios) <= len(SPLIT_NAMES) or any(r <= 0 for r in ratios):
        raise DatasetError(f"ratio '{text}': give 2 or 3 positive numbers like 7:3 or 8:1:1")
    return ratios


def split_sizes(count: int, ratios: Sequence[float]) -> list[int]:
    """Return how many of `count` records each part gets, rounded as the ChatGLM3 seed's data_helper.py rounds:
    each later part int(count × its share), the first part the rest (199 at 99:1: 198 and 1).

    Every part gets at least one record when there are enough, so 99:1 of 50 records still has a dev set.
    """
    sizes = [0] + [int(count * r / sum(ratios)) for r in ratios[1:]]
    sizes[0] = count - sum(sizes)
    for i in range(len(sizes)):
        if sizes[i] == 0 and count >= len(sizes):
            sizes[max(range(len(sizes)), key=sizes.__getitem__)] -= 1
            sizes[i] = 1
    return sizes


def split_records(records: Sequence[T], ratios: Sequence[float], seed: int | None) -> list[list[T]]:
    """Return the records cut into parts by ratio: in their order (the first ones train), or shuffled with
    `seed` first; the same seed gives the same parts."""
    order = list(records)
    if seed is not None:
        random.Random(seed).shuffle(order)
    parts, start = [], 0
    for size in split_sizes(len(order), ratios):
        parts.append(order[start : start + size])
        start += size
    return parts


def part_names(text: str | None, count: int) -> tuple[str, ...]:
    """Return the names of `count` split parts: `text`'s, comma-separated, else train, dev[, test]."""
    if not text:
        return SPLIT_NAMES[:count]
    names = tuple(name.strip() for name in text.split(","))
    if len(names) != count or not all(names) or len(set(names)) != count:
        raise DatasetError(f"names '{text}': give {count} different names, one per ratio, like train,test")
    if bad := [name for name in names if "/" in name or "\\" in name or name.startswith(".")]:
        raise DatasetError(f"names '{text}': '{bad[0]}' is not a file name")
    return names


def split_file(
    source: Path,
    out_dir: Path,
    ratios: Sequence[float],
    seed: int | None,
    names: Sequence[str] | None = None,
) -> dict[str, tuple[Path, int]]:
    """Split a .json or .jsonl file's records into train/dev[/test] (or `names`) files of the same kind and
    layout (a JSON list stays a list, JSON Lines stay lines), in file order or shuffled with `seed`.

    Records are split as they are, in any format; returns each part's path and record count.
    """
    if source.suffix.lower() not in (".json", ".jsonl"):
        raise DatasetError(f"{source}: split a .json or .jsonl file")
    names = names or SPLIT_NAMES[: len(ratios)]
    records = load_records(source)
    for index, record in enumerate(records):
        if isinstance(record, Unparsable):
            raise DatasetError(
                f"{source}: record {index}: {record.reason}; fix or remove it before splitting"
            )
    if len(records) < len(ratios):
        raise DatasetError(f"{source}: {len(records)} records cannot be split into {len(ratios)} parts")
    written = {}
    for name, part in zip(names, split_records(records, ratios, seed), strict=True):
        path = out_dir / f"{name}{source.suffix.lower()}"
        write_records(path, part, as_list=_holds_a_list(source))
        written[name] = (path, len(part))
    return written


def _holds_a_list(path: Path) -> bool:
    """Return whether a JSON file holds one list (rather than one record a line)."""
    with path.open(encoding="utf-8-sig") as file:
        head = file.read(4096).lstrip()
    return head.startswith("[")


def _origin(example: Example, index: int, path: Path, reason: str) -> Skipped:
    """Return where an example came from ("file#index" in its source), else its place in what is written."""
    file, _, place = example.source.rpartition("#")
    return (
        Skipped(file, int(place), reason) if file and place.isdigit() else Skipped(str(path), index, reason)
    )


def _split_system(example: Example) -> tuple[str, list[Message]]:
    """Return an example's system text ("" if none) and its other messages (the prompt, for a preference)."""
    messages = list(example.messages if isinstance(example, Conversation) else example.prompt)
    if messages and messages[0].role == "system":
        return messages[0].content, messages[1:]
    return "", messages


def _alpaca(example: Example, system: str, messages: list[Message]) -> dict:
    """Return an alpaca record: the last exchange as instruction/output, the earlier ones as history."""
    if isinstance(example, Preference):
        exchanges = _exchanges([*messages, Message("assistant", example.chosen)], "alpaca")
    else:
        exchanges = _exchanges(messages, "alpaca")
    *earlier, (question, answer) = exchanges
    record: dict = {"instruction": question.content, "input": ""}
    record |= _pair(example) if isinstance(example, Preference) else {"output": answer.content}
    if system:
        record["system"] = system
    if earlier:
        record["history"] = [[q.content, a.content] for q, a in earlier]
    return record


def _exchanges(messages: list[Message], format: str) -> list[tuple[Message, Message]]:
    """Return user/assistant pairs; Malformed when a tool result has no place in `format`."""
    if any(m.role == "observation" for m in messages):
        raise Malformed(f"the {format} format has no place for tool results (observation messages)")
    return [(messages[i], messages[i + 1]) for i in range(0, len(messages), 2)]


def _pair(example: Preference) -> dict[str, str]:
    """Return a preference's replies by key."""
    return {"chosen": example.chosen, "rejected": example.rejected}
