"""How much a file may unpack to and hold before it is parsed: zip bombs and giant documents are refused.

Office files (.docx, .xlsx, .pptx) are ZIP packages of XML. A 62 KB .docx can unpack to 18 MB of XML,
which python-docx turns into a tree of about 35 times that in memory, so the package's entries are
checked from its central directory before any of it is parsed. The declared sizes can be trusted as
bounds: Python's zipfile never inflates an entry past its declared size.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .base import LoadedDocument, LoaderError

MIB = 1024 * 1024
# Suffixes of ZIP packages, and those whose XML parts a loader reads whole into a tree (not streamed).
ZIP_SUFFIXES = frozenset({".docx", ".xlsx", ".pptx"})
TREE_SUFFIXES = frozenset({".docx", ".pptx"})


class LoadLimits(BaseModel):
    """What a file may unpack to and hold (the `ingestion.max_…` settings, which `IngestionConfig` inherits)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    max_document_chars: int = Field(
        20_000_000, gt=0, description="A file whose text is longer fails with the reason."
    )
    max_unzipped_mb: float = Field(
        512.0,
        gt=0,
        description="A .docx/.xlsx/.pptx (ZIP package) unpacking to more MiB fails before it is parsed.",
    )
    max_tree_xml_mb: float = Field(
        16.0,
        gt=0,
        description="A .docx/.pptx whose XML unpacks to more MiB fails before it is parsed: it is read whole "
        "into a tree of about 35 times its size in memory.",
    )
    max_zip_entries: int = Field(
        10_000, gt=0, description="A ZIP package with more entries fails before it is parsed."
    )
    max_zip_ratio: float = Field(
        100.0,
        gt=1,
        description="A ZIP package of over 1 MiB unpacked that unpacks to more than this many times its size "
        "fails (a zip bomb); Office XML compresses about 5-20 times.",
    )


def check_package(path: Path, limits: LoadLimits) -> None:
    """Raise LoaderError when the ZIP package at `path` holds too many entries or unpacks too large.

    Checked: the entry count, the total unpacked size, the unpacked size of the XML a loader reads
    whole into a tree (.docx, .pptx), and the compression ratio (legitimate Office XML compresses
    about 5-20 times; a bomb hundreds of times). A file that is not a ZIP package is left to its loader,
    which says so.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as package:
            entries = package.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise LoaderError(f"not a valid ZIP package: {exc}") from exc
    if len(entries) > limits.max_zip_entries:
        raise LoaderError(
            f"the package holds {len(entries)} entries, more than {limits.max_zip_entries} "
            "(ingestion.max_zip_entries)"
        )
    unpacked = sum(entry.file_size for entry in entries)
    packed = sum(entry.compress_size for entry in entries)
    if unpacked > limits.max_unzipped_mb * MIB:
        raise LoaderError(
            f"the package unpacks to {unpacked / MIB:.0f} MiB, more than {limits.max_unzipped_mb:g} MiB "
            "(ingestion.max_unzipped_mb)"
        )
    if unpacked > MIB and unpacked > limits.max_zip_ratio * max(packed, 1):
        raise LoaderError(
            f"the package unpacks to {unpacked / max(packed, 1):.0f} times its size, more than "
            f"{limits.max_zip_ratio:g} (ingestion.max_zip_ratio): a zip bomb?"
        )
    if path.suffix.lower() in TREE_SUFFIXES:
        xml = sum(entry.file_size for entry in entries if entry.filename.lower().endswith((".xml", ".rels")))
        if xml > limits.max_tree_xml_mb * MIB:
            raise LoaderError(
                f"the document's XML unpacks to {xml / MIB:.0f} MiB, more than {limits.max_tree_xml_mb:g} MiB "
                "(ingestion.max_tree_xml_mb)"
            )


def check_text_size(document: LoadedDocument, limits: LoadLimits) -> None:
    """Raise LoaderError when the document's text is longer than `limits.max_document_chars`."""
    chars = sum(len(block.text) for block in document.blocks)
    if chars > limits.max_document_chars:
        raise LoaderError(
            f"the document holds {chars} characters of text, more than {limits.max_document_chars} "
            "(ingestion.max_document_chars)"
        )
