"""The conversion and checking work behind `kbqa finetune convert …` and `data-check`, called directly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from finetune.conversation import Conversation
from finetune.convert import convert_table, convert_to_table, write_split
from finetune.data_check import check_datasets, check_stage_data
from finetune.errors import DatasetError
from llm.types import Message


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def qa(question: str, answer: str) -> Conversation:
    return Conversation((Message("user", question), Message("assistant", answer)))


def test_a_data_file_becomes_a_table_and_a_table_becomes_records(tmp_path: Path) -> None:
    source = write_json(
        tmp_path / "a.json",
        [{"instruction": "年假有几天？", "output": "五天。"}, {"instruction": "no answer"}],
    )
    table = tmp_path / "review.csv"
    report = convert_to_table(source, table)
    assert (report.valid, len(report.skipped)) == (1, 1)
    with table.open(encoding="utf-8-sig", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(row["question"], row["answer"]) for row in rows] == [("年假有几天？", "五天。")]

    back = tmp_path / "back.jsonl"
    report = convert_table(table, back, "question", "answer", "sharegpt", system="你是助手。")
    assert (report.valid, report.skipped) == (1, [])
    [record] = [json.loads(line) for line in back.read_text(encoding="utf-8").splitlines()]
    assert record["system"] == "你是助手。"
    assert [turn["value"] for turn in record["conversations"]] == ["年假有几天？", "五天。"]
    with pytest.raises(DatasetError, match="'missing'"):
        convert_table(table, back, "missing", "answer", "alpaca")


def test_examples_are_written_split_into_named_parts(tmp_path: Path) -> None:
    examples = [qa(f"q{n}", f"a{n}") for n in range(10)]
    written = write_split(tmp_path / "out", examples, (0.8, 0.2), None, ("train", "dev"), "alpaca")
    assert {name: count for name, (_, count) in written.items()} == {"train": 8, "dev": 2}
    dev = [json.loads(line) for line in written["dev"][0].read_text(encoding="utf-8").splitlines()]
    assert [record["instruction"] for record in dev] == ["q8", "q9"]  # in order: the last ones
    shuffled = write_split(tmp_path / "s", examples, (0.8, 0.2), 7, ("train", "dev"), "alpaca")
    again = write_split(tmp_path / "t", examples, (0.8, 0.2), 7, ("train", "dev"), "alpaca")
    assert shuffled["dev"][0].read_text() == again["dev"][0].read_text()  # the same seed, the same split
    with pytest.raises(DatasetError, match="2 records cannot be split into 3 parts"):
        write_split(tmp_path / "x", examples[:2], (0.5, 0.3, 0.2), None, ("a", "b", "c"), "alpaca")


def test_datasets_are_checked_as_registered_and_as_a_stage_reads_them(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", [{"instruction": "ok", "output": "fine"}, {"instruction": "no answer"}])
    write_json(tmp_path / "e.json", [{"instruction": "no answer"}])
    write_json(
        tmp_path / "dataset_info.json", {"good": {"file_name": "a.json"}, "empty": {"file_name": "e.json"}}
    )
    checks, failures = check_datasets("good,empty,nope", tmp_path)
    assert [(check.name, check.kind, check.report.valid) for check in checks] == [
        ("good", "conversation", 1),
        ("empty", "conversation", 0),  # no valid record: checked, with its report, and a failure
    ]
    assert checks[0].as_dict()["reasons"] == {"missing output (column 'output')": 1}
    assert failures[0].startswith(f"{tmp_path / 'e.json'}: no valid record")
    assert failures[1] == f"no dataset 'nope' in {tmp_path} (registered: empty, good)"

    checks, failures = check_stage_data("pt", "good", tmp_path)
    assert [(check.name, check.kind, check.report.valid) for check in checks] == [("good", "text", 2)]
    assert failures == []
    checks, failures = check_stage_data("dpo", "good", tmp_path)
    assert checks == [] and "preference data" in failures[0]
