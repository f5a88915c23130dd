"""Reading text from images (scanned pages, photos, pictures in documents) with RapidOCR, offline.

RapidOCR (the `ocr` extra, `rapidocr-onnxruntime`) ships its PP-OCRv4 Chinese/English detection and
recognition models inside its wheel, so nothing is downloaded. It is imported on first use only.
"""

from __future__ import annotations

import importlib.util
import io
import threading
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .base import LoaderError
from .common import reason

OCR_PACKAGE = "rapidocr_onnxruntime"
INSTALL_HINT = "install the OCR extra to read it: pip install 'kbqa[ocr]'"
# A recognised piece below this confidence is more often noise (a stamp, a texture) than text.
_MIN_SCORE = 0.5
# Longest side an image is read at: RapidOCR shrinks larger ones to this itself (max_side_len).
_MAX_SIDE = 2000


class OcrConfig(BaseModel):
    """When ingestion reads text from images."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    enabled: Literal["auto", "on", "off"] = Field(
        "auto",
        description="auto: OCR scanned PDF pages and image files when the `ocr` extra is installed; "
        "on: the same, and a missing extra fails ingestion; off: never (images are refused).",
    )
    embedded_images: bool = Field(
        False,
        description="Also OCR the pictures inside .docx and .pptx files. Off by default: each picture costs "
        "about as much as a scanned page (0.5-2 s on two cores), and most are photos or logos without text.",
    )
    min_page_chars: int = Field(
        20,
        ge=0,
        description="A PDF page whose text layer has fewer characters than this over images covering most "
        "of the page (or none at all) is treated as scanned and OCR'd.",
    )
    dpi: int = Field(
        200,
        ge=72,
        le=400,
        description="Resolution scanned PDF pages are rendered at for OCR. At 150 the recogniser drops the "
        "spaces between English words of 10-12 pt text; time grows with the square of it.",
    )


class ImageReader:
    """Reads the text of images as an OcrConfig says, and tells `on_image` before each one."""

    def __init__(
        self, config: OcrConfig | None = None, on_image: Callable[[str], None] | None = None
    ) -> None:
        self.config = config or OcrConfig()
        self.on_image = on_image
        if self.config.enabled == "on" and not ocr_installed():
            # A settings error, not a file's: the CLI and the job report it once, before any file.
            raise ValueError(f"ingestion.ocr.enabled is 'on' but OCR is not installed; {INSTALL_HINT}")

    @property
    def available(self) -> bool:
        """Return whether images can be read: OCR is not off and its package is installed."""
        return self.config.enabled != "off" and ocr_installed()

    @property
    def reads_embedded_images(self) -> bool:
        """Return whether pictures inside documents are to be read."""
        return self.config.embedded_images and self.available

    def why_not(self) -> str:
        """Return why images cannot be read, as the end of a sentence ("" when they can)."""
        if self.config.enabled == "off":
            return "OCR is off (ingestion.ocr.enabled)"
        return "" if self.available else f"OCR is not installed; {INSTALL_HINT}"

    def read_image(self, image: Any, where: str) -> str:
        """Return the text of an image (encoded bytes, a PIL image or a BGR array), lines in reading order.

        `where` names the image in progress reports and errors ("page 3/12"). Raises LoaderError when
        OCR is unavailable or the image cannot be decoded or read.
        """
        if not self.available:
            raise LoaderError(f"{where}: cannot read an image: {self.why_not()}")
        if isinstance(image, bytes | bytearray):
            image = _decode_image(bytes(image), where)
        if not hasattr(image, "shape"):  # a PIL image; an array is taken as it is
            image = _rgb(image)
        if self.on_image:
            self.on_image(where)
        try:
            with _ENGINE_LOCK:
                result, _ = _engine()(image)
        except Exception as exc:
            raise LoaderError(f"{where}: OCR failed: {reason(exc)}") from exc
        return lines_text(
            [(box, text) for box, text, score in result or [] if float(score) >= _MIN_SCORE and text.strip()]
        )

    def read_picture(self, image: Any, where: str, problems: list[str]) -> str:
        """Return the text of a picture inside a document, or "" with the reason added to `problems`."""
        try:
            return self.read_image(image, where)
        except LoaderError as error:
            # A picture is a small part of its document: the rest of the file is still worth keeping.
            problems.append(str(error))
            return ""


def ocr_installed() -> bool:
    """Return whether the OCR package (the `ocr` extra) is installed."""
    return importlib.util.find_spec(OCR_PACKAGE) is not None


_ENGINE_LOCK = threading.Lock()
_ENGINE: Any = None


def _engine() -> Any:
    """Return the process's RapidOCR engine, loading its models on first use (the caller holds the lock)."""
    global _ENGINE
    if _ENGINE is None:
        from rapidocr_onnxruntime import RapidOCR

        _ENGINE = RapidOCR()
    return _ENGINE


def _decode_image(data: bytes, where: str) -> Any:
    """Return encoded image bytes (PNG, JPEG, TIFF, BMP, WebP, GIF) as a PIL image."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise LoaderError(f"{where}: not a readable image: {reason(exc)}") from exc


def _rgb(image: Any) -> Any:
    """Return a PIL image as RGB (alpha laid onto white), its longer side at most _MAX_SIDE pixels."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
    image = image.convert("RGB")
    if max(image.size) > _MAX_SIDE:
        # Detection time grows with the pixels; a phone photo's text stays legible at this size.
        image.thumbnail((_MAX_SIDE, _MAX_SIDE), Image.Resampling.LANCZOS)
    return image


def lines_text(pieces: list[tuple[Any, str]]) -> str:
    """Return recognised text pieces (box corners, text) as lines in reading order.

    Pieces whose vertical middles fall within one another's height are one line, read left to right;
    a gap taller than a line between two lines starts a new paragraph (a blank line).
    """
    boxes = []
    for box, text in pieces:
        xs, ys = [float(point[0]) for point in box], [float(point[1]) for point in box]
        boxes.append((min(ys), max(ys), min(xs), text.strip()))
    boxes.sort()
    lines: list[list[tuple[float, float, float, str]]] = []
    for box in boxes:
        middle = (box[0] + box[1]) / 2
        if lines and lines[-1][0][0] <= middle <= lines[-1][0][1]:
            lines[-1].append(box)
        else:
            lines.append([box])
    out: list[str] = []
    previous_bottom = None
    for line in lines:
        top, bottom = min(b[0] for b in line), max(b[1] for b in line)
        if previous_bottom is not None and top - previous_bottom > bottom - top:
            out.append("")
        words = [b[3] for b in sorted(line, key=lambda b: b[2])]
        out.append("".join(_spaced(words)))
        previous_bottom = bottom
    return "\n".join(out)


def _spaced(words: list[str]) -> list[str]:
    """Return the words of a line with a space before each that follows a Latin letter or digit."""
    out = words[:1]
    for left, right in zip(words, words[1:], strict=False):
        joint = " " if left[-1].isascii() or right[0].isascii() else ""
        out.append(joint + right)
    return out
