"""Logging: JSON lines off a terminal, and the third-party import-time noise kept out of a user's view."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from app.logs import configure_logging


@pytest.fixture
def restored_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_records_are_json_lines_and_torchao_import_warnings_are_quiet(
    restored_logging, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("WARNING")
    logging.getLogger("kbqa.test").warning("kept", extra={"kb": "demo"})
    logging.getLogger("torchao").warning("Failed to load _C_mxfp8.so")  # transformers imports torchao
    logging.getLogger("torch.utils._pytree").warning("register_constant is deprecated")
    logging.getLogger("torchao").error("a real failure still shows")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [
        ("kbqa.test", "kept"),
        ("torchao", "a real failure still shows"),
    ]
    assert lines[0]["kb"] == "demo" and lines[0]["level"] == "warning"


def test_using_kbqa_in_process_imports_torchao_quietly() -> None:
    # No configure_logging here, as in a script, a notebook or `kbqa finetune`: importing kbqa is enough.
    pytest.importorskip("torchao")
    script = "import app.services, torchao, transformers, torch.utils._pytree; print('imported')"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr
    noise = [line for line in done.stderr.splitlines() if "torchao" in line or "_pytree" in line]
    assert noise == [], noise
