"""Ingestion jobs: status and progress."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from app.jobs import IngestionJobs
from app.server.dependencies import jobs, require_key
from app.server.routers.documents import job_out
from app.server.schemas import JobOut, ListOf

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_key)])


@router.get("", summary="List jobs")
def list_jobs(
    kb: str | None = Query(None, description="Only this knowledge base's jobs."),
    limit: int = Query(50, ge=1, le=500),
    ingestion: IngestionJobs = Depends(jobs),
) -> ListOf:
    """Return the newest jobs first."""
    return ListOf(data=[job_out(job) for job in ingestion.list(kb, limit)])


@router.get("/{job_id}", summary="Get a job")
def get_job(job_id: str, ingestion: IngestionJobs = Depends(jobs)) -> JobOut:
    """Return the job's status: queued, running (files and chunks done), succeeded, or failed with reasons."""
    return job_out(ingestion.get(job_id))


@router.post("/{job_id}/cancel", status_code=202, summary="Cancel a job")
def cancel_job(job_id: str, ingestion: IngestionJobs = Depends(jobs)) -> JobOut:
    """Cancel a queued job at once, or a running one at its next stop point (a few chunks embedded):
    poll until its status is `cancelled`. Files it stored before stay; 409 when it has already finished."""
    return job_out(ingestion.cancel(job_id))
