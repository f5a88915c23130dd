"""The heap a job used, handed back to the system: large uploads must not leave a server larger for good."""

from __future__ import annotations

import contextlib
import ctypes
import gc

# Heap blocks of this many bytes or more are mapped on their own, so freeing one returns it (map_large_blocks).
LARGE_BLOCK = 4 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def map_large_blocks() -> None:
    """Have glibc give every block of `LARGE_BLOCK` bytes or more its own mapping, for the rest of the
    process; return nothing.

    By default glibc raises its mmap threshold (up to 32 MiB) each time it frees a mapped block, so the
    buffers of the next large upload come from the heap instead, where malloc_trim cannot always return
    them: a server that had served other requests kept about 40 MiB more after every second or third
    2e6-deep HTML page (8 pages: +157 MiB), and none with the threshold fixed at 4 MiB
    (tests/app/server/test_under_load.py). A fixed threshold costs a mapping per large block, which is
    nothing beside what such a block is for. Elsewhere than glibc there is no mallopt, and nothing to do.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK)


def return_freed_memory() -> None:
    """Hand the heap memory a job freed back to the system; return nothing.

    glibc keeps freed memory for reuse, and raises its mmap threshold after large blocks are freed, so a
    22 MB page read once stayed resident (+71 MiB 10 s after its job ended, `bench/abuse.py`) until
    trimmed. Elsewhere than glibc there is no malloc_trim, and nothing to do.
    """
    gc.collect()  # what a job left in reference cycles (an exception and the frames it holds) goes first
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
