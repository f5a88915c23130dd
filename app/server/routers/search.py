"""Search a knowledge base."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends

from app.server.dependencies import Reader, Service, bearer, loaded
from app.server.schemas import HitOut, SearchOut, SearchRequest

router = APIRouter(prefix="/v1/kbs/{kb}", tags=["search"], dependencies=[Depends(bearer), Depends(loaded)])


@router.post("/search", summary="Search a knowledge base")
def search(
    kb: str,
    body: SearchRequest,
    service: Service,
    who: Reader,
) -> SearchOut:
    """Return the best chunks; each `score` is a cosine similarity in [-1, 1] (higher is more similar),
    in every mode, so `score_threshold` means the same everywhere; `answerability` is how likely they
    hold the answer. Only the documents the key may read are searched."""
    found = service.retrieve(kb, body.query, body.options().within_groups(who.groups_in(kb)))
    hits = [HitOut.model_validate(asdict(hit)) for hit in found.hits]
    return SearchOut(data=hits, answerability=found.answerability)
