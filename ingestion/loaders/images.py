"""Image files (photos, scans, screenshots) read by OCR; each frame of a multi-page TIFF is a page."""

from __future__ import annotations

from pathlib import Path

from .base import Block, LoadedDocument, LoaderError
from .common import reason, split_paragraphs
from .ocr import ImageReader


def load_image(path: Path, ocr: ImageReader) -> LoadedDocument:
    """Return the OCR'd text of an image file; a multi-frame TIFF's frames carry their page numbers."""
    if not ocr.available:
        raise LoaderError(f"an image is read by OCR, and {ocr.why_not()}")
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            frames = [frame.copy() for frame in ImageSequence.Iterator(image)]
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise LoaderError(f"not a readable image: {reason(exc)}") from exc
    document = LoadedDocument(title=path.stem, page_count=len(frames) if len(frames) > 1 else None)
    for number, frame in enumerate(frames, start=1):
        page = number if len(frames) > 1 else None
        where = f"page {number}/{len(frames)}" if page else "image"
        try:
            text = ocr.read_image(frame, where)
        except LoaderError as error:
            # One unreadable frame of a scanned fax must not lose the others.
            document.problems.append(str(error))
            continue
        document.blocks.extend(Block(part, page=page, ocr=True) for part in split_paragraphs(text))
    return document
