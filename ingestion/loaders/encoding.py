"""Turning the bytes of a text file into str when nobody says which encoding they are in."""

from __future__ import annotations

import codecs
from pathlib import Path

from charset_normalizer import from_bytes

from .base import LoaderError

# Chinese files that are not UTF-8 are nearly always GBK/GB2312 (mainland) or Big5 (Taiwan, Hong Kong);
# GB18030 is a superset of GBK and GB2312. Restricting the detector to these keeps it from "finding" a
# Korean or Cyrillic code page in Chinese bytes, which it does on short texts when left free. Texts of
# only a few characters can still be read as the wrong one of the two.
CHINESE_ENCODINGS = ("gb18030", "big5")


def decode_bytes(data: bytes) -> str:
    """Return `data` decoded by its BOM, else as strict UTF-8, else by the detected (Chinese) encoding."""
    # utf-8-sig reads UTF-8 with and without a BOM.
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        pass
    best = from_bytes(data, cp_isolation=list(CHINESE_ENCODINGS)).best() or from_bytes(data).best()
    if best is None:
        raise LoaderError("could not detect the text encoding (tried UTF-8, GB18030/GBK and Big5)")
    return str(best)


def read_text(path: Path) -> str:
    """Return the text of the file at `path`, decoded by `decode_bytes`, with newlines made "\\n"."""
    return decode_bytes(path.read_bytes()).replace("\r\n", "\n").replace("\r", "\n")
