"""API keys with roles per knowledge base, kept hashed in `<data_dir>/keys.sqlite`, and who a request is.

A key is `kbqa_<id>_<secret>`: the id finds its row, and only a salted SHA-256 of the whole key is stored
(the secret is 256 random bits, so a slow hash would add nothing but latency to every request). The key
is shown once, when it is made; it is compared in constant time. The flat `server.api_keys` list of the
settings still works: each of those keys is an admin.

Roles: `admin` may do everything, keys included; `editor` of some knowledge bases (or `*`) may also
upload, re-index, delete documents, set their groups and cancel jobs there; `reader` may search, chat,
list and download documents there. A key with groups sees only the documents without groups and those
sharing one of its groups.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from retrieval import InvalidName, check_groups, validate_name
from retrieval.metadata import KEY_PATTERN

KEYS_FILE = "keys.sqlite"
PREFIX = "kbqa_"
MAX_KEYS = 10_000
MAX_KBS_PER_KEY = 256
Role = Literal["admin", "editor", "reader"]
ROLES: tuple[Role, ...] = ("admin", "editor", "reader")
EVERY_KB = "*"

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    name TEXT PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    salt TEXT NOT NULL,
    digest TEXT NOT NULL,          -- hex SHA-256 of salt + key; the key itself is never stored
    role TEXT NOT NULL,
    kbs TEXT NOT NULL,             -- JSON list of knowledge-base names, or ["*"]
    groups TEXT,                   -- JSON list, or NULL for a key that sees every document
    created_at TEXT NOT NULL,
    expires_at TEXT
);
"""


class KeyError_(ValueError):
    """A key that cannot be made or found; the message says why."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key's facts (never its secret)."""

    name: str
    role: Role
    kbs: tuple[str, ...]
    groups: tuple[str, ...] | None  # None: sees every document of its knowledge bases
    created_at: str
    expires_at: str | None = None
    key_id: str = ""

    def expired(self, now: datetime | None = None) -> bool:
        """Return whether the key has expired."""
        if self.expires_at is None:
            return False
        return datetime.fromisoformat(self.expires_at) <= (now or datetime.now(UTC))


@dataclass(frozen=True)
class Caller:
    """Who makes a request and what it may do: a key's role, knowledge bases and groups."""

    name: str | None  # the key's name; None for a request without a key
    role: Role | None  # None: no rights but what `open_reads` gives
    kbs: frozenset[str] = field(default_factory=frozenset)
    groups: frozenset[str] | None = None  # None: every document
    open_reads: bool = (
        False  # anonymous, on a server whose reads need no key: GET reads of ungrouped documents
    )

    @classmethod
    def anonymous(cls, keys_configured: bool, protect_reads: bool) -> Caller:
        """Return the caller without a key: everything on a server without keys (as kbqa always was), GET
        reads of documents without groups when reads are open, else nothing."""
        if not keys_configured:
            return cls(None, "admin")
        if not protect_reads:
            return cls(None, None, frozenset({EVERY_KB}), frozenset(), open_reads=True)
        return cls(None, None)

    @classmethod
    def of(cls, key: ApiKey) -> Caller:
        """Return the caller bearing `key`."""
        groups = None if key.groups is None else frozenset(key.groups)
        return cls(key.name, key.role, frozenset(key.kbs), groups)

    @property
    def is_admin(self) -> bool:
        """Return whether the caller may do everything."""
        return self.role == "admin"

    @property
    def authenticated(self) -> bool:
        """Return whether the caller bears a valid key (or the server has no keys)."""
        return self.role is not None

    def _covers(self, kb: str) -> bool:
        return EVERY_KB in self.kbs or kb in self.kbs

    def reads(self, kb: str, method: str = "GET") -> bool:
        """Return whether the caller may read knowledge base `kb` with a request of `method`."""
        if self.is_admin:
            return True
        if self.role is None:
            return self.open_reads and method in ("GET", "HEAD") and self._covers(kb)
        return self._covers(kb)

    def writes(self, kb: str) -> bool:
        """Return whether the caller may change the documents of knowledge base `kb`."""
        return self.is_admin or (self.role == "editor" and self._covers(kb))

    def edits_any(self) -> bool:
        """Return whether the caller may change the documents of some knowledge base."""
        return self.is_admin or self.role == "editor"

    def groups_in(self, kb: str) -> frozenset[str] | None:
        """Return the access groups the caller is limited to (None: every document)."""
        return None if self.is_admin else self.groups

    def describe(self) -> dict:
        """Return what the caller is and may do, for `/v1/me` and the web page."""
        return {
            "name": self.name,
            "role": self.role,
            "knowledge_bases": sorted(self.kbs) if not self.is_admin else [EVERY_KB],
            "groups": None if self.groups is None else sorted(self.groups),
            "anonymous": self.name is None,
        }


def _digest(salt: str, key: str) -> str:
    return hashlib.sha256((salt + key).encode("utf-8")).hexdigest()


class KeyStore:
    """The keys made with `kbqa keys create` or `POST /v1/keys`, hashed in one SQLite file."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / KEYS_FILE
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 10000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the database; return nothing."""
        self._db.close()

    def create(
        self,
        name: str,
        role: str,
        kbs: list[str] | None = None,
        groups: list[str] | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[ApiKey, str]:
        """Store a new key; return it with its secret, which is not kept and cannot be shown again."""
        if not isinstance(name, str) or not KEY_PATTERN.fullmatch(name):
            raise KeyError_(f"invalid key name {name!r}: use 1 to 64 letters, digits, '_' or '-'")
        if role not in ROLES:
            raise KeyError_(f"invalid role {role!r}: one of {', '.join(ROLES)}")
        kbs = sorted(set(kbs or []))
        if role == "admin":
            if kbs or groups:
                raise KeyError_(
                    "an admin key has every knowledge base and document; give no --kb or --groups"
                )
        elif not kbs:
            raise KeyError_(
                f"a {role} key needs at least one knowledge base (--kb NAME, or --kb '*' for all)"
            )
        if len(kbs) > MAX_KBS_PER_KEY:
            raise KeyError_(f"a key may name at most {MAX_KBS_PER_KEY} knowledge bases")
        for kb in kbs:
            if kb != EVERY_KB:
                try:
                    validate_name(kb)
                except InvalidName as error:
                    raise KeyError_(str(error)) from None
        try:
            checked_groups = None if groups is None else check_groups(groups)
        except ValueError as error:
            raise KeyError_(str(error)) from None
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        key_id = secrets.token_hex(6)
        secret = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        salt = secrets.token_hex(16)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        expires = None if expires_at is None else expires_at.astimezone(UTC).isoformat(timespec="seconds")
        with self._lock:
            if self._db.execute("SELECT COUNT(*) FROM keys").fetchone()[0] >= MAX_KEYS:
                raise KeyError_(f"at most {MAX_KEYS} keys; revoke some first")
            try:
                self._db.execute(
                    "INSERT INTO keys (name, key_id, salt, digest, role, kbs, groups, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        key_id,
                        salt,
                        _digest(salt, secret),
                        role,
                        json.dumps(kbs, ensure_ascii=False),
                        None if checked_groups is None else json.dumps(checked_groups, ensure_ascii=False),
                        now,
                        expires,
                    ),
                )
            except sqlite3.IntegrityError:
                raise KeyError_(
                    f"a key named '{name}' exists; revoke it first or choose another name"
                ) from None
        return self.get(name), secret

    def get(self, name: str) -> ApiKey:
        """Return the key named `name` (KeyError_ when there is none)."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM keys WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError_(f"no key named '{name}'")
        return _key(row)

    def list(self) -> list[ApiKey]:
        """Return every stored key, oldest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY created_at, name").fetchall()
        return [_key(row) for row in rows]

    def revoke(self, name: str) -> ApiKey:
        """Delete the key named `name` (it stops working at once); return it."""
        key = self.get(name)
        with self._lock:
            self._db.execute("DELETE FROM keys WHERE name = ?", (name,))
        return key

    def any(self) -> bool:
        """Return whether any key is stored."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM keys LIMIT 1").fetchone() is not None

    def find(self, given: str) -> ApiKey | None:
        """Return the stored key `given` is (expired ones too: the caller says why it is refused), or None."""
        key_id = given[len(PREFIX) :].partition("_")[0] if given.startswith(PREFIX) else ""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS}, salt, digest FROM keys WHERE key_id = ?", (key_id,)
            ).fetchone()
        salt, digest = (row[-2], row[-1]) if row else ("0" * 32, "0" * 64)
        # Hashed and compared whether or not the id was found, so the time taken says nothing about it.
        matches = hmac.compare_digest(_digest(salt, given), digest)
        return _key(row[:-2]) if row and matches else None


_COLUMNS = "name, role, kbs, groups, created_at, expires_at, key_id"


def _key(row: tuple) -> ApiKey:
    name, role, kbs, groups, created_at, expires_at, key_id = row
    return ApiKey(
        name=name,
        role=role,
        kbs=tuple(json.loads(kbs)),
        groups=None if groups is None else tuple(json.loads(groups)),
        created_at=created_at,
        expires_at=expires_at,
        key_id=key_id,
    )


def config_key(keys: list[str], given: str) -> ApiKey | None:
    """Return an admin key for `given` when it is one of the settings' flat `server.api_keys`, else None."""
    for number, key in enumerate(keys):
        if hmac.compare_digest(given.encode(), key.encode()):
            return ApiKey(f"server.api_keys[{number}]", "admin", (), None, "")
    return None
