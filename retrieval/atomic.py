"""Crash-safe file replacement: write a temporary file, fsync it, rename it over the target."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` to fill a temporary file, then make it `path` in one rename; return nothing.

    Readers and a crash at any moment see either the old file or the new one, never a partial one.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) atomically; return nothing."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry so a rename inside it survives a power loss; return nothing."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
