"""The API keys' request and response bodies (/v1/keys, /v1/me)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.server.schemas import Strict


class CreateKey(Strict):
    """A key to make: its name, role, knowledge bases, groups and expiry."""

    name: str = Field(..., max_length=64, description="Letters, digits, '_' or '-'; shown in the audit log.")
    role: Literal["admin", "editor", "reader"]
    knowledge_bases: list[str] = Field(
        default_factory=list, max_length=256, description="Names, or `*` for all; none for an admin."
    )
    groups: list[str] | None = Field(
        None, max_length=32, description="Only documents without groups or sharing one of these (null: all)."
    )
    expires_at: datetime | None = Field(
        None, description="When the key stops working (UTC unless a zone is given)."
    )


class KeyOut(BaseModel):
    """A key's facts; never its secret."""

    name: str
    role: str
    knowledge_bases: list[str]
    groups: list[str] | None
    created_at: str
    expires_at: str | None
    expired: bool


class KeyCreated(KeyOut):
    """A new key, with its secret: shown this once, not kept."""

    key: str = Field(..., description="The secret: `Authorization: Bearer <key>`. It cannot be shown again.")


class CallerOut(BaseModel):
    """Who the request's key is and what it may do."""

    name: str | None
    role: str | None
    knowledge_bases: list[str]
    groups: list[str] | None
    anonymous: bool
    readable: list[str] = Field(description="The knowledge bases it may read.")
    editable: list[str] = Field(description="The knowledge bases whose documents it may change.")
    admin: bool
