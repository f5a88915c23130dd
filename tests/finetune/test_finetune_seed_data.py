"""Data steps of the fine-tuning seeds through `kbqa` as a user runs it: `data-check --stage`, the 99:1 split
as the ChatGLM3 seed's data_helper.py computes it, splits that keep their input's layout, and the messages a
wrong step gets (XTuner data read as alpaca, a missing spreadsheet column, 4-bit export without CUDA)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from servers import kbqa


def said(result) -> str:
    """Return stderr with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


def test_data_check_reads_a_dataset_as_the_stage_trains_on_it(tmp_path: Path) -> None:
    texts = [{"text": f"员工手册第{i}条。"} for i in range(3)]
    (tmp_path / "c4.jsonl").write_text(
        "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts), "utf-8"
    )
    info = {"c4": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    args = ("finetune", "data-check", "--dataset", "c4", "--dataset_dir", str(tmp_path), "--json")
    assert kbqa(*args).returncode == 1  # as conversations: no response column
    pt = kbqa(*args, "--stage", "pt")
    assert pt.returncode == 0, pt.stderr
    (checked,) = json.loads(pt.stdout)
    assert (checked["dataset"], checked["kind"], checked["valid"], checked["skipped"]) == ("c4", "text", 3, 0)
    dpo = kbqa(*args, "--stage", "dpo")
    assert dpo.returncode == 1 and "dpo, orpo and rm train on preference data" in said(dpo)
    ppo = kbqa(*args, "--stage", "ppo")
    assert ppo.returncode == 2 and "--stage ppo is not supported" in said(ppo)


def test_the_99_to_1_split_is_the_seeds_first_records_in_file_order(tmp_path: Path) -> None:
    records = [{"instruction": f"问题{i}", "output": f"回答{i}"} for i in range(199)]
    source = tmp_path / "all.json"  # a JSON list, as data_helper.py reads and writes
    source.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    split = kbqa("finetune", "convert", "split", str(source), "--ratio", "99:1")
    assert split.returncode == 0, split.stderr
    train = json.loads((tmp_path / "train.json").read_text(encoding="utf-8"))
    dev = json.loads((tmp_path / "dev.json").read_text(encoding="utf-8"))
    assert train == records[:198] and dev == records[198:]
    shuffled = kbqa(
        "finetune",
        "convert",
        "split",
        str(source),
        "--ratio",
        "99:1",
        "--shuffle",
        "--out-dir",
        str(tmp_path / "s"),
    )
    assert shuffled.returncode == 0, shuffled.stderr
    train = json.loads((tmp_path / "s" / "train.json").read_text(encoding="utf-8"))
    assert len(train) == 198 and train != records[:198]


def test_a_split_keeps_its_inputs_layout(tmp_path: Path) -> None:
    records = [{"instruction": f"问题{i}", "output": f"回答{i}"} for i in range(10)]
    listed = tmp_path / "list" / "data.jsonl"  # one JSON list in a .jsonl file, as XTuner's recipe writes
    listed.parent.mkdir()
    listed.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    lines = tmp_path / "lines" / "data.json"  # JSON Lines in a .json file, as Multi-Doc-QA-Chinese ships
    lines.parent.mkdir()
    lines.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    for source in (listed, lines):
        assert kbqa("finetune", "convert", "split", str(source), "--ratio", "8:2").returncode == 0
    assert json.loads((listed.parent / "dev.jsonl").read_text(encoding="utf-8")) == records[8:]
    dev = (lines.parent / "dev.json").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in dev] == records[8:]


def test_xtuner_data_without_its_formatting_gets_one_hint(tmp_path: Path) -> None:
    records = [
        {"conversation": [{"system": "你是HR助手", "input": f"问题{i}", "output": "好"}]} for i in range(10)
    ]
    (tmp_path / "faq.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"faq": {"file_name": "faq.json"}}), "utf-8")
    checked = kbqa("finetune", "data-check", "--dataset", "faq", "--dataset_dir", str(tmp_path))
    assert checked.returncode == 1
    assert 'register the dataset with "formatting": "xtuner"' in said(checked)
    assert "missing instruction" not in checked.stdout + checked.stderr


def test_a_missing_column_names_the_sheet_that_was_read(tmp_path: Path) -> None:
    from openpyxl import Workbook

    workbook = Workbook()
    workbook.active.title = "说明"
    workbook.active.append(["这是说明页"])
    faq = workbook.create_sheet("FAQ")
    faq.append(["问题", "答案"])
    faq.append(["年假有几天？", "五天。"])
    workbook.save(tmp_path / "faq.xlsx")
    args = ("finetune", "convert", "table", str(tmp_path / "faq.xlsx"), str(tmp_path / "o.json"))
    first = kbqa(*args, "--question", "问题", "--answer", "答案")
    assert first.returncode == 1 and "faq.xlsx (sheet '说明'): no column '问题'" in said(first)
    named = kbqa(*args, "--sheet", "FAQ", "--question", "Q", "--answer", "答案")
    assert named.returncode == 1 and "faq.xlsx (sheet 'FAQ'): no column 'Q'" in said(named)


def test_4_bit_export_on_a_cpu_names_the_missing_gpu(tmp_path: Path) -> None:
    import torch
    from models import build_random_lora_adapter, build_tiny_causal_lm

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine exports 4 bits (tests/finetune/test_finetune_train.py)")
    model = build_tiny_causal_lm(tmp_path / "lm")
    adapter = build_random_lora_adapter(model, tmp_path / "lora", seed=1)
    merged = kbqa(
        "finetune",
        "merge",
        "--base",
        str(model),
        "--adapter",
        str(adapter),
        "--out",
        str(tmp_path / "m"),
        "--qbits",
        "4",
    )
    assert merged.returncode == 1 and "--qbits 4 needs a CUDA GPU" in said(merged), merged.stderr
    assert "this machine has no CUDA GPU" in said(merged) and "pip install torchao" not in said(merged)
    assert not (tmp_path / "m").exists()
