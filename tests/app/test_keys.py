"""Keys, groups and the audit log from the command line and in the service: `kbqa keys`, `kbqa audit`,
`kbqa index build --groups`, the key store's hashing and expiry, the audit log's rotation."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from servers import kbqa

from app.audit import AuditLog
from app.keys import Caller, KeyError_, KeyStore
from app.services import KnowledgeService
from app.settings import load_settings


def test_keys_from_the_command_line(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    made = kbqa(
        "--data-dir", data, "keys", "create", "hr", "--role", "reader", "--kb", "hr", "--groups", "hr,pay"
    )
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("kbqa_") and len(secret) > 50
    again = kbqa("--data-dir", data, "keys", "create", "hr", "--role", "reader", "--kb", "hr")
    assert again.returncode == 2 and "exists" in again.stderr
    for bad, says in (
        (["--role", "boss", "--kb", "hr"], "invalid role"),
        (["--role", "reader"], "at least one knowledge base"),
        (["--role", "admin", "--kb", "hr"], "admin key"),
        (["--role", "reader", "--kb", "hr", "--expires", "2001-01-01"], "in the past"),
        (["--role", "reader", "--kb", "hr", "--expires", "soon"], "--expires"),
        (["--role", "reader", "--kb", "hr", "--groups", "a b"], "invalid group"),
    ):
        refused = kbqa("--data-dir", data, "keys", "create", "x", *bad)
        assert refused.returncode == 2 and says in refused.stderr, (bad, refused.stderr)
    listed = kbqa("--data-dir", data, "keys", "list", "--json")
    keys = json.loads(listed.stdout)
    assert [(k["name"], k["role"], k["kbs"], k["groups"]) for k in keys] == [
        ("hr", "reader", ["hr"], ["hr", "pay"])
    ]
    assert secret not in listed.stdout
    assert kbqa("--data-dir", data, "keys", "revoke", "hr").returncode == 0
    assert kbqa("--data-dir", data, "keys", "revoke", "hr").returncode == 1
    audit = kbqa("--data-dir", data, "audit", "--json", "--action", "key.revoke")
    assert [json.loads(line)["target"]["name"] for line in audit.stdout.splitlines()] == ["hr"]


def test_the_store_keeps_only_a_salted_hash_and_knows_expiry(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    key, secret = store.create("a", "editor", ["hr", "*"], ["x"], None)
    twin, twin_secret = store.create("b", "editor", ["hr", "*"], ["x"], None)
    assert store.find(secret) == key and store.find(twin_secret) == twin
    assert store.find(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert store.find("") is None and store.find("kbqa_") is None and store.find("nonsense") is None
    with sqlite3.connect(tmp_path / "keys.sqlite") as db:
        rows = db.execute("SELECT salt, digest FROM keys").fetchall()
    assert len({salt for salt, _ in rows}) == 2 and all(len(digest) == 64 for _, digest in rows)
    old, old_secret = store.create("old", "reader", ["hr"], None, datetime.now(UTC) - timedelta(seconds=1))
    assert store.find(old_secret).expired()
    with pytest.raises(KeyError_, match="no key named"):
        store.revoke("nobody")
    store.close()


def test_what_a_caller_may_do() -> None:
    reader = Caller("r", "reader", frozenset({"hr"}), frozenset({"pay"}))
    editor = Caller("e", "editor", frozenset({"*"}))
    assert reader.reads("hr", "POST") and not reader.reads("ops") and not reader.writes("hr")
    assert editor.writes("anything") and editor.groups_in("hr") is None
    open_reads = Caller.anonymous(keys_configured=True, protect_reads=False)
    assert open_reads.reads("hr", "GET") and not open_reads.reads("hr", "POST")
    assert open_reads.groups_in("hr") == frozenset()  # documents without groups only
    assert not Caller.anonymous(True, True).reads("hr")
    assert Caller.anonymous(False, True).is_admin  # a server without keys is open, as before


def test_the_audit_log_rotates_by_size(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, max_bytes=400, backups=2)
    for n in range(20):
        log.write(key="k", action="document.upload", target={"kb": "hr", "n": n}, outcome="ok")
    files = log.files()
    assert [f.name for f in files] == ["audit.log.2", "audit.log.1", "audit.log"]
    assert all(f.stat().st_size <= 400 for f in files)
    numbers = [entry["target"]["n"] for entry in log.entries()]
    assert numbers == sorted(numbers) and numbers[-1] == 19  # oldest first; the oldest lines rotated away
    assert len(numbers) < 20


def test_index_build_sets_groups_and_changes_them_in_place(tmp_path: Path, e5_embedder) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pay.md").write_text("# 工资\n\n工资每月十日发放。\n", encoding="utf-8")
    service = KnowledgeService(load_settings(data_dir=tmp_path / "data"))
    service.embedder = e5_embedder
    service.ingest("hr", [docs], groups=["pay", "hr"])
    (document,) = service.documents("hr")
    assert document.groups == ("hr", "pay")
    assert service.documents("hr", frozenset({"eng"})) == []
    report = service.ingest(
        "hr", [docs], groups=[]
    )  # unchanged file: groups set in place, not embedded again
    assert [o.status for o in report.outcomes] == ["updated"]
    assert service.documents("hr", frozenset({"eng"}))[0].groups == ()
    report = service.ingest("hr", [docs])  # without groups: kept
    assert [o.status for o in report.outcomes] == ["skipped"]
    with pytest.raises(ValueError, match="invalid group"):
        service.ingest("hr", [docs], groups=["no spaces"])
    service.close()
