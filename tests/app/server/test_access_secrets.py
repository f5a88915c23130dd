"""API keys' secrets are shown once, when made, and never again: not in the data directory (only salted
hashes are stored), not in the server's log, the audit log or any later response. A `kbqa serve`
subprocess, keys made with the CLI and over HTTP, used, refused, listed and revoked; then every byte
is searched."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from servers import SMALL_DOCS, Server, kbqa, upload, wait_until

FLAT = "flat-admin-7c1e5b9d"


def _secret_from(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("kbqa_"))


def test_secrets_are_nowhere_after_creation(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = kbqa("--data-dir", str(data), "keys", "create", "cli-editor", "--role", "editor", "--kb", "demo")
    assert made.returncode == 0, made.stderr
    cli_secret = _secret_from(made.stdout)
    server = Server(
        data, env={"KBQA_SERVER__API_KEYS": json.dumps([FLAT]), "KBQA_SERVER__PROTECT_READS": "true"}
    )
    try:
        admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {FLAT}"}, timeout=60)
        assert admin.post("/v1/kbs", json={"name": "demo"}).status_code == 201
        created = admin.post(
            "/v1/keys", json={"name": "http-reader", "role": "reader", "knowledge_bases": ["demo"]}
        )
        assert created.status_code == 201
        http_secret = created.json()["key"]
        secrets = [cli_secret, http_secret, FLAT]
        responses = [created.text]

        editor = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {cli_secret}"}, timeout=60
        )
        job = upload(editor, "demo", [(name, text.encode()) for name, text in SMALL_DOCS.items()])
        assert wait_until(editor, job["id"])["status"] == "succeeded"
        # The Python client sets groups at upload.
        from app.client import Client

        with Client(server.url, api_key=cli_secret) as client:
            done = client.upload(
                "demo", [("pay.md", "# 工资\n\n每月十日发放。\n".encode())], groups=["pay"], wait=True
            )
        assert done.status == "succeeded"
        assert {d["source"]: d["groups"] for d in admin.get("/v1/kbs/demo/documents").json()["data"]}[
            "pay.md"
        ] == ["pay"]
        reader = {"Authorization": f"Bearer {http_secret}"}
        searched = httpx.post(f"{server.url}/v1/kbs/demo/search", json={"query": "年假"}, headers=reader)
        assert searched.status_code == 200
        refused = httpx.post(
            f"{server.url}/v1/kbs/demo/documents", files={"files": ("a.md", b"x")}, headers=reader
        )
        assert refused.status_code == 403
        # A near miss of a real key: refused, and not echoed.
        wrong = httpx.get(f"{server.url}/v1/kbs", headers={"Authorization": f"Bearer {http_secret[:-1]}x"})
        assert wrong.status_code == 401
        responses += [searched.text, refused.text, wrong.text]
        responses += [
            admin.get(path).text for path in ("/v1/keys", "/v1/me", "/metrics", "/v1/jobs", "/v1/kbs")
        ]
        responses.append(httpx.get(f"{server.url}/v1/me", headers=reader).text)
        assert admin.delete("/v1/keys/http-reader").status_code == 204
        assert httpx.get(f"{server.url}/v1/kbs", headers=reader).status_code == 401  # revoked: at once
    finally:
        assert server.stop() in (0, -15)
    audit = kbqa("--data-dir", str(data), "audit", "--json", "--limit", "1000")
    assert audit.returncode == 0 and "key.create" in audit.stdout and "http-reader" in audit.stdout
    listed = kbqa("--data-dir", str(data), "keys", "list", "--json")
    assert listed.returncode == 0 and "cli-editor" in listed.stdout

    texts = {"server log": server.output(), "kbqa audit": audit.stdout, "kbqa keys list": listed.stdout}
    texts |= {f"response {i}": text for i, text in enumerate(responses[1:])}  # [0] is the creation itself
    files = [path for path in data.rglob("*") if path.is_file()]
    assert any(path.name == "keys.sqlite" for path in files) and any(
        path.name == "audit.log" for path in files
    )
    for secret in secrets:
        # The key's random part alone, too: a store holding it in pieces or encoded would still hold it.
        needles = [secret, secret[len("kbqa_000000000000_") :]] if secret.startswith("kbqa_") else [secret]
        for needle in needles:
            for path in files:
                assert needle.encode() not in path.read_bytes(), f"a secret is in {path}"
            for what, text in texts.items():
                assert needle not in text, f"a secret is in the {what}"
