"""How much a file may unpack to and hold before it is parsed: zip bombs and giant documents are refused.

Office files (.docx, .xlsx, .pptx) are ZIP packages of XML. A 62 KB .docx can unpack to 18 MB of XML,
which python-docx turns into a tree of about 35 times that in memory, so the package's entries are
checked from its central directory before any of it is parsed. The declared sizes can be trusted as
bounds: Python's zipfile never inflates an entry past its declared size.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from .base import LoadedDocument, LoaderError

MIB = 1024 * 1024
# Suffixes of ZIP packages, and those whose XML parts a loader reads whole into a tree (not streamed).
ZIP_SUFFIXES = frozenset({".docx", ".xlsx", ".pptx"})
TREE_SUFFIXES = frozenset({".docx", ".pptx"})


@dataclass(frozen=True)
class LoadLimits:
    """What a file may unpack to and hold (the `ingestion.max_…` settings)."""

    max_document_chars: int = 20_000_000
    max_unzipped_mb: float = 512.0
    max_tree_xml_mb: float = 16.0
    max_zip_entries: int = 10_000
    max_zip_ratio: float = 100.0


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
