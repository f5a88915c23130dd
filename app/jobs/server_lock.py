"""One server per data directory: the claim a SQLite job queue's server holds on it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

SERVER_LOCK_FILE = "server.lock"


class DataDirectoryInUse(RuntimeError):
    """Another live server runs on this data directory."""


class ServerLock:
    """The claim of one server on a data directory: an exclusive lock on `<data_dir>/server.lock`.

    Two servers on one directory would each requeue the other's running jobs at start and delete their
    staged files, so the second is refused. The lock is the kernel's (flock): it goes with the process,
    so a server killed with -9 leaves nothing to clean up.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._file: object | None = None

    def acquire(self) -> None:
        """Hold the data directory; raise DataDirectoryInUse, naming the other server's pid, when one holds it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.data_dir / SERVER_LOCK_FILE, "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise DataDirectoryInUse(
                f"another kbqa server (pid {holder}) is running on the data directory {self.data_dir.resolve()}; "
                "one server per data directory: stop that one first, or give this one its own --data-dir"
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        self._file = lock_file

    def release(self) -> None:
        """Let the data directory go; return nothing."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
