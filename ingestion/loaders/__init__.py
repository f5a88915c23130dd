"""Document loaders: `load_file` turns a supported file into a LoadedDocument of text blocks."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path

from .base import BLOCK_SEPARATOR, Block, LoadedDocument, LoaderError
from .limits import ZIP_SUFFIXES, LoadLimits, check_package, check_text_size
from .ocr import ImageReader, OcrConfig

__all__ = [
    "BLOCK_SEPARATOR",
    "IMAGE_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "Block",
    "ImageReader",
    "LoadLimits",
    "LoadedDocument",
    "LoaderError",
    "OcrConfig",
    "check_package",
    "load_file",
]

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")

# Suffix -> (module, function). Modules are imported on first use: pypdf, python-docx, openpyxl and
# BeautifulSoup cost about half a second together, which `kbqa --help` and the web app should not pay.
_LOADERS: dict[str, tuple[str, str]] = {
    ".csv": ("table", "load_csv"),
    ".docx": ("word", "load_docx"),
    ".htm": ("html", "load_html"),
    ".html": ("html", "load_html"),
    ".json": ("records", "load_json"),
    ".jsonl": ("records", "load_jsonl"),
    ".markdown": ("text", "load_markdown"),
    ".md": ("text", "load_markdown"),
    ".pdf": ("pdf", "load_pdf"),
    ".pptx": ("slides", "load_pptx"),
    ".txt": ("text", "load_text"),
    ".xlsx": ("table", "load_xlsx"),
} | {suffix: ("images", "load_image") for suffix in IMAGE_SUFFIXES}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(sorted(_LOADERS))
# Loaders that read images (scanned pages, pictures) and so take an ImageReader as well as the path.
_READ_IMAGES = {".pdf", ".docx", ".pptx", *IMAGE_SUFFIXES}


def load_file(
    path: Path | str, ocr: ImageReader | None = None, limits: LoadLimits | None = None
) -> LoadedDocument:
    """Return the text blocks of the file at `path`; raise LoaderError saying why when it cannot be read.

    `ocr` reads scanned PDF pages, image files and (when its config says so) pictures inside documents;
    without it they are read with the default OCR settings. A ZIP package (.docx, .xlsx, .pptx) is
    checked against `limits` before it is parsed, and the text of every file after (LoaderError when
    over them).
    """
    limits = limits or LoadLimits()
    path = Path(path)
    ocr = ocr or ImageReader()
    suffix = path.suffix.lower()
    if suffix not in _LOADERS:
        kind = f"'{suffix}'" if suffix else "(no extension)"
        raise LoaderError(f"unsupported file type {kind}; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    loader = _loader(suffix)
    try:
        if path.stat().st_size == 0:
            raise LoaderError("file is empty")
        if suffix in ZIP_SUFFIXES:
            check_package(path, limits)
        document = loader(path, ocr) if suffix in _READ_IMAGES else loader(path)
    except OSError as exc:
        raise LoaderError(f"cannot read file: {exc.strerror or exc}") from exc
    if not any(block.text.strip() for block in document.blocks):
        hint = _no_text_hint(suffix, ocr)
        problems = "; ".join(document.problems)
        raise LoaderError(
            "no text could be extracted"
            + (f": {hint}" if hint else "")
            + (f" ({problems})" if problems else "")
        )
    check_text_size(document, limits)
    return document


def _no_text_hint(suffix: str, ocr: ImageReader) -> str:
    """Return the likely reason a file of this type yielded no text ("" when there is none to give)."""
    if suffix == ".pdf":
        why = ocr.why_not() or "OCR found no text on them"
        return f"the PDF looks scanned (pages are images) and {why}"
    if suffix in IMAGE_SUFFIXES:
        return ocr.why_not() or "OCR found no text in the image"
    return ""


def _loader(suffix: str) -> Callable[[Path], LoadedDocument]:
    """Return the loader function for a supported suffix, importing its module now."""
    module, function = _LOADERS[suffix]
    return getattr(import_module(f"{__name__}.{module}"), function)
