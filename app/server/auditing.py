"""Writes one audit line per write request, refused ones included, once its status is known."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.audit import AuditLog, outcome
from app.logs import request_id

# (method, route) → action. The routes that change something; searches and answers are POSTs but not writes.
WRITES: dict[tuple[str, str], str] = {
    ("POST", "/v1/kbs"): "kb.create",
    ("DELETE", "/v1/kbs/{kb}"): "kb.delete",
    ("POST", "/v1/kbs/{kb}/documents"): "document.upload",
    ("DELETE", "/v1/kbs/{kb}/documents/{document_id}"): "document.delete",
    ("POST", "/v1/kbs/{kb}/documents/{document_id}/reindex"): "document.reindex",
    ("PUT", "/v1/kbs/{kb}/documents/{document_id}/groups"): "document.groups",
    ("POST", "/v1/jobs/{job_id}/cancel"): "job.cancel",
    ("POST", "/v1/keys"): "key.create",
    ("DELETE", "/v1/keys/{name}"): "key.revoke",
}
_PATTERNS = [
    (method, re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", route) + "/?$"), action)
    for (method, route), action in WRITES.items()
]


def write_action(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """Return the audit action of a request and its route's parameters, or None when it writes nothing."""
    for wanted, pattern, action in _PATTERNS:
        if method == wanted and (found := pattern.match(path)):
            return action, found.groupdict()
    return None


class Audit:
    """Pure ASGI: after each write request (however it ended), appends its audit line."""

    def __init__(self, app: ASGIApp, log: AuditLog) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one request."""
        found = write_action(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        status = 500

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            action, target = found
            state = scope.get("state", {})
            caller = state.get("caller")
            client = scope.get("client")
            self.log.write(
                key=None if caller is None else caller.name,
                role=None if caller is None else caller.role,
                client=client[0] if client else None,
                action=action,
                method=scope["method"],
                route=scope["path"],
                target={**target, **state.get("audit", {})},
                status=status,
                outcome=outcome(status),
                request_id=request_id.get(),
            )
