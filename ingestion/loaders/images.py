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

    unreadable = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)
    try:
        image = Image.open(path)
    except unreadable as exc:
        raise LoaderError(f"not a readable image: {reason(exc)}") from exc
    with image:
        count = getattr(image, "n_frames", 1)
        document = LoadedDocument(title=path.stem, page_count=count if count > 1 else None)
        # One frame decoded at a time: a scanned fax of hundreds of pages is not held in memory at once.
        for number, frame in enumerate(ImageSequence.Iterator(image), start=1):
            page = number if count > 1 else None
            where = f"page {number}/{count}" if page else "image"
            try:
                frame.load()
                text = ocr.read_image(frame, where)
            except unreadable as exc:
                if number == 1:
                    raise LoaderError(f"not a readable image: {reason(exc)}") from exc
                document.problems.append(f"{where}: not a readable image: {reason(exc)}")
                continue
            except LoaderError as error:
                # One unreadable frame must not lose the others.
                document.problems.append(str(error))
                continue
            document.blocks.extend(Block(part, page=page, ocr=True) for part in split_paragraphs(text))
    return document
