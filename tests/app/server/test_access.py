"""Who may do what over HTTP: every route of the OpenAPI document × every kind of caller (no key, a wrong
key, an expired key, a reader of another knowledge base, a reader, an editor, an admin) gets the status
the table of docs/security.md says; the flat `server.api_keys` still work as admins; failed keys are throttled; the
audit log records writes by key name.

One in-process app (FastAPI's TestClient runs the real app with its worker) serves the walk.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from servers import LoadedTestClient, wait_until

from app.keys import KeyStore
from app.server import create_app
from app.settings import load_settings

FLAT = "flat-admin-key"
DOC = "# 年假制度\n\n员工入职满一年后，每年享有十天带薪年假。\n"

# What each route needs (docs/security.md, "Roles"): open to anyone; `key`: any valid key (or, without one, only
# when reads are open); `read`/`edit`: a reader/editor of the route's knowledge base; `jobs`: an editor
# of some knowledge base (a job it may see); `admin`.
NEEDS: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "open",
    ("GET", "/readyz"): "open",
    ("GET", "/metrics"): "key",
    ("GET", "/openapi.json"): "key",
    ("GET", "/docs"): "key",
    ("GET", "/redoc"): "key",
    ("GET", "/v1/me"): "me",
    ("GET", "/v1/kbs"): "key",
    ("POST", "/v1/kbs"): "admin",
    ("GET", "/v1/kbs/{kb}"): "read",
    ("DELETE", "/v1/kbs/{kb}"): "admin",
    ("GET", "/v1/kbs/{kb}/examples"): "read",
    ("POST", "/v1/kbs/{kb}/documents"): "edit",
    ("GET", "/v1/kbs/{kb}/documents"): "read",
    ("GET", "/v1/kbs/{kb}/documents/{document_id}"): "read",
    ("GET", "/v1/kbs/{kb}/documents/{document_id}/file"): "read",
    ("DELETE", "/v1/kbs/{kb}/documents/{document_id}"): "edit",
    ("POST", "/v1/kbs/{kb}/documents/{document_id}/reindex"): "edit",
    ("PUT", "/v1/kbs/{kb}/documents/{document_id}/groups"): "edit",
    ("GET", "/v1/jobs"): "jobs",
    ("GET", "/v1/jobs/{job_id}"): "jobs",
    ("POST", "/v1/jobs/{job_id}/cancel"): "jobs",
    ("POST", "/v1/kbs/{kb}/search"): "read",
    ("POST", "/v1/kbs/{kb}/chat"): "read",
    ("GET", "/v1/models"): "key",
    ("POST", "/v1/chat/completions"): "read",
    ("POST", "/v1/embeddings"): "key",
    ("GET", "/v1/keys"): "admin",
    ("POST", "/v1/keys"): "admin",
    ("DELETE", "/v1/keys/{name}"): "admin",
}
CALLERS = ["none", "wrong", "expired", "other_reader", "reader", "editor", "admin"]
# Which callers pass each need; the others get 401 (no valid key) or 403 (a valid key that does not cover it).
PASSES = {
    "open": set(CALLERS),
    "me": {"none", "other_reader", "reader", "editor", "admin"},
    "key": {"other_reader", "reader", "editor", "admin"},
    "read": {"reader", "editor", "admin"},
    "edit": {"editor", "admin"},
    "jobs": {"editor", "admin"},
    "admin": {"admin"},
}
UNAUTHENTICATED = {"none", "wrong", "expired"}


def expected(need: str, who: str) -> int | None:
    """Return the status `who` must get for a route of `need`, None when it passes (then: not 401/403/5xx)."""
    if who in PASSES[need]:
        return None
    return 401 if who in UNAUTHENTICATED else 403


def test_the_table_names_each_status() -> None:
    # The table itself: a reader passes reads, not writes; an editor passes documents, not knowledge bases.
    assert expected("read", "reader") is None and expected("edit", "reader") == 403
    assert expected("admin", "editor") == 403 and expected("read", "other_reader") == 403
    assert expected("key", "none") == 401 and expected("open", "wrong") is None


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, e5_embedder
) -> Iterator[tuple[TestClient, dict]]:
    """The app over each store: SQLite files, or a database of its own on the session's PostgreSQL."""
    data = tmp_path_factory.mktemp("access") / "data"
    backend = {"backend": "sqlite"}
    if request.param == "postgres":
        backend = {"backend": "postgres", "dsn": request.getfixturevalue("pg_server").new_database()}
    store = KeyStore(data)
    secrets = {"admin": FLAT, "wrong": "kbqa_000000000000_not-a-key"}
    for who, role, kbs in (
        ("reader", "reader", ["docs"]),
        ("editor", "editor", ["docs"]),
        ("other_reader", "reader", ["other"]),
    ):
        secrets[who] = store.create(who, role, kbs)[1]
    # Made already expired here; the API and the CLI refuse an expiry in the past.
    secrets["expired"] = store.create("expired", "editor", ["*"], None, datetime.now(UTC) - timedelta(1))[1]
    store.close()
    server = {"api_keys": [FLAT], "protect_reads": True, "auth_failures": 100_000}
    app = create_app(load_settings(data_dir=data, server=server, store=backend))
    app.state.service.embedder = e5_embedder
    with LoadedTestClient(app) as client:
        admin = {"Authorization": f"Bearer {FLAT}"}
        for kb in ("docs", "other"):
            assert client.post("/v1/kbs", json={"name": kb}, headers=admin).status_code == 201
        files = [("files", ("leave.md", io.BytesIO(DOC.encode())))]
        job = client.post("/v1/kbs/docs/documents", files=files, headers=admin).json()["job"]
        job = wait_until(_Keyed(client, admin), job["id"], poll=0.05)
        assert job["status"] == "succeeded", job
        document = client.get("/v1/kbs/docs/documents", headers=admin).json()["data"][0]
        yield client, {"secrets": secrets, "document_id": document["id"], "job_id": job["id"], "data": data}


class _Keyed:
    """A client whose GETs carry a key (for `wait_until`)."""

    def __init__(self, client: TestClient, headers: dict) -> None:
        self.client, self.headers = client, headers

    def get(self, url: str):
        return self.client.get(url, headers=self.headers)


_unique = itertools.count()


def _request(client: TestClient, method: str, path: str, who: str, facts: dict, need: str):
    """Make the request of one route for one caller; a caller that passes gets harmless targets (a new name,
    a document or knowledge base that does not exist) where the route would destroy something."""
    passes = who in PASSES[need]
    destroys = method == "DELETE"
    values = {
        "kb": "nothing-here" if passes and destroys and "/documents/" not in path else "docs",
        "document_id": 999_999 if passes and destroys else facts["document_id"],
        "job_id": facts["job_id"],
        "name": f"nobody-{next(_unique)}",
    }
    url = path.format(**values)
    headers = {} if who == "none" else {"Authorization": f"Bearer {facts['secrets'][who]}"}
    n = next(_unique)
    bodies = {
        ("POST", "/v1/kbs"): {"json": {"name": f"walk-{n}"}},
        ("POST", "/v1/kbs/{kb}/search"): {"json": {"query": "年假"}},
        ("POST", "/v1/kbs/{kb}/chat"): {"json": {"question": "年假有几天？"}},
        ("POST", "/v1/chat/completions"): {
            "json": {"model": "docs", "messages": [{"role": "user", "content": "年假有几天？"}]}
        },
        ("POST", "/v1/embeddings"): {"json": {"input": "年假", "model": "any"}},
        ("POST", "/v1/keys"): {"json": {"name": f"made-{n}", "role": "reader", "knowledge_bases": ["docs"]}},
        ("PUT", "/v1/kbs/{kb}/documents/{document_id}/groups"): {"json": {"groups": []}},
        ("POST", "/v1/kbs/{kb}/documents"): {
            "files": [("files", (f"walk-{n}.md", io.BytesIO(f"# 第{n}号\n\n走查文档{n}。\n".encode())))]
        },
    }
    return client.request(method, url, headers=headers, **bodies.get((method, path), {}))


def test_every_route_for_every_caller(served: tuple[TestClient, dict]) -> None:
    client, facts = served
    admin = {"Authorization": f"Bearer {FLAT}"}
    schema = client.get("/openapi.json", headers=admin).json()
    routes = {(m.upper(), p) for p, item in schema["paths"].items() for m in item}
    assert routes <= set(NEEDS), f"routes missing from the table (docs/security.md): {routes - set(NEEDS)}"
    wrong = []
    for (method, path), need in NEEDS.items():
        for who in CALLERS:
            response = _request(client, method, path, who, facts, need)
            status = expected(need, who)
            got = response.status_code
            ok = got < 500 and got not in (401, 403) if status is None else got == status
            if not ok:
                wrong.append(
                    f"{method} {path} as {who}: {got} (wanted {status or 'a pass'}) {response.text[:120]}"
                )
            if got in (401, 403):
                body = response.json()["error"]
                assert body["message"] and body["code"] in ("unauthorized", "forbidden", "key_expired")
    assert not wrong, "\n".join(wrong)


def test_refusals_say_why(served: tuple[TestClient, dict]) -> None:
    client, facts = served
    secrets = facts["secrets"]
    expired = client.get("/v1/kbs", headers={"Authorization": f"Bearer {secrets['expired']}"})
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "key_expired"
    assert "expired" in expired.json()["error"]["message"]
    other = client.post(
        "/v1/kbs/docs/search",
        json={"query": "年假"},
        headers={"Authorization": f"Bearer {secrets['other_reader']}"},
    )
    assert (
        other.status_code == 403 and "may not read knowledge base 'docs'" in other.json()["error"]["message"]
    )
    missing = client.post("/v1/kbs/docs/search", json={"query": "年假"})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    # A key's own view: what the web page shows.
    me = client.get("/v1/me", headers={"Authorization": f"Bearer {secrets['reader']}"}).json()
    assert me["role"] == "reader" and me["readable"] == ["docs"] and me["editable"] == [] and not me["admin"]
    listed = client.get("/v1/kbs", headers={"Authorization": f"Bearer {secrets['reader']}"}).json()["data"]
    assert [kb["name"] for kb in listed] == ["docs"]
    models = client.get("/v1/models", headers={"Authorization": f"Bearer {secrets['other_reader']}"}).json()
    assert [m["id"] for m in models["data"]] == ["other"]


def test_a_reader_cannot_upload_and_its_body_is_never_read(served: tuple[TestClient, dict]) -> None:
    client, facts = served
    headers = {"Authorization": f"Bearer {facts['secrets']['reader']}"}
    files = [("files", ("big.md", io.BytesIO(b"x" * 2_000_000)))]
    refused = client.post("/v1/kbs/docs/documents", files=files, headers=headers)
    assert refused.status_code == 403 and refused.headers["connection"] == "close"
    assert not list((facts["data"] / "uploads").glob("*/big.md"))


def test_the_audit_log_records_writes_by_key_name(served: tuple[TestClient, dict]) -> None:
    client, facts = served
    admin = {"Authorization": f"Bearer {FLAT}"}
    made = client.post(
        "/v1/keys", json={"name": "audited", "role": "reader", "knowledge_bases": ["*"]}, headers=admin
    )
    assert made.status_code == 201
    client.delete("/v1/keys/audited", headers={"Authorization": f"Bearer {facts['secrets']['reader']}"})
    assert client.delete("/v1/keys/audited", headers=admin).status_code == 204
    lines = [json.loads(line) for line in (facts["data"] / "audit.log").read_text().splitlines()]
    about = [e for e in lines if e["target"].get("name") == "audited"]
    assert [(e["action"], e["key"], e["outcome"]) for e in about] == [
        ("key.create", "server.api_keys[0]", "ok"),
        ("key.revoke", "reader", "denied"),
        ("key.revoke", "server.api_keys[0]", "ok"),
    ]
    assert all(
        made.json()["key"] not in line for line in (facts["data"] / "audit.log").read_text().splitlines()
    )
    # Reads are not writes: a search leaves no line.
    assert not [e for e in lines if e["route"].endswith("/search")]


def test_flat_api_keys_still_work_as_admins(tmp_path: Path, e5_embedder) -> None:
    # A deployment from before roles: one flat key, reads open. Nothing it did before is refused now.
    app = create_app(load_settings(data_dir=tmp_path / "data", server={"api_keys": ["k1"]}))
    app.state.service.embedder = e5_embedder
    key = {"Authorization": "Bearer k1"}
    with LoadedTestClient(app) as client:
        assert client.post("/v1/kbs", json={"name": "a"}).status_code == 401
        assert client.post("/v1/kbs", json={"name": "a"}, headers=key).status_code == 201
        assert client.get("/v1/kbs").status_code == 200  # reads stay open without protect_reads
        assert client.get("/v1/kbs/a/documents").status_code == 200
        assert client.post("/v1/kbs/a/search", json={"query": "x"}).status_code == 401  # a POST, as before
        assert client.post("/v1/kbs/a/search", json={"query": "x"}, headers=key).status_code == 200
        made = client.post(
            "/v1/keys", json={"name": "r", "role": "reader", "knowledge_bases": ["a"]}, headers=key
        )
        assert made.status_code == 201  # a flat key is an admin: it manages keys too
        assert client.delete("/v1/kbs/a", headers=key).status_code == 204


def test_a_server_without_keys_stays_open(tmp_path: Path, e5_embedder) -> None:
    app = create_app(load_settings(data_dir=tmp_path / "data"))
    app.state.service.embedder = e5_embedder
    with LoadedTestClient(app) as client:
        assert client.post("/v1/kbs", json={"name": "a"}).status_code == 201
        # The official openai client always sends a key; a server without keys ignores it.
        assert client.get("/v1/models", headers={"Authorization": "Bearer -"}).status_code == 200
        assert client.get("/v1/me").json()["admin"] is True


def test_wrong_keys_are_throttled(tmp_path: Path, e5_embedder) -> None:
    server = {"api_keys": ["k1"], "auth_failures": 3, "auth_window_s": 30}
    app = create_app(load_settings(data_dir=tmp_path / "data", server=server))
    app.state.service.embedder = e5_embedder
    with LoadedTestClient(app) as client:
        for guess in range(3):
            assert (
                client.get("/v1/kbs", headers={"Authorization": f"Bearer guess-{guess}"}).status_code == 401
            )
        throttled = client.get("/v1/kbs", headers={"Authorization": "Bearer guess-4"})
        assert throttled.status_code == 429 and throttled.json()["error"]["code"] == "too_many_failed_keys"
        assert 1 <= int(throttled.headers["retry-after"]) <= 30
        # While throttled, even the right key waits (a guess that hits is not told so), and no key is looked at.
        assert client.get("/v1/kbs", headers={"Authorization": "Bearer k1"}).status_code == 429
        assert client.get("/v1/kbs").status_code == 200  # without a key: an anonymous read, as before
        lines = (
            (tmp_path / "data" / "audit.log").read_text()
            if (tmp_path / "data" / "audit.log").exists()
            else ""
        )
        assert "guess-" not in lines


def test_a_key_with_groups_cannot_replace_a_document_it_cannot_see(served: tuple[TestClient, dict]) -> None:
    client, facts = served
    admin = {"Authorization": f"Bearer {FLAT}"}
    body = {"name": "eng-editor", "role": "editor", "knowledge_bases": ["docs"], "groups": ["eng"]}
    editor = {"Authorization": f"Bearer {client.post('/v1/keys', json=body, headers=admin).json()['key']}"}
    groups = f"/v1/kbs/docs/documents/{facts['document_id']}/groups"
    assert client.put(groups, json={"groups": ["hr"]}, headers=admin).status_code == 200
    try:
        files = [("files", ("leave.md", io.BytesIO(b"# overwritten\n\nby eng\n")))]
        refused = client.post("/v1/kbs/docs/documents", files=files, headers=editor)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "document_not_yours"
        # Nor may it hand out groups it does not hold, or take a hidden document's groups away.
        other = [("files", ("eng.md", io.BytesIO(b"# eng\n\nnotes\n")))]
        assert (
            client.post(
                "/v1/kbs/docs/documents", files=other, data={"groups": "hr"}, headers=editor
            ).status_code
            == 403
        )
        assert client.put(groups, json={"groups": []}, headers=editor).status_code == 404
    finally:
        assert client.put(groups, json={"groups": []}, headers=admin).status_code == 200
        client.delete("/v1/keys/eng-editor", headers=admin)
