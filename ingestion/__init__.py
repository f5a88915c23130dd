"""Loading files, splitting them into chunks, and storing them in a knowledge base."""

from ingestion.loaders import SUPPORTED_SUFFIXES, Block, LoadedDocument, LoaderError, load_file
from ingestion.pipeline import (
    FileOutcome,
    IngestionConfig,
    IngestionPipeline,
    IngestionReport,
    SourceFile,
    collect_files,
)
from ingestion.splitter import ChineseTextSplitter, Chunk, SplitterConfig

__all__ = [
    "SUPPORTED_SUFFIXES",
    "Block",
    "ChineseTextSplitter",
    "Chunk",
    "FileOutcome",
    "IngestionConfig",
    "IngestionPipeline",
    "IngestionReport",
    "LoadedDocument",
    "LoaderError",
    "SourceFile",
    "SplitterConfig",
    "collect_files",
    "load_file",
]
