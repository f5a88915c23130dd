"""Knowledge bases: create, list, get, delete."""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Depends, Request, Response

from app.keys import Caller
from app.server.dependencies import admin, bearer, caller, knowledge, loaded, reader, require_key
from app.server.schemas import CreateKnowledgeBase, KnowledgeBaseOut, ListOf, StoreOut
from app.services import KnowledgeService
from retrieval import KnowledgeBaseInfo
from retrieval.catalog import METADATA_VALUES_SHOWN

router = APIRouter(prefix="/v1/kbs", tags=["knowledge bases"], dependencies=[Depends(bearer)])


def as_seen(info: KnowledgeBaseInfo, service: KnowledgeService, who: Caller) -> KnowledgeBaseInfo:
    """Return the summary as a caller limited to groups sees it: its counts and metadata values are those of
    the documents it may read."""
    groups = who.groups_in(info.name)
    if groups is None:
        return info
    documents = service.documents(info.name, groups)
    values: dict[str, set[str]] = {}
    for document in documents:
        for key, value in document.metadata.items():
            values.setdefault(key, set()).add(value)
    shown = {key: sorted(found)[:METADATA_VALUES_SHOWN] for key, found in sorted(values.items())}
    return replace(
        info, documents=len(documents), chunks=sum(d.chunk_count for d in documents), metadata=shown
    )


def knowledge_base_out(info: KnowledgeBaseInfo) -> KnowledgeBaseOut:
    """Return the API view of a knowledge base."""
    return KnowledgeBaseOut(
        name=info.name,
        documents=info.documents,
        chunks=info.chunks,
        embedding_model=info.embedding.model,
        store=StoreOut(**info.store.model_dump()),
        size_bytes=info.size_bytes,
        created_at=info.created_at,
        metadata=info.metadata,
        answerability_calibrated=info.calibrated,
    )


@router.get("", summary="List knowledge bases", dependencies=[Depends(require_key)])
def list_knowledge_bases(
    request: Request, service: KnowledgeService = Depends(knowledge), who: Caller = Depends(caller)
) -> ListOf:
    """Return every knowledge base the key may read, with its counts."""
    names = [name for name in service.names() if who.reads(name, request.method)]
    return ListOf(data=[knowledge_base_out(as_seen(service.info(name), service, who)) for name in names])


@router.post(
    "", status_code=201, summary="Create a knowledge base", dependencies=[Depends(admin), Depends(loaded)]
)
def create_knowledge_base(
    body: CreateKnowledgeBase, request: Request, service: KnowledgeService = Depends(knowledge)
) -> KnowledgeBaseOut:
    """Create an empty knowledge base with the configured embedding model and splitter (409 if it exists)."""
    request.state.audit = {"kb": body.name}
    service.create(body.name, body.store, body.uri).close()
    return knowledge_base_out(service.info(body.name))


@router.get("/{kb}", summary="Get a knowledge base")
def get_knowledge_base(
    kb: str, service: KnowledgeService = Depends(knowledge), who: Caller = Depends(reader)
) -> KnowledgeBaseOut:
    """Return the knowledge base's counts (of the documents the key may read), embedding model and size on disk."""
    return knowledge_base_out(as_seen(service.info(kb), service, who))


@router.get("/{kb}/examples", summary="Example questions", dependencies=[Depends(loaded)])
def example_questions(
    kb: str, service: KnowledgeService = Depends(knowledge), who: Caller = Depends(reader)
) -> ListOf:
    """Return up to four questions the knowledge base answers, made from its headings (the web page offers
    them in an empty conversation); from the documents the key may read."""
    return ListOf(data=service.example_questions(kb, groups=who.groups_in(kb)))


@router.delete("/{kb}", status_code=204, summary="Delete a knowledge base", dependencies=[Depends(admin)])
def delete_knowledge_base(kb: str, service: KnowledgeService = Depends(knowledge)) -> Response:
    """Delete the knowledge base with its documents and originals."""
    service.delete(kb)
    return Response(status_code=204)
