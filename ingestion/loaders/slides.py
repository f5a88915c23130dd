"""PowerPoint (.pptx) files with python-pptx: one section per slide, the slide number as its page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pptx
from pptx.enum.shapes import MSO_SHAPE_TYPE, PP_PLACEHOLDER
from pptx.shapes.base import BaseShape
from pptx.slide import Slide

from .base import Block, LoadedDocument, LoaderError
from .common import reason, require_zip, split_paragraphs, table_blocks
from .ocr import ImageReader

NOTES_HEADING = "Speaker notes"
_TITLE_PLACEHOLDERS = {PP_PLACEHOLDER.TITLE, PP_PLACEHOLDER.CENTER_TITLE, PP_PLACEHOLDER.VERTICAL_TITLE}


def load_pptx(path: Path, ocr: ImageReader | None = None) -> LoadedDocument:
    """Return a .pptx deck as blocks carrying their slide number as page, under the slide's title.

    Text frames and tables (as row blocks) come in reading order (top to bottom, then left to right),
    then the speaker notes; pictures are read by `ocr` when it reads embedded images.
    """
    require_zip(path, ".pptx", ".ppt")
    try:
        deck = pptx.Presentation(str(path))
        core_title = (deck.core_properties.title or "").strip()
        slides = list(deck.slides)
    except Exception as exc:
        # python-pptx raises KeyError, ValueError, lxml and zipfile errors on damaged packages.
        raise LoaderError(f"not a valid .pptx file: {reason(exc)}") from exc
    blocks: list[Block] = []
    problems: list[str] = []
    first_title = ""
    pictures = ocr if ocr is not None and ocr.reads_embedded_images else None
    for number, slide in enumerate(slides, start=1):
        try:
            title = _title(slide)
            blocks.extend(_slide_blocks(slide, number, title, pictures, problems))
        except LoaderError:
            raise
        except Exception as exc:
            raise LoaderError(f"not a valid .pptx file: slide {number}: {reason(exc)}") from exc
        first_title = first_title or title
    return LoadedDocument(
        title=core_title or first_title or path.stem, blocks=blocks, page_count=len(slides), problems=problems
    )


def _title(slide: Slide) -> str:
    """Return the text of the slide's title placeholder on one line, or "" when it has none."""
    title = slide.shapes.title
    return " ".join(title.text_frame.text.split()) if title is not None and title.has_text_frame else ""


def _slide_blocks(
    slide: Slide, number: int, title: str, pictures: ImageReader | None, problems: list[str]
) -> Iterator[Block]:
    """Yield the blocks of one slide: its shapes in reading order, then its speaker notes.

    Pictures are read by `pictures` when given; those that fail are added to `problems`.
    """
    heading_path = (title,) if title else ()
    for shape in _reading_order(slide.shapes):
        if _is_title(shape):
            continue
        if shape.has_text_frame:
            for paragraph in split_paragraphs(shape.text_frame.text.replace("\v", "\n")):
                yield Block(paragraph, page=number, heading_path=heading_path)
        elif getattr(shape, "has_table", False):  # only graphic frames have the attribute
            rows = [[cell.text for cell in row.cells] for row in shape.table.rows]
            yield from table_blocks(rows, heading_path, page=number)
        elif shape.shape_type == MSO_SHAPE_TYPE.PICTURE and pictures is not None:
            text = pictures.read_picture(shape.image.blob, f"slide {number}", problems)
            for paragraph in split_paragraphs(text):
                yield Block(paragraph, page=number, heading_path=heading_path, ocr=True)
    if slide.has_notes_slide and (notes := slide.notes_slide.notes_text_frame) is not None:
        for paragraph in split_paragraphs(notes.text.replace("\v", "\n")):
            yield Block(paragraph, page=number, heading_path=(*heading_path, NOTES_HEADING))


def _reading_order(shapes) -> Iterator[BaseShape]:
    """Yield the shapes top to bottom then left to right, a group's members in their own such order."""
    # A shape without a position of its own (inherited from a missing layout) counts as top left.
    for shape in sorted(shapes, key=lambda shape: (shape.top or 0, shape.left or 0)):
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _reading_order(shape.shapes)
        else:
            yield shape


def _is_title(shape: BaseShape) -> bool:
    """Return whether the shape is the slide's title placeholder (kept as the heading, not as text)."""
    return shape.is_placeholder and shape.placeholder_format.type in _TITLE_PLACEHOLDERS
