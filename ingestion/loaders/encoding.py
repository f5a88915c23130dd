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
    encoding = _bomless_utf16(data) or encoding
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        pass
    best = from_bytes(data, cp_isolation=list(CHINESE_ENCODINGS)).best() or from_bytes(data).best()
    if best is None:
        raise LoaderError("could not detect the text encoding (tried UTF-8, GB18030/GBK and Big5)")
    return str(best)


def _bomless_utf16(data: bytes) -> str | None:
    """Return "utf-16-le" or "utf-16-be" when `data` looks like UTF-16 without a BOM, else None.

    Such text is valid UTF-8 byte for byte when it is mostly ASCII ("U\\x00T\\x00F\\x00…"), so it must
    be caught before UTF-8 is tried: every Latin letter, digit and space puts a zero byte on one side
    of its pair, and other text files hold no zero bytes.
    """
    sample = data[: _UTF16_SAMPLE_BYTES - _UTF16_SAMPLE_BYTES % 2]
    if len(sample) < 4 or len(data) % 2:
        return None
    pairs = len(sample) // 2
    even, odd = sample[0::2].count(0) / pairs, sample[1::2].count(0) / pairs
    if odd >= _UTF16_ZERO_SHARE and even <= _UTF16_STRAY_SHARE:
        return "utf-16-le"
    if even >= _UTF16_ZERO_SHARE and odd <= _UTF16_STRAY_SHARE:
        return "utf-16-be"
    return None


# How much of a file is looked at for zero bytes, and the share of pairs that must hold one: a text a
# quarter ASCII (Chinese with numbers, names and spaces) still counts.
_UTF16_SAMPLE_BYTES = 65536
_UTF16_ZERO_SHARE = 0.25
# A zero byte on the other side comes from the one in 256 characters with a zero low byte (一 is 4E00).
_UTF16_STRAY_SHARE = 0.02


def read_text(path: Path) -> str:
    """Return the text of the file at `path`, decoded by `decode_bytes`, with newlines made "\\n"."""
    return decode_bytes(path.read_bytes()).replace("\r\n", "\n").replace("\r", "\n")
