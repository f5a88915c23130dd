"""Loading files, splitting them into chunks, and storing them in a knowledge base."""

from ingestion.config import IngestionConfig
from ingestion.loaders import SUPPORTED_SUFFIXES, Block, LoadedDocument, LoaderError, LoadLimits, load_file
from ingestion.pipeline import EMBED_STEP, IngestionPipeline, collect_files
from ingestion.prepare import DocumentPreparer, PreparedDocument, PreparedFiles
from ingestion.splitter import ChineseTextSplitter, Chunk, SplitterConfig
from ingestion.types import (
    ALREADY_STORED,
    FileOutcome,
    IngestionReport,
    Progress,
    RunOptions,
    SourceFile,
    Status,
)

__all__ = [
    "ALREADY_STORED",
    "EMBED_STEP",
    "SUPPORTED_SUFFIXES",
    "Block",
    "ChineseTextSplitter",
    "Chunk",
    "DocumentPreparer",
    "FileOutcome",
    "IngestionConfig",
    "IngestionPipeline",
    "IngestionReport",
    "LoadLimits",
    "LoadedDocument",
    "LoaderError",
    "PreparedDocument",
    "PreparedFiles",
    "Progress",
    "RunOptions",
    "SourceFile",
    "SplitterConfig",
    "Status",
    "collect_files",
    "load_file",
]
