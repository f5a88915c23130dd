"""Documents: upload (indexed by a background job), list, get, download the original, delete, re-index."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse

from app.jobs import IngestionJobs, Job
from app.keys import Caller
from app.server.dependencies import bearer, editor, jobs, knowledge, loaded, reader
from app.server.errors import ApiError
from app.server.schemas import DocumentOut, ErrorOut, GroupsIn, JobAccepted, JobOut, ListOf
from app.services import KnowledgeService
from app.uploads import UploadRefused, file_name, stage
from ingestion import SourceFile
from retrieval import check_groups, check_metadata

T = TypeVar("T")

router = APIRouter(prefix="/v1/kbs/{kb}/documents", tags=["documents"], dependencies=[Depends(bearer)])

# The HTTP status of each reason an uploaded file is refused for (`app/uploads.py`).
_REFUSED_STATUS = {
    "invalid_file_name": 400,
    "unsupported_type": 415,
    "file_too_large": 413,
    "empty_file": 400,
}


def job_out(job: Job) -> JobOut:
    """Return the API view of a job."""
    return JobOut.model_validate(asdict(job))


@router.post(
    "",
    status_code=202,
    summary="Upload documents",
    dependencies=[Depends(loaded)],
    response_model=JobAccepted,
    responses={415: {"model": ErrorOut, "description": "A file type not allowed (server.allowed_types)"}},
)
def upload(
    kb: str,
    request: Request,
    files: list[UploadFile] = File(..., description="One or many files."),
    metadata: str | None = Form(None, description='Metadata for every file, a JSON object: {"team": "hr"}.'),
    groups: str | None = Form(
        None,
        description="Access groups of every file, comma-separated (`hr,finance`): only keys sharing one see "
        "them; none: every reader of the knowledge base (a key with groups must give some of its own).",
    ),
    service: KnowledgeService = Depends(knowledge),
    ingestion: IngestionJobs = Depends(jobs),
    who: Caller = Depends(editor),
) -> JobAccepted:
    """Store the files and return at once with the job that indexes them (poll `/v1/jobs/{id}`)."""
    server = request.app.state.settings.server
    service.info(kb)  # 404 before anything is stored
    tags = _metadata(metadata)
    access = _groups_for(who, kb, _parse_groups(groups))
    if len(files) > server.max_upload_files:
        raise ApiError(413, "too_many_files", f"at most {server.max_upload_files} files per upload")
    names = [_refused_as_error(file_name, f.filename, server.allowed_types) for f in files]
    if len(set(names)) != len(names):
        raise ApiError(400, "duplicate_file_names", "two files of this upload have the same name")
    if (own := who.groups_in(kb)) is not None:
        # A file replaces the document of its name: a key limited to groups must not replace one it cannot see.
        seen = {d.source for d in service.documents(kb, own)}
        taken = [
            name for name in names if name not in seen and name in {d.source for d in service.documents(kb)}
        ]
        if taken:
            raise ApiError(
                409, "document_not_yours", f"'{taken[0]}' names a document this key may not replace"
            )
    job_id, folder = ingestion.staging_dir()
    try:
        staged = [
            _refused_as_error(stage, upload.file, folder, name, server.max_upload_mb)
            for upload, name in zip(files, names, strict=True)
        ]
        job = ingestion.submit(kb, staged, metadata=tags, job_id=job_id, groups=access)
    except BaseException:
        ingestion.uploads.discard(job_id)
        raise
    request.state.audit = {"job": job.id, "files": names, "groups": access}
    return JobAccepted(job=job_out(job))


def document_out(document: object) -> DocumentOut:
    """Return the API view of a document."""
    return DocumentOut.model_validate(asdict(document))  # type: ignore[call-overload]


@router.get("", summary="List documents")
def list_documents(
    kb: str, service: KnowledgeService = Depends(knowledge), who: Caller = Depends(reader)
) -> ListOf:
    """Return the knowledge base's documents the key may read, oldest first."""
    return ListOf(data=[document_out(d) for d in service.documents(kb, who.groups_in(kb))])


@router.get("/{document_id}", summary="Get a document")
def get_document(
    kb: str, document_id: int, service: KnowledgeService = Depends(knowledge), who: Caller = Depends(reader)
) -> DocumentOut:
    """Return one document (404 for one the key may not read)."""
    return document_out(service.document(kb, document_id, who.groups_in(kb)))


@router.put("/{document_id}/groups", summary="Set a document's access groups", dependencies=[Depends(loaded)])
def set_groups(
    kb: str,
    document_id: int,
    body: GroupsIn,
    request: Request,
    service: KnowledgeService = Depends(knowledge),
    who: Caller = Depends(editor),
) -> DocumentOut:
    """Replace the document's access groups (none: every reader of the knowledge base sees it); its chunks
    are not embedded again, and searches see the change at once."""
    service.document(kb, document_id, who.groups_in(kb))  # 404 for a document the key may not see
    groups = _groups_for(who, kb, body.groups)
    request.state.audit = {"groups": groups}
    return document_out(service.set_groups(kb, document_id, groups or []))


@router.get("/{document_id}/file", summary="Download the original file", response_class=FileResponse)
def download(
    kb: str,
    document_id: int,
    attachment: bool = Query(False, description="Download a PDF instead of showing it in the browser."),
    service: KnowledgeService = Depends(knowledge),
    who: Caller = Depends(reader),
) -> FileResponse:
    """Return the file as it was uploaded, a PDF to show inline (404 for documents indexed from the command line)."""
    source = service.document(kb, document_id, who.groups_in(kb)).source
    path = service.original_path(kb, source)
    if not path.is_file():
        raise ApiError(
            404, "original_not_found", f"the original of '{source}' is not kept (indexed from a path)"
        )
    name = PurePosixPath(source).name
    # A PDF opens in the browser (at `#page=N` from a citation); anything else downloads, since an uploaded
    # HTML or SVG shown inline would run its scripts in this site's origin.
    inline = Path(name).suffix.lower() == ".pdf" and not attachment
    return FileResponse(
        path,
        filename=name,
        content_disposition_type="inline" if inline else "attachment",
        headers=ORIGINAL_HEADERS,
    )


# An original is someone's file, not this site's page: the browser must not guess a more active type
# than the one sent (nosniff), and whatever it shows runs sandboxed, in an opaque origin, without
# scripts, forms or plugins reaching this site (CSP sandbox); a PDF's own JavaScript included.
ORIGINAL_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}


@router.delete("/{document_id}", status_code=204, summary="Delete a document", dependencies=[Depends(loaded)])
def delete_document(
    kb: str, document_id: int, service: KnowledgeService = Depends(knowledge), who: Caller = Depends(editor)
) -> Response:
    """Delete the document, its chunks and its original."""
    service.document(kb, document_id, who.groups_in(kb))  # 404 for a document the key may not see
    service.delete_document(kb, document_id)
    return Response(status_code=204)


@router.post(
    "/{document_id}/reindex",
    status_code=202,
    summary="Re-index a document",
    response_model=JobAccepted,
    dependencies=[Depends(loaded)],
)
def reindex(
    kb: str,
    document_id: int,
    service: KnowledgeService = Depends(knowledge),
    ingestion: IngestionJobs = Depends(jobs),
    who: Caller = Depends(editor),
) -> JobAccepted:
    """Load, split and embed the document's original again (after a splitter or loader change)."""
    document = service.document(kb, document_id, who.groups_in(kb))
    source = document.source
    path = service.original_path(kb, source)
    if not path.is_file():
        raise ApiError(409, "original_not_found", f"the original of '{source}' is not kept; upload it again")
    # With its own groups, which it keeps, and by which the job is shown only to those who see the document.
    job = ingestion.submit(
        kb, [SourceFile(path, source)], kind="reindex", force=True, groups=list(document.groups)
    )
    return JobAccepted(job=job_out(job))


def _refused_as_error(step: Callable[..., T], *args: Any) -> T:
    """Return what a step of taking an upload returns; its refusal as the HTTP error (400, 413 or 415)."""
    try:
        return step(*args)
    except UploadRefused as error:
        raise ApiError(_REFUSED_STATUS[error.code], error.code, str(error)) from error


def _parse_groups(raw: str | None) -> list[str] | None:
    """Return the upload's comma-separated groups checked (None when the field is absent); 400 when invalid."""
    if raw is None:
        return None
    try:
        return check_groups(part.strip() for part in raw.split(",") if part.strip())
    except ValueError as error:
        raise ApiError(400, "invalid_groups", str(error)) from error


def _groups_for(who: Caller, kb: str, asked: list[str] | None) -> list[str] | None:
    """Return the groups a document written by `who` gets: those asked for; a key limited to groups must
    ask for some of its own (its own when it asks for none), so it never makes a document it cannot see
    or one every reader sees (a key limited to no group writes documents without groups). 403 otherwise."""
    own = who.groups_in(kb)
    if asked is not None:
        try:
            asked = check_groups(asked)
        except ValueError as error:
            raise ApiError(400, "invalid_groups", str(error)) from error
    if own is None:
        return asked
    if not asked:
        return sorted(own)
    if not set(asked) <= own:
        raise ApiError(403, "forbidden", f"this key may only give its own groups: {', '.join(sorted(own))}")
    return asked


def _metadata(raw: str | None) -> dict[str, str] | None:
    if raw is None or not raw.strip():
        return None
    try:
        return check_metadata(json.loads(raw))
    # RecursionError: JSON nested deeper than the parser goes ([[[[…]]]] a million deep).
    except (json.JSONDecodeError, ValueError, TypeError, AttributeError, RecursionError) as error:
        raise ApiError(
            400, "invalid_metadata", f"metadata must be a JSON object of strings: {error}"
        ) from error
