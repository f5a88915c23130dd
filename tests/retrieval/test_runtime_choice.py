"""`embedding.runtime: auto` for the bundled model: the fastest runtime that keeps the quality bar, cached per model and CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval import EmbeddingConfig
from retrieval.embedders import loading
from retrieval.embedders.runtime_choice import (
    QUALITY_BAR,
    Candidate,
    cached_choice,
    choose_runtime,
    clear_choices,
    eligible_candidates,
    force_choice,
    read_choices,
)

MODEL = "multilingual-e5-small"
MODEL_ID = {"model": MODEL, "size": 1, "head": "a"}
CPU = {"cpu": "AMD EPYC 9B14", "flags": "f1", "cores": 2}
# float32 at 0.986: int8 (0.978) is below the bar, int8-mixed (0.983) and bf16 within it.
RECALL = {
    MODEL: {
        ("torch", "none"): 0.986,
        ("torch", "bf16"): 0.986,
        ("onnx", "int8-mixed"): 0.983,
        ("onnx", "int8"): 0.978,
    }
}


class FakeClock:
    """A clock that moves only when a fake runtime works."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeRuntime:
    """An embedder whose every call takes `seconds` of the fake clock."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self._clock, self._seconds = clock, seconds

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        self._clock.now += self._seconds
        return np.zeros((len(texts), 4), np.float32)


def loader(clock: FakeClock, seconds: dict[str, float], loaded: list[str]):
    """Return a loader of fake runtimes that records what it loaded; a runtime missing from `seconds` fails."""

    def load(candidate: Candidate) -> FakeRuntime:
        loaded.append(candidate.label)
        if candidate.label not in seconds:
            raise ImportError(f"{candidate.label} is not installed")
        return FakeRuntime(clock, seconds[candidate.label])

    return load


def choose(tmp_path: Path, seconds: dict[str, float], loaded: list[str], **changes) -> tuple[str, str]:
    clock = FakeClock()
    arguments = {"model_id": MODEL_ID, "cpu": CPU} | changes
    return choose_runtime(
        MODEL,
        arguments["model_id"],
        loader(clock, seconds, loaded),
        path=tmp_path / "choice.json",
        clock=clock,
        cpu=arguments["cpu"],
        recall=RECALL,
    )


def test_the_fastest_eligible_runtime_is_chosen_and_the_reason_recorded(tmp_path: Path) -> None:
    loaded: list[str] = []
    seconds = {"torch/none": 2.0, "torch/bf16": 3.5, "onnx/int8-mixed": 1.2}
    assert choose(tmp_path, seconds, loaded) == ("onnx", "int8-mixed")
    (record,) = read_choices(tmp_path / "choice.json").values()
    assert record["how"] == "measured"
    assert record["texts_per_cpu_second"] == {"torch/none": 4.0, "torch/bf16": 2.29, "onnx/int8-mixed": 6.67}
    assert record["below_quality_bar"] == {"onnx/int8": 0.978}
    assert record["cpu"] == CPU and record["model"] == MODEL_ID
    # Slower on another machine: the same logic picks another runtime.
    seconds = {"torch/none": 2.0, "torch/bf16": 1.0, "onnx/int8-mixed": 1.2}
    assert choose(tmp_path, seconds, loaded, cpu=CPU | {"cpu": "Xeon 8480"}) == ("torch", "bf16")


def test_a_runtime_below_the_quality_bar_is_never_picked_nor_even_loaded(tmp_path: Path) -> None:
    loaded: list[str] = []
    seconds = {"torch/none": 2.0, "torch/bf16": 3.0, "onnx/int8-mixed": 2.5, "onnx/int8": 0.1}
    assert choose(tmp_path, seconds, loaded) == ("torch", "none")
    assert "onnx/int8" not in loaded
    assert {c.label for c in eligible_candidates(MODEL, RECALL)} == {
        "torch/none",
        "torch/bf16",
        "onnx/int8-mixed",
    }
    # The bar is float32's recall less QUALITY_BAR: exactly on it passes, a thousandth under does not.
    edge = {MODEL: {("torch", "none"): 0.986, ("onnx", "a"): 0.986 - QUALITY_BAR, ("onnx", "b"): 0.980}}
    assert [c.label for c in eligible_candidates(MODEL, edge)] == ["torch/none", "onnx/a"]
    # A model nobody measured runs in float32.
    assert eligible_candidates("unmeasured-model", RECALL) == [Candidate("torch", "none")]


def test_a_runtime_that_cannot_load_is_skipped_and_named(tmp_path: Path) -> None:
    loaded: list[str] = []
    assert choose(tmp_path, {"torch/none": 2.0, "torch/bf16": 3.0}, loaded) == ("torch", "none")
    (record,) = read_choices(tmp_path / "choice.json").values()
    assert record["failed"] == {"onnx/int8-mixed": "ImportError: onnx/int8-mixed is not installed"}


def test_the_choice_is_cached_and_made_again_when_the_model_or_cpu_changes(tmp_path: Path) -> None:
    loaded: list[str] = []
    seconds = {"torch/none": 2.0, "torch/bf16": 3.0, "onnx/int8-mixed": 1.0}
    assert choose(tmp_path, seconds, loaded) == ("onnx", "int8-mixed")
    assert len(loaded) == 3
    # Same model, same CPU: the cache answers, nothing is loaded or timed (even if speeds changed).
    assert choose(tmp_path, {"torch/none": 0.1}, loaded) == ("onnx", "int8-mixed")
    assert len(loaded) == 3
    # Another CPU (model name, flags or usable cores): timed again.
    other_cpu = CPU | {"cores": 8}
    assert choose(tmp_path, {"torch/none": 0.1, "torch/bf16": 0.5}, loaded, cpu=other_cpu) == (
        "torch",
        "none",
    )
    assert len(loaded) == 6
    # Another model file: timed again.
    other_model = MODEL_ID | {"head": "b"}
    assert choose(tmp_path, {"torch/bf16": 0.1}, loaded, model_id=other_model) == ("torch", "bf16")
    assert len(loaded) == 9
    assert len(read_choices(tmp_path / "choice.json")) == 3
    # Cleared: timed again on the next use.
    assert clear_choices(tmp_path / "choice.json") == 3
    assert choose(tmp_path, {"torch/bf16": 0.1}, loaded) == ("torch", "bf16")
    assert len(loaded) == 12


def test_an_unreadable_cache_is_measured_again_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "choice.json").write_text("{not json", encoding="utf-8")
    loaded: list[str] = []
    assert choose(tmp_path, {"torch/none": 1.0}, loaded) == ("torch", "none")
    assert json.loads((tmp_path / "choice.json").read_text(encoding="utf-8"))


def test_resolve_runtime_of_the_default_config_uses_the_cached_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model_id = loading.bundled_model_id()
    force_choice(model_id, Candidate("onnx", "int8-mixed"))
    assert loading.resolve_runtime(EmbeddingConfig()) == ("onnx", "int8-mixed")
    assert cached_choice(model_id)["how"] == "forced"
    force_choice(model_id, Candidate("torch", "bf16"))
    assert loading.resolve_runtime(EmbeddingConfig()) == ("torch", "bf16")
    # A pinned runtime or quantize is kept whatever the cache says.
    assert loading.resolve_runtime(EmbeddingConfig(runtime="torch")) == ("torch", "none")
    assert loading.resolve_runtime(EmbeddingConfig(quantize="int8-mixed")) == ("onnx", "int8-mixed")
