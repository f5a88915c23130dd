"""One home for an upload's files: their names, staged until their job has run, then kept as originals.

An upload's files are written to `<data_dir>/uploads/<job>/` (under a name every file system takes) before
its job is queued. Once the job has run, each file whose document is stored becomes that document's
original, `<kb>/originals/<source>` (`KnowledgeService.original_path`), and the rest are dropped. On the
PostgreSQL store the queue keeps the files in the database instead, and a worker unpacks its job's files
into `<data_dir>/work/<job>/`.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, BinaryIO, Protocol

from ingestion import SourceFile

if TYPE_CHECKING:
    from retrieval import DocumentRecord

log = logging.getLogger(__name__)

# File systems take names of at most 255 bytes; longer ones are shortened, leaving room for temporary suffixes.
MAX_NAME_BYTES = 200
MAX_FILE_NAME_CHARS = 1000
_CHUNK = 1 << 20


class UploadRefused(ValueError):
    """An uploaded file that is not taken: `code` says why (invalid_file_name, unsupported_type,
    file_too_large, empty_file)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def storage_name(name: str) -> str:
    """Return `name` as a file name every file system takes: itself when short enough, else its start, a
    digest of the whole name (so two long names never meet) and its suffix (so its type is still known)."""
    encoded = name.encode("utf-8")
    if len(encoded) <= MAX_NAME_BYTES:
        return name
    suffix = PurePosixPath(name).suffix
    suffix = suffix if len(suffix.encode("utf-8")) <= 16 else ""
    digest = hashlib.sha256(encoded).hexdigest()[:16]
    room = MAX_NAME_BYTES - len(suffix.encode("utf-8")) - len(digest) - 1
    start = encoded[:room].decode("utf-8", "ignore")  # never half a character
    return f"{start}-{digest}{suffix}"


def original_file(kb_folder: Path, source: str) -> Path:
    """Return where, in a knowledge base's folder, the original file of the document `source` is kept."""
    return kb_folder.joinpath("originals", *(storage_name(part) for part in PurePosixPath(source).parts))


def file_name(raw: str | None, allowed: Sequence[str]) -> str:
    """Return the upload's file name without any folder part; UploadRefused for none or a type not allowed."""
    name = PureWindowsPath(PurePosixPath(raw or "").name).name.strip()
    if not name or name.startswith(".") or name in ("..",):
        raise UploadRefused("invalid_file_name", f"not a usable file name: {raw!r}")
    if len(name) > MAX_FILE_NAME_CHARS:
        raise UploadRefused(
            "invalid_file_name", f"a file name may hold at most {MAX_FILE_NAME_CHARS} characters"
        )
    suffix = Path(name).suffix.lower()
    if suffix not in allowed:
        raise UploadRefused(
            "unsupported_type",
            f"'{name}': type '{suffix or name}' is not allowed; allowed: {', '.join(allowed)}",
        )
    return name


def stage(stream: BinaryIO, folder: Path, name: str, max_mb: float) -> SourceFile:
    """Copy the uploaded file `name` from `stream` into the staging `folder`; return it as a file to ingest.

    UploadRefused as soon as it passes `max_mb` MiB, or when it is empty. A long name is shortened on disk;
    the document keeps the name it was uploaded with.
    """
    path = folder / storage_name(name)
    limit, size = int(max_mb * 1024 * 1024), 0
    with path.open("wb") as out:
        while chunk := stream.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise UploadRefused("file_too_large", f"'{name}' is larger than {max_mb:g} MiB")
            out.write(chunk)
    if size == 0:
        raise UploadRefused("empty_file", f"'{name}' is empty")
    return SourceFile(path, name)


class Library(Protocol):
    """What `Uploads` asks of the knowledge service (`app.services.KnowledgeService` is one): a protocol, so
    this module stays below the service that uses it."""

    def names(self) -> list[str]:
        """Return the names of the knowledge bases."""
        ...

    def documents(self, name: str) -> list[DocumentRecord]:
        """Return the documents of a knowledge base."""
        ...

    def kb_folder(self, name: str) -> Path:
        """Return the folder of a knowledge base on this node."""
        ...

    def original_path(self, name: str, source: str) -> Path:
        """Return where the original file of a document is kept."""
        ...


class Uploads:
    """The staged files of the jobs of one data directory, and the originals they become."""

    def __init__(self, library: Library, data_dir: Path) -> None:
        self.library = library
        self.folder = data_dir / "uploads"
        self.work_dir = data_dir / "work"  # a PostgreSQL worker's unpacked files

    def staging_dir(self) -> tuple[str, Path]:
        """Return a new job id and the empty folder its uploaded files go to."""
        job_id = uuid.uuid4().hex
        folder = self.folder / job_id
        folder.mkdir(parents=True)
        return job_id, folder

    def discard(self, job_id: str) -> None:
        """Delete what is left of a job's staged files; return nothing."""
        shutil.rmtree(self.folder / job_id, ignore_errors=True)

    def remove_leftovers(self, unfinished: set[str]) -> None:
        """Delete staging folders no unfinished job needs: an upload a crash cut short, before its job was saved."""
        if not self.folder.is_dir():
            return
        for folder in self.folder.iterdir():
            if folder.name not in unfinished:
                log.info("removing an interrupted upload", extra={"folder": str(folder)})
                shutil.rmtree(folder, ignore_errors=True)

    def keep_originals(self, kb: str, files: Sequence[SourceFile]) -> None:
        """Move each file (none of them failed) whose document is stored under its name to where that
        document's original is kept; return nothing.

        A file skipped as unchanged counts too: a job resumed after a crash finds its first files stored.
        """
        stored = {d.source for d in self.library.documents(kb)}
        for file in files:
            target = self.library.original_path(kb, file.source)
            if file.source in stored and file.path != target:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(file.path, target)

    def remove_orphan_originals(self) -> None:
        """Delete kept originals whose document is gone: a delete commits, then unlinks, and a crash between
        the two would leave the file for ever (nothing else runs on the data directory at start)."""
        for name in self.library.names():
            folder = self.library.kb_folder(name) / "originals"
            if not folder.is_dir():
                continue
            try:
                kept = {self.library.original_path(name, d.source) for d in self.library.documents(name)}
            except Exception:  # a knowledge base that does not open is reported when it is used
                log.exception("could not list the documents of a knowledge base", extra={"kb": name})
                continue
            for path in folder.rglob("*"):
                if path.is_file() and path not in kept:
                    log.info(
                        "removing the original of a deleted document", extra={"kb": name, "path": str(path)}
                    )
                    path.unlink(missing_ok=True)

    def clear_work(self, job_id: str | None = None) -> None:
        """Delete the files a worker unpacked for one job, or for all (what a killed worker left); return nothing."""
        shutil.rmtree(self.work_dir if job_id is None else self.work_dir / job_id, ignore_errors=True)

    def unpack(
        self, job_id: str, names: Sequence[str], uploads: Sequence[tuple[int, str, bytes]]
    ) -> list[SourceFile]:
        """Write a claimed job's files, (ordinal, source, content) from the database, where this worker reads
        them; return them as files to ingest, each under the name it was uploaded with."""
        folder = self.work_dir / job_id
        shutil.rmtree(folder, ignore_errors=True)
        files = []
        for ordinal, source, content in uploads:
            path = folder / str(ordinal) / (names[ordinal] if ordinal < len(names) else storage_name(source))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            files.append(SourceFile(path, source))
        return files
