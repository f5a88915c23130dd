"""Search a knowledge base."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends

from app.server.dependencies import knowledge, loaded, require_key
from app.server.schemas import HitOut, ListOf, SearchRequest
from app.services import KnowledgeService

router = APIRouter(
    prefix="/v1/kbs/{kb}", tags=["search"], dependencies=[Depends(require_key), Depends(loaded)]
)


@router.post("/search", summary="Search a knowledge base")
def search(kb: str, body: SearchRequest, service: KnowledgeService = Depends(knowledge)) -> ListOf:
    """Return the best chunks; each `score` is a cosine similarity in [-1, 1] (higher is more similar),
    in every mode, so `score_threshold` means the same everywhere."""
    hits = service.search(kb, body.query, body.options())
    return ListOf(data=[HitOut.model_validate(asdict(hit)) for hit in hits])
