"""Readers of SFT and preference data (alpaca, sharegpt with the OpenAI `messages` form, xtuner).

Every record becomes a Conversation, or with `ranking` a Preference. A malformed record is reported
with its file and index (0-based: its place in the JSON list, or among the non-blank lines of a JSONL
file) and skipped; with `strict` the first one raises DatasetError. A file with no valid record is an
error either way, since training on nothing is never what was meant. The raw records of a file and that
skip-and-count rule are finetune.records'.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from finetune.conversation import Conversation, Preference
from finetune.errors import DatasetError
from finetune.records import (
    Malformed,
    NoValidRecord,
    ReadReport,
    Skipped,
    Unparsable,
    json_kind,
    load_records,
)
from llm.types import Message, Role

Format = Literal["alpaca", "sharegpt", "xtuner"]
FORMATS: tuple[Format, ...] = ("alpaca", "sharegpt", "xtuner")
Example = Conversation | Preference


@dataclass(frozen=True)
class Columns:
    """Which key of a record holds each field (LLaMA-Factory's `columns`)."""

    prompt: str = "instruction"
    query: str = "input"
    response: str = "output"
    history: str = "history"
    messages: str = "conversations"
    system: str = "system"
    chosen: str = "chosen"
    rejected: str = "rejected"
    tools: str = "tools"


@dataclass(frozen=True)
class Tags:
    """How sharegpt messages name their role and content, and each role's name (LLaMA-Factory's `tags`)."""

    role: str = "from"
    content: str = "value"
    user: str = "human"
    assistant: str = "gpt"
    observation: str = "observation"
    function: str = "function_call"
    system: str = "system"


OPENAI_COLUMNS = Columns(messages="messages")
OPENAI_TAGS = Tags(role="role", content="content", user="user", assistant="assistant", observation="tool")


def detect_format(record: object) -> tuple[Format, Columns, Tags]:
    """Return the format of a record by its keys, with the columns and tags to read it; Malformed if unknown."""
    if isinstance(record, Unparsable):
        raise Malformed(record.reason)
    if isinstance(record, dict):
        if isinstance(record.get("conversation"), list):
            return "xtuner", Columns(), Tags()
        if "conversations" in record:
            return "sharegpt", Columns(), Tags()
        if "messages" in record:
            messages = record["messages"]
            openai = isinstance(messages, list) and bool(messages) and isinstance(messages[0], dict)
            return "sharegpt", OPENAI_COLUMNS, OPENAI_TAGS if openai and "role" in messages[0] else Tags()
        if {"instruction", "input", "output", "chosen"} & record.keys():
            return "alpaca", Columns(), Tags()
        raise Malformed(f"cannot tell the format from its keys ({', '.join(map(str, record)) or 'none'})")
    raise Malformed(f"is a {json_kind(record)}, not a JSON object")


def read_file(
    path: Path,
    format: Format | None = None,
    *,
    ranking: bool | None = None,
    columns: Columns | None = None,
    tags: Tags | None = None,
    strict: bool = False,
) -> tuple[list[Example], ReadReport]:
    """Return the examples of a file and its report; the format (and ranking) is detected when not given."""
    records = load_records(path)
    if not records:
        raise NoValidRecord(f"{path}: no valid record (the file holds no records)", ReadReport())
    if format is None:
        # A line that is not JSON tells no format: detect from the first record that parsed.
        first = next((record for record in records if not isinstance(record, Unparsable)), records[0])
        try:
            format, found_columns, found_tags = detect_format(first)
        except Malformed as error:
            raise DatasetError(
                f"{path}: record {records.index(first)}: {error}; name the format explicitly"
            ) from None
        columns, tags = columns or found_columns, tags or found_tags
    else:
        first = records[0]
    columns = columns or Columns()
    if ranking is None:
        ranking = _looks_ranked(first, format, columns)
    _check_not_xtuner(records, str(path), format, columns)
    return read_records(
        records, str(path), format, ranking=ranking, columns=columns, tags=tags, strict=strict
    )


def _check_not_xtuner(records: list[object], file: str, format: str, columns: Columns) -> None:
    """Raise one DatasetError with the fix when alpaca is asked of XTuner records (`conversation` lists, no
    prompt column), instead of one "missing instruction" per record."""
    dicts = [record for record in records if isinstance(record, dict)]
    if format != "alpaca" or not dicts or any(columns.prompt in record for record in dicts):
        return
    if all(isinstance(record.get("conversation"), list) for record in dicts):
        raise DatasetError(
            f'{file}: the records are XTuner\'s ({{"conversation": [{{"input", "output"}}, ...]}}), read as '
            f'alpaca (no \'{columns.prompt}\' column); register the dataset with "formatting": "xtuner" in '
            "dataset_info.json"
        )


def read_records(
    records: Iterable[object],
    file: str,
    format: Format,
    *,
    ranking: bool = False,
    columns: Columns | None = None,
    tags: Tags | None = None,
    strict: bool = False,
) -> tuple[list[Example], ReadReport]:
    """Return the valid examples of raw records and a report of the others; DatasetError if none is valid."""
    columns, tags = columns or Columns(), tags or Tags()
    if format not in FORMATS:
        raise DatasetError(f"{file}: unknown format '{format}'; use one of {', '.join(FORMATS)}")
    if format == "xtuner" and ranking:
        raise DatasetError(f"{file}: the xtuner format holds no preference (ranking) data")
    examples: list[Example] = []
    report = ReadReport()
    for index, record in enumerate(records):
        try:
            examples.append(_parse(record, format, ranking, columns, tags, f"{file}#{index}"))
        except Malformed as error:
            report.skip(Skipped(file, index, str(error)), strict)
    report.valid = len(examples)
    if not examples:
        first = f"; the first: {report.skipped[0]}" if report.skipped else ""
        raise NoValidRecord(f"{file}: no valid record ({len(report.skipped)} malformed{first})", report)
    return examples, report


def _parse(
    record: object, format: Format, ranking: bool, columns: Columns, tags: Tags, source: str
) -> Example:
    """Return one record as an example; Malformed says what is wrong with it."""
    if isinstance(record, Unparsable):
        raise Malformed(record.reason)
    if not isinstance(record, dict):
        raise Malformed(f"is a {json_kind(record)}, not a JSON object")
    if format == "alpaca":
        return parse_alpaca(record, columns, ranking, source)
    if format == "sharegpt":
        return parse_sharegpt(record, columns, tags, ranking, source)
    return parse_xtuner(record, source)


def parse_alpaca(record: dict, columns: Columns, ranking: bool, source: str = "") -> Example:
    """Return an alpaca record (instruction, input, output, system, history) as an example; Malformed if bad."""
    system = _optional_text(record, columns.system)
    parts = [_optional_text(record, columns.prompt), _optional_text(record, columns.query)]
    question = "\n".join(part for part in parts if part)
    if not question:
        raise Malformed(f"missing instruction (column '{columns.prompt}')")
    messages = [Message("system", system)] if system else []
    for question_before, answer_before in _history(record, columns.history):
        messages += [Message("user", question_before), Message("assistant", answer_before)]
    messages.append(Message("user", question))
    if ranking:
        chosen, rejected = _alpaca_pair(record, columns)
        return Preference(tuple(messages), chosen, rejected, source)
    output = _optional_text(record, columns.response)
    if not output:
        raise Malformed(f"missing output (column '{columns.response}')")
    return Conversation((*messages, Message("assistant", output)), source)


def parse_sharegpt(record: dict, columns: Columns, tags: Tags, ranking: bool, source: str = "") -> Example:
    """Return a sharegpt or OpenAI-style record as an example; Malformed on wrong roles, order or content."""
    raw = record.get(columns.messages)
    if raw is None:
        raise Malformed(f"missing messages (column '{columns.messages}')")
    if not isinstance(raw, list):
        raise Malformed(f"column '{columns.messages}' is a {json_kind(raw)}, not a list of messages")
    messages = [_sharegpt_message(item, n, tags) for n, item in enumerate(raw)]
    system = _optional_text(record, columns.system)
    if messages and messages[0].role == "system":
        system, messages = messages[0].content, messages[1:]
    offset = len(raw) - len(messages)
    for n, message in enumerate(messages):
        expected = ("user", "observation") if n % 2 == 0 else ("assistant",)
        if message.role not in expected:
            found = raw[n + offset][tags.role]
            raise Malformed(
                f"message {n + offset} should be from {_role_names(expected, tags)}, not '{found}'"
            )
    head = [Message("system", system)] if system else []
    if ranking:
        if len(messages) % 2 == 0:
            raise Malformed(
                f"even number of messages ({len(messages)}): a preference prompt ends with the user"
            )
        chosen, rejected = (_sharegpt_reply(record, key, tags) for key in (columns.chosen, columns.rejected))
        return Preference((*head, *messages), chosen, rejected, source)
    if not messages:
        raise Malformed("no messages")
    if len(messages) % 2:
        raise Malformed(f"odd number of messages ({len(messages)}): the last must be the assistant's reply")
    calls = tuple(n + len(head) for n in range(len(messages)) if raw[n + offset][tags.role] == tags.function)
    return Conversation((*head, *messages), source, _tools(record, columns.tools), calls)


def _tools(record: dict, key: str) -> str:
    """Return a record's tool descriptions as JSON text ("" when none); Malformed unless a JSON list."""
    value = record.get(key)
    if value in (None, "", []):
        return ""
    try:
        tools = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as error:
        raise Malformed(f"'{key}' is not JSON: {error}") from None
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        raise Malformed(f"'{key}' is not a list of function descriptions")
    return json.dumps(tools, ensure_ascii=False) if tools else ""


def parse_xtuner(record: dict, source: str = "") -> Conversation:
    """Return an XTuner record ({"conversation": [{system, input, output}, …]}) as a conversation."""
    turns = record.get("conversation")
    if not isinstance(turns, list) or not turns:
        raise Malformed("missing 'conversation' (a non-empty list of turns)")
    messages: list[Message] = []
    for n, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise Malformed(f"turn {n} is a {json_kind(turn)}, not an object with 'input' and 'output'")
        system = _optional_text(turn, "system", f"turn {n}: ")
        if system and n == 0:
            messages.append(Message("system", system))
        elif system and system != messages[0].content:
            raise Malformed(f"turn {n}: a system prompt may only come in the first turn")
        question = _optional_text(turn, "input", f"turn {n}: ")
        answer = _optional_text(turn, "output", f"turn {n}: ")
        if not question:
            raise Malformed(f"turn {n}: missing 'input'")
        if not answer:
            raise Malformed(f"turn {n}: missing 'output'")
        messages += [Message("user", question), Message("assistant", answer)]
    return Conversation(tuple(messages), source)


def _looks_ranked(record: object, format: Format, columns: Columns) -> bool:
    """Return whether a record holds preference data: a `chosen` column, or alpaca's [better, worse] output."""
    if not isinstance(record, dict) or format == "xtuner":
        return False
    return columns.chosen in record or (format == "alpaca" and isinstance(record.get(columns.response), list))


def _optional_text(record: dict, key: str, where: str = "") -> str:
    """Return the string at `key` ("" when absent or null); Malformed when it is not a string."""
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Malformed(f"{where}'{key}' is a {json_kind(value)}, not a string")
    return value


def _history(record: dict, key: str) -> list[tuple[str, str]]:
    """Return alpaca's history ([[question, answer], …]) as pairs; Malformed when it has another shape."""
    history = record.get(key)
    if history is None:
        return []
    if not isinstance(history, list):
        raise Malformed(f"'{key}' is a {json_kind(history)}, not a list of [question, answer] pairs")
    for n, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise Malformed(f"'{key}' item {n} is not a [question, answer] pair of strings")
    return [(question, answer) for question, answer in history]


def _alpaca_pair(record: dict, columns: Columns) -> tuple[str, str]:
    """Return the (chosen, rejected) replies of an alpaca preference record, in either layout."""
    if columns.chosen in record or columns.rejected in record:
        chosen, rejected = _optional_text(record, columns.chosen), _optional_text(record, columns.rejected)
    else:
        output = record.get(columns.response)
        if not (isinstance(output, list) and len(output) == 2 and all(isinstance(x, str) for x in output)):
            raise Malformed(
                f"preference data needs '{columns.chosen}' and '{columns.rejected}', "
                f"or '{columns.response}' as [better, worse]"
            )
        chosen, rejected = output
    if not chosen or not rejected:
        raise Malformed(f"missing '{columns.chosen}' or '{columns.rejected}' reply")
    return chosen, rejected


def _sharegpt_message(item: object, n: int, tags: Tags) -> Message:
    """Return one sharegpt message in our roles; a function call becomes an assistant message."""
    if not isinstance(item, dict) or tags.role not in item or tags.content not in item:
        raise Malformed(f"message {n} is not an object with '{tags.role}' and '{tags.content}'")
    content = item[tags.content]
    if not isinstance(content, str):
        raise Malformed(f"message {n}: '{tags.content}' is a {json_kind(content)}, not a string")
    roles: dict[str, Role] = {
        tags.user: "user",
        tags.assistant: "assistant",
        tags.function: "assistant",
        tags.observation: "observation",
        tags.system: "system",
    }
    role = roles.get(item[tags.role]) if isinstance(item[tags.role], str) else None
    if role is None:
        known = ", ".join(f"'{name}'" for name in roles)
        raise Malformed(f"message {n} has unknown role {json.dumps(item[tags.role])} (known: {known})")
    if role == "system" and n:
        raise Malformed(f"message {n}: a system message may only come first")
    return Message(role, content)


def _sharegpt_reply(record: dict, key: str, tags: Tags) -> str:
    """Return the text of a sharegpt preference reply (`chosen` or `rejected`), an assistant message."""
    item = record.get(key)
    if item is None:
        raise Malformed(f"missing '{key}' reply")
    message = _sharegpt_message(item, 0, tags) if isinstance(item, dict) else None
    if message is None or message.role != "assistant" or not message.content:
        raise Malformed(f"'{key}' is not an assistant message with '{tags.role}' and '{tags.content}'")
    return message.content


def _role_names(roles: tuple[Role, ...], tags: Tags) -> str:
    """Return the record's own names for our roles, for messages: "user or observation ('human'/…)"."""
    names = {
        "user": [tags.user],
        "observation": [tags.observation],
        "assistant": [tags.assistant, tags.function],
    }
    return " or ".join(roles) + " (" + "/".join(f"'{name}'" for role in roles for name in names[role]) + ")"
