"""Ingestion jobs: status and progress."""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Depends, Query

from app.jobs import IngestionJobs, Job, JobNotFound
from app.keys import Caller
from app.server.dependencies import any_editor, bearer, jobs, knowledge
from app.server.routers.documents import job_out
from app.server.schemas import JobOut, ListOf
from app.services import KnowledgeService
from retrieval import groups_visible

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(bearer)])


def _visible(job: Job, who: Caller) -> bool:
    """Return whether `who` may see the job: it edits the job's knowledge base and sees its documents' groups."""
    return who.writes(job.kb) and groups_visible(job.groups or (), who.groups_in(job.kb))


def _redacted(job: Job, who: Caller, service: KnowledgeService) -> Job:
    """Return the job without the names of documents `who` may not see now (their groups may have been set
    after the upload): its files, the page being read, and an error naming them are left out."""
    groups = who.groups_in(job.kb)
    if groups is None or not service.exists(job.kb):
        return job
    every = {d.source for d in service.documents(job.kb)}
    hidden = every - {d.source for d in service.documents(job.kb, groups)}
    if not hidden:
        return job
    files = [f for f in job.files if f["source"] not in hidden]
    error = job.error
    if error and any(source in error for source in hidden):
        error = "some files failed (details only for keys that see them)"
    return replace(job, files=files, reading=None, error=error)


def _job_for(job_id: str, ingestion: IngestionJobs, who: Caller) -> Job:
    """Return the job when `who` may see it; JobNotFound (404) otherwise, as for a job that does not exist."""
    job = ingestion.get(job_id)
    if not _visible(job, who):
        raise JobNotFound(f"job '{job_id}' does not exist")
    return job


@router.get("", summary="List jobs")
def list_jobs(
    kb: str | None = Query(None, description="Only this knowledge base's jobs."),
    limit: int = Query(50, ge=1, le=500),
    ingestion: IngestionJobs = Depends(jobs),
    who: Caller = Depends(any_editor),
    service: KnowledgeService = Depends(knowledge),
) -> ListOf:
    """Return the newest jobs first, of the knowledge bases the key edits."""
    shown = [_redacted(job, who, service) for job in ingestion.list(kb, limit) if _visible(job, who)]
    return ListOf(data=[job_out(job) for job in shown])


@router.get("/{job_id}", summary="Get a job")
def get_job(
    job_id: str, ingestion: IngestionJobs = Depends(jobs), who: Caller = Depends(any_editor)
) -> JobOut:
    """Return the job's status: queued, running (files and chunks done), succeeded, or failed with reasons."""
    return job_out(_job_for(job_id, ingestion, who))


@router.post("/{job_id}/cancel", status_code=202, summary="Cancel a job")
def cancel_job(
    job_id: str,
    ingestion: IngestionJobs = Depends(jobs),
    who: Caller = Depends(any_editor),
    service: KnowledgeService = Depends(knowledge),
) -> JobOut:
    """Cancel a queued job at once, or a running one at its next stop point (a few chunks embedded):
    poll until its status is `cancelled`. Files it stored before stay; 409 when it has already finished."""
    _job_for(job_id, ingestion, who)
    return job_out(_redacted(ingestion.cancel(job_id), who, service))
