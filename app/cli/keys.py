"""`kbqa keys …` and `kbqa audit`: API keys with roles per knowledge base, and the audit log of writes."""

from __future__ import annotations

import getpass
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.table import Table

from app.cli.common import JsonOption, console, fail, settings

keys_app = typer.Typer(
    help="API keys: create (roles per knowledge base), list, revoke.", no_args_is_help=True
)

_DURATION = re.compile(r"(\d+)([dhm])")


def _expiry(text: str | None) -> datetime | None:
    """Return when a key given `--expires` (30d, 12h, 90m, or an ISO date-time) stops working; exit 2 if unreadable."""
    if text is None:
        return None
    if found := _DURATION.fullmatch(text.strip()):
        amount, unit = int(found.group(1)), found.group(2)
        unit_name = {"d": "days", "h": "hours", "m": "minutes"}[unit]
        return datetime.now(UTC) + timedelta(**{unit_name: amount})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--expires {text!r}: give 30d, 12h, 90m or an ISO date-time (2027-01-31T18:00)", code=2)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _audit_cli(action: str, **target: object) -> None:
    """Append a key change made from the command line to the audit log; return nothing."""
    from app.audit import AuditLog

    server = settings().server
    log = AuditLog(settings().data_dir, int(server.audit_max_mb * 1024 * 1024), server.audit_backups)
    log.write(
        key=f"cli:{getpass.getuser()}", role="admin", client="cli", action=action, target=target, outcome="ok"
    )


@keys_app.command("create")
def keys_create(
    name: Annotated[
        str, typer.Argument(help="The key's name (letters, digits, '_', '-'), shown in the audit log.")
    ],
    role: Annotated[str, typer.Option("--role", help="admin, editor or reader.")] = "reader",
    kb: Annotated[
        list[str] | None, typer.Option("--kb", help="A knowledge base it may use (repeatable); '*' for all.")
    ] = None,
    groups: Annotated[
        str | None,
        typer.Option(
            "--groups",
            help="Comma-separated access groups: it sees only documents without groups or sharing one of these.",
        ),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="When it stops working: 30d, 12h, 90m or an ISO date-time."),
    ] = None,
) -> None:
    """Make a key and print its secret, once: it is stored only hashed and cannot be shown again."""
    from app.keys import KeyError_, KeyStore

    when = _expiry(expires)
    if when is not None and when <= datetime.now(UTC):
        fail("--expires is in the past", code=2)
    group_list = None if groups is None else [g.strip() for g in groups.split(",") if g.strip()]
    store = KeyStore(settings().data_dir)
    try:
        key, secret = store.create(name, role, kb or [], group_list, when)
    except KeyError_ as error:
        fail(str(error), code=2)
    finally:
        store.close()
    _audit_cli("key.create", name=key.name, role=key.role, kbs=list(key.kbs), groups=key.groups)
    console.print(
        f"created key [bold]{key.name}[/] ({key.role}); its secret, shown this once:", highlight=False
    )
    print(secret)  # alone on its line, plain, so a script can take it


@keys_app.command("list")
def keys_list(as_json: JsonOption = False) -> None:
    """List the stored keys (never their secrets); the settings' flat server.api_keys are admins not listed here."""
    from app.keys import KeyStore

    store = KeyStore(settings().data_dir)
    try:
        keys = store.list()
    finally:
        store.close()
    if as_json:
        print(json.dumps([{**key.__dict__, "expired": key.expired()} for key in keys], ensure_ascii=False))
        return
    table = Table("name", "role", "knowledge bases", "groups", "created", "expires")
    for key in keys:
        groups = "(all)" if key.groups is None else ",".join(key.groups) or "(none)"
        expires = (key.expires_at or "never") + (" (expired)" if key.expired() else "")
        table.add_row(key.name, key.role, ",".join(key.kbs) or "*", groups, key.created_at, expires)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Delete a key: a running server refuses it from its next request."""
    from app.keys import KeyError_, KeyStore

    store = KeyStore(settings().data_dir)
    try:
        store.revoke(name)
    except KeyError_ as error:
        fail(str(error))
    finally:
        store.close()
    _audit_cli("key.revoke", name=name)
    console.print(f"revoked key [bold]{name}[/]")


def audit(
    key: Annotated[str | None, typer.Option("--key", help="Only this key's writes (its name).")] = None,
    kb: Annotated[str | None, typer.Option("--kb", help="Only writes to this knowledge base.")] = None,
    action: Annotated[
        str | None,
        typer.Option("--action", help="Only this action: kb.create, document.upload, key.revoke, …"),
    ] = None,
    outcome: Annotated[str | None, typer.Option("--outcome", help="ok, denied or failed.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only from this ISO time on (2026-12-04T10:00).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000, help="The newest this many.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """Print the audit log of writes (newest last), filtered."""
    from app.audit import AuditLog, matches

    server = settings().server
    log = AuditLog(settings().data_dir, int(server.audit_max_mb * 1024 * 1024), server.audit_backups)
    found = [e for e in log.entries() if matches(e, key, kb, action, outcome, since)][-limit:]
    if as_json:
        for entry in found:
            print(json.dumps(entry, ensure_ascii=False))
        return
    table = Table("time", "key", "action", "target", "status", "outcome")
    for entry in found:
        target = ", ".join(f"{k}={v}" for k, v in (entry.get("target") or {}).items() if v is not None)
        table.add_row(
            str(entry.get("time", "")),
            str(entry.get("key")),
            str(entry.get("action")),
            target,
            str(entry.get("status", "")),
            str(entry.get("outcome", "")),
        )
    console.print(table)
