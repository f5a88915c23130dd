"""The `kbqa` command as users run it: a real subprocess of the installed console script."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import paths
import pytest
from rich.cells import cell_len

KBQA = str(Path(sys.executable).parent / "kbqa")
REPO = paths.REPO


def kbqa(
    *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [KBQA, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        input=input,
        timeout=300,
    )


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from app.cli import app;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output;"
        "heavy = {'torch', 'transformers', 'sentence_transformers', 'faiss', 'pypdf', 'openpyxl'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert "index" in kbqa("--help").stdout


@pytest.mark.slow
def test_kb_lifecycle_build_and_search(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    assert kbqa("--data-dir", data, "kb", "create", "手册").returncode == 0
    assert kbqa("--data-dir", data, "kb", "create", "手册").returncode == 1

    build = kbqa("--data-dir", data, "index", "build", str(REPO / "examples" / "docs"), "--kb", "手册")
    assert build.returncode == 0, build.stderr
    assert "failed 0" in build.stdout

    listed = json.loads(kbqa("--data-dir", data, "kb", "list", "--json").stdout)
    assert [kb["name"] for kb in listed] == ["手册"] and listed[0]["documents"] >= 5
    assert listed[0]["store"] == {"backend": "faiss", "uri": None, "collection": None}
    table = kbqa("--data-dir", data, "kb", "list").stdout
    assert "手册" in table and "faiss" in table

    found = kbqa("--data-dir", data, "search", "--kb", "手册", "报销需要多久到账", "-k", "3", "--json")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert len(hits) == 3
    assert all(-1.0 <= hit["score"] <= 1.0 for hit in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert (hits[0]["source"], hits[0]["page"]) == ("docs/employee_handbook.pdf", 3)
    assert "3 个工作日内打入员工工资卡" in hits[0]["text"]

    strict = kbqa(
        "--data-dir", data, "search", "--kb", "手册", "报销需要多久到账", "--threshold", "0.99", "--json"
    )
    assert json.loads(strict.stdout) == []

    # At 80 columns (rich reads COLUMNS off a terminal) nothing is cut with "…", no line is wider, no raw dict
    # shows, and every line of a hit sits under its number.
    narrow = {"COLUMNS": "80"}
    model = listed[0]["embedding"]["model"]
    shown = {
        "list": kbqa("--data-dir", data, "kb", "list", env=narrow).stdout,
        "info": kbqa("--data-dir", data, "kb", "info", "手册", env=narrow).stdout,
        "search": kbqa(
            "--data-dir", data, "search", "--kb", "手册", "报销需要多久到账", "-k", "2", env=narrow
        ).stdout,
    }
    for command, text in shown.items():
        assert "…" not in text and max(cell_len(line) for line in text.splitlines()) <= 80, (command, text)
    assert model in shown["list"] and model in shown["info"], shown
    assert "{" not in shown["info"] and "dimensions" in shown["info"], shown["info"]
    hit_lines = shown["search"].splitlines()
    assert hit_lines[0].startswith("1. cosine"), hit_lines
    assert all(re.match(r"(\d+\. cosine |   \S|$)", line) for line in hit_lines), hit_lines

    assert kbqa("--data-dir", data, "kb", "check", "手册").returncode == 0
    assert kbqa("--data-dir", data, "kb", "delete", "手册", input="n\n").returncode == 1
    assert kbqa("--data-dir", data, "kb", "delete", "手册", "--yes").returncode == 0
    assert json.loads(kbqa("--data-dir", data, "kb", "list", "--json").stdout) == []


def test_build_exits_non_zero_when_a_file_fails(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("会议室预订请提前一天在系统中登记。", encoding="utf-8")
    empty = tmp_path / "empty.md"
    empty.write_text("")
    result = kbqa("--data-dir", str(tmp_path / "data"), "index", "build", str(good), str(empty), "--kb", "kb")
    assert result.returncode == 1
    assert "added 1" in result.stdout and "failed 1" in result.stdout
    assert "empty.md: file is empty" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "--kb", "nope", "hello"], "knowledge base 'nope' does not exist"),
        (["kb", "info", "nope"], "knowledge base 'nope' does not exist"),
        (["kb", "create", "../escape"], "invalid knowledge-base name"),
        (["search", "--kb", "nope", "hello", "-k", "0"], "k: Input should be greater than or equal to 1"),
        (["search", "--kb", "nope", "hello", "--threshold", "2"], "score_threshold"),
    ],
)
def test_user_errors_are_messages_not_tracebacks(tmp_path: Path, args: list[str], message: str) -> None:
    result = kbqa("--data-dir", str(tmp_path / "data"), *args)
    assert result.returncode in (1, 2)
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_invalid_setting_stops_with_its_name(tmp_path: Path) -> None:
    result = kbqa("--data-dir", str(tmp_path), "kb", "list", env={"KBQA_SPLITTER__CHUNK_SIZE": "-5"})
    assert result.returncode == 2
    assert "KBQA_SPLITTER__CHUNK_SIZE" in result.stderr


def test_empty_query_is_refused(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    note = tmp_path / "note.txt"
    note.write_text("打印机在三楼东侧。", encoding="utf-8")
    kbqa("--data-dir", data, "index", "build", str(note), "--kb", "kb")
    result = kbqa("--data-dir", data, "search", "--kb", "kb", "   ")
    assert result.returncode == 1 and "the query is empty" in result.stderr


def test_build_with_meta_sets_metadata_and_bad_meta_is_refused(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    note = tmp_path / "note.txt"
    note.write_text("打印机在三楼东侧。", encoding="utf-8")
    build = ("--data-dir", data, "index", "build", str(note), "--kb", "kb")
    for bad, message in [
        ("team", "malformed metadata 'team': write key=value"),
        ("=hr", "malformed metadata '=hr'"),
        ("a b=1", "invalid metadata key 'a b'"),
    ]:
        result = kbqa(*build, "--meta", bad)
        assert result.returncode == 2, bad
        assert message in " ".join(result.stderr.split()) and "Traceback" not in result.stderr
    assert json.loads(kbqa("--data-dir", data, "kb", "list", "--json").stdout) == []  # nothing was created

    first = kbqa(*build, "--meta", "team=hr", "--meta", "floor=3")
    assert first.returncode == 0 and "added 1" in first.stdout, first.stderr
    second = kbqa(*build, "--meta", "team=it")
    assert second.returncode == 0 and "updated 1" in second.stdout and "0 chunks" in second.stdout
    info = json.loads(kbqa("--data-dir", data, "kb", "info", "kb", "--json").stdout)
    assert info["metadata"] == {"team": ["it"]}
    found = kbqa("--data-dir", data, "search", "--kb", "kb", "打印机", "--meta", "team=it", "--json")
    assert [hit["metadata"] for hit in json.loads(found.stdout)] == [{"team": "it"}]
    missed = kbqa("--data-dir", data, "search", "--kb", "kb", "打印机", "--meta", "team=hr", "--json")
    assert json.loads(missed.stdout) == []


def test_ask_marks_the_words_that_answer(tmp_path: Path) -> None:
    """`kbqa ask` prints the answering words bold (on a colour terminal) and `--json` gives their offsets."""
    data = str(tmp_path / "data")
    assert kbqa("--data-dir", data, "kb", "create", "demo").returncode == 0
    built = kbqa("--data-dir", data, "index", "build", "--kb", "demo", str(paths.SAMPLE_DOCS))
    assert built.returncode == 0, built.stderr
    asked = kbqa("--data-dir", data, "ask", "--kb", "demo", "--json", "星河X1 重量多少？")
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert answer["text"].startswith("重量：2.1 kg")
    assert [answer["text"][s["start"] : s["end"]] for s in answer["spans"]] == ["2.1 kg"]
    shown = kbqa("--data-dir", data, "ask", "--kb", "demo", "星河X1 重量多少？", env={"FORCE_COLOR": "1"})
    assert shown.returncode == 0, shown.stderr
    assert "重量：\x1b[1m2.1 kg\x1b[0m" in shown.stdout, repr(shown.stdout)
