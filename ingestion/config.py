"""How ingestion batches its work, and (inherited) the limits a file is loaded under."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ingestion.loaders import LoadLimits, OcrConfig


class _Batching(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    batch_chunks: int = Field(
        256,
        gt=0,
        description="Chunks gathered, across files, before one database transaction (embedded EMBED_STEP at "
        "a time, the progress and stop points of a job). Each transaction holds whole documents only.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes that read and parse files (PDF, Word, ...) side by side. 1: one thread, "
        "which still reads the next files while a batch is embedded; more helps with many large "
        "documents to parse (each extra process starts in about a second).",
    )
    ocr: OcrConfig = Field(
        default_factory=OcrConfig,
        description="OCR of scanned PDF pages, image files and pictures in documents.",
    )


# LoadLimits first among the bases so that the settings keep their order: batching, then the limits.
class IngestionConfig(LoadLimits, _Batching):
    """How ingestion batches its work, and the limits a file is loaded under (`ingestion.max_…`)."""

    def load_limits(self) -> LoadLimits:
        """Return the limits a file is loaded under, without the batching settings."""
        return LoadLimits(**self.model_dump(include=set(LoadLimits.model_fields)))
