"""`kbqa runtime …`: the embedding runtime `auto` chose on this CPU, forced, shown and forgotten as a user does it."""

from __future__ import annotations

import json
from pathlib import Path

from test_cli import kbqa


def test_a_forced_runtime_is_shown_then_forgotten(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    shown = kbqa("runtime", "show", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["runtime"] is None  # nothing timed yet on this (fresh) cache

    below_bar = kbqa("runtime", "set", "onnx/int8", env=env)
    assert below_bar.returncode == 2
    assert "not a runtime within the quality bar" in below_bar.stderr

    forced = kbqa("runtime", "set", "onnx/int8-mixed", env=env)
    assert forced.returncode == 0, forced.stderr
    record = json.loads(kbqa("runtime", "show", "--json", env=env).stdout)
    assert (record["runtime"], record["quantize"], record["how"]) == ("onnx", "int8-mixed", "forced")
    assert Path(record["cache"]) == tmp_path / "kbqa" / "embedding-runtime.json"
    text = kbqa("runtime", "show", env=env).stdout
    assert "embedding runtime: onnx/int8-mixed (forced" in text

    cleared = kbqa("runtime", "clear", env=env)
    assert "forgot 1 cached embedding runtime choice" in cleared.stdout
    assert json.loads(kbqa("runtime", "show", "--json", env=env).stdout)["runtime"] is None


def test_a_pinned_runtime_is_shown_as_configured(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path), "KBQA_EMBEDDING__RUNTIME": "engine"}
    record = json.loads(kbqa("runtime", "show", "--json", env=env).stdout)
    assert (record["runtime"], record["how"]) == ("engine", "configured (not measured)")
    measured = kbqa("runtime", "measure", env=env)
    assert measured.returncode == 1 and "only the bundled model" in measured.stderr
