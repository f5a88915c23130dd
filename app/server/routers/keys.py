"""API keys (admin only): list, create (the secret is in that one response), revoke; and `/v1/me`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from app.keys import ApiKey, Caller, KeyError_, KeyStore
from app.server.dependencies import admin, bearer, caller, knowledge
from app.server.errors import ApiError
from app.server.key_schemas import CallerOut, CreateKey, KeyCreated, KeyOut
from app.server.schemas import ListOf
from app.services import KnowledgeService

router = APIRouter(prefix="/v1", tags=["keys"], dependencies=[Depends(bearer)])


def _store(request: Request) -> KeyStore:
    return request.app.state.access.keys


def key_out(key: ApiKey) -> KeyOut:
    """Return the API view of a key (never its secret)."""
    return KeyOut(
        name=key.name,
        role=key.role,
        knowledge_bases=list(key.kbs),
        groups=None if key.groups is None else list(key.groups),
        created_at=key.created_at,
        expires_at=key.expires_at,
        expired=key.expired(),
    )


@router.get("/keys", summary="List API keys", dependencies=[Depends(admin)])
def list_keys(request: Request) -> ListOf:
    """Return every stored key's name, role, knowledge bases, groups and expiry (the flat `server.api_keys`
    of the settings are not listed)."""
    return ListOf(data=[key_out(key) for key in _store(request).list()])


@router.post("/keys", status_code=201, summary="Create an API key", dependencies=[Depends(admin)])
def create_key(body: CreateKey, request: Request) -> KeyCreated:
    """Make a key and return it with its secret, which is shown this once and stored only hashed."""
    try:
        key, secret = _store(request).create(
            body.name, body.role, body.knowledge_bases, body.groups, body.expires_at
        )
    except KeyError_ as error:
        status = 409 if "exists" in str(error) else 400
        raise ApiError(status, "key_exists" if status == 409 else "invalid_key", str(error)) from None
    if key.expired():
        _store(request).revoke(key.name)
        raise ApiError(400, "invalid_key", "expires_at is in the past")
    request.state.audit = {"name": key.name, "role": key.role, "kbs": list(key.kbs), "groups": key.groups}
    return KeyCreated(**key_out(key).model_dump(), key=secret)


@router.delete("/keys/{name}", status_code=204, summary="Revoke an API key", dependencies=[Depends(admin)])
def revoke_key(name: str, request: Request) -> Response:
    """Delete the key: it stops working with the next request."""
    try:
        _store(request).revoke(name)
    except KeyError_ as error:
        raise ApiError(404, "key_not_found", str(error)) from None
    return Response(status_code=204)


@router.get("/me", summary="What this key may do")
def me(
    request: Request, who: Caller = Depends(caller), service: KnowledgeService = Depends(knowledge)
) -> CallerOut:
    """Return the key's name, role, knowledge bases and groups, and which knowledge bases it may read and
    change (the web page shows only those)."""
    names = service.names()
    return CallerOut(
        **who.describe(),
        readable=[name for name in names if who.reads(name, "POST") or who.reads(name, "GET")],
        editable=[name for name in names if who.writes(name)],
        admin=who.is_admin,
    )
