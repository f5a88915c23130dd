"""No answer leaks a document its key may not read: a property test over HTTP.

Random access groups on a knowledge base's documents and random keys (reader or editor, of it or of every
knowledge base, with or without groups); for each, every face built from a search — search in each mode,
chat (JSON and server-sent events), the refusal's `closest`, the OpenAI-compatible answer through the
official client, the document list, each document and original, the example questions, the jobs — holds
no text or name of a hidden document, and the key's top-k is the top-k of the documents it may read.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import LoadedTestClient, sse_events, wait_until

from app.server import create_app
from app.settings import load_settings

ADMIN = "leak-test-admin"
GROUPS = ["hr", "finance", "eng"]
TOPICS = ["年假", "报销", "路由器", "预算", "打印机", "合同"]
# One document per topic; each holds a marker word (in its heading and its text) no other document holds.
MARKERS = [f"QX{i}Z{i * 7 % 10}" for i in range(len(TOPICS))]


def document(i: int) -> tuple[str, bytes]:
    text = (
        f"# {TOPICS[i]}规定 {MARKERS[i]}\n\n"
        f"关于{TOPICS[i]}：公司规定编号 {MARKERS[i]} 的{TOPICS[i]}事项须在{i + 3}个工作日内办理完毕。\n"
    )
    return f"rule_{i}_{MARKERS[i]}.md", text.encode()


class _Keyed:
    def __init__(self, client: TestClient, key: str) -> None:
        self.client, self.headers = client, {"Authorization": f"Bearer {key}"}

    def get(self, url: str, **kw):
        return self.client.get(url, headers=self.headers, **kw)

    def post(self, url: str, **kw):
        return self.client.post(url, headers=self.headers, **kw)

    def put(self, url: str, **kw):
        return self.client.put(url, headers=self.headers, **kw)

    def delete(self, url: str, **kw):
        return self.client.delete(url, headers=self.headers, **kw)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, e5_embedder
) -> Iterator[tuple[TestClient, dict]]:
    """The app over each store: SQLite files, or a database of its own on the session's PostgreSQL."""
    data = tmp_path_factory.mktemp("leaks") / "data"
    server = {"api_keys": [ADMIN], "protect_reads": True, "auth_failures": 100_000}
    store = {"backend": "sqlite"}
    if request.param == "postgres":
        store = {"backend": "postgres", "dsn": request.getfixturevalue("pg_server").new_database()}
    app = create_app(load_settings(data_dir=data, server=server, store=store))
    app.state.service.embedder = e5_embedder
    with LoadedTestClient(app) as client:
        admin = _Keyed(client, ADMIN)
        for kb in ("hr", "ops"):
            assert admin.post("/v1/kbs", json={"name": kb}).status_code == 201
        files = [("files", (name, io.BytesIO(body))) for name, body in map(document, range(len(TOPICS)))]
        job = admin.post("/v1/kbs/hr/documents", files=files).json()["job"]
        assert wait_until(admin, job["id"], poll=0.05)["status"] == "succeeded"
        ops = [("files", ("ops.md", io.BytesIO("# 值班\n\n运维值班表每周一更新。\n".encode())))]
        job = admin.post("/v1/kbs/ops/documents", files=ops).json()["job"]
        assert wait_until(admin, job["id"], poll=0.05)["status"] == "succeeded"
        ids = {d["source"]: d["id"] for d in admin.get("/v1/kbs/hr/documents").json()["data"]}
        yield client, {"ids": ids}


_names = itertools.count()


def _leaks(text: str, hidden: list[int]) -> list[str]:
    """Return the markers and file names of hidden documents found in `text`."""
    return [MARKERS[i] for i in hidden if MARKERS[i] in text] + [
        document(i)[0] for i in hidden if document(i)[0] in text
    ]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    assignment=st.lists(
        st.lists(st.sampled_from(GROUPS), max_size=2, unique=True), min_size=len(TOPICS), max_size=len(TOPICS)
    ),
    role=st.sampled_from(["reader", "editor"]),
    every_kb=st.booleans(),
    key_groups=st.frozensets(st.sampled_from(GROUPS), max_size=2),
    topic=st.integers(0, len(TOPICS) - 1),
    k=st.integers(1, 6),
    mode=st.sampled_from(["dense", "lexical", "hybrid"]),
)
def test_no_face_leaks_a_hidden_document(
    served: tuple[TestClient, dict],
    assignment: list[list[str]],
    role: str,
    every_kb: bool,
    key_groups: frozenset[str],
    topic: int,
    k: int,
    mode: str,
) -> None:
    client, facts = served
    admin = _Keyed(client, ADMIN)
    ids = [facts["ids"][document(i)[0]] for i in range(len(TOPICS))]
    for document_id, groups in zip(ids, assignment, strict=True):
        assert (
            admin.put(f"/v1/kbs/hr/documents/{document_id}/groups", json={"groups": groups}).status_code
            == 200
        )
    made = admin.post(
        "/v1/keys",
        json={
            "name": f"random-{next(_names)}",
            "role": role,
            "knowledge_bases": ["*"] if every_kb else ["hr"],
            "groups": sorted(key_groups),
        },
    ).json()
    key = _Keyed(client, made["key"])
    permitted = [i for i, groups in enumerate(assignment) if not groups or set(groups) & key_groups]
    hidden = [i for i in range(len(TOPICS)) if i not in permitted]
    seen: list[tuple[str, str]] = []  # (what, response text) to check for leaks

    # Search: no hidden document, and the top-k of the permitted ones.
    question = f"{TOPICS[topic]}的规定 {MARKERS[topic]}"
    body = {"query": question, "k": k, "mode": mode}
    searched = key.post("/v1/kbs/hr/search", json=body)
    assert searched.status_code == 200, searched.text
    seen.append(("search", searched.text))
    permitted_ids = [ids[i] for i in permitted]
    reference = admin.post(
        "/v1/kbs/hr/search", json={**body, "document_ids": permitted_ids or [10**9]}
    ).json()
    assert [h["chunk_id"] for h in searched.json()["data"]] == [h["chunk_id"] for h in reference["data"]]

    # Chat, as JSON and as events; a question nothing answers, for the refusal's closest passages. (Without
    # the marker: an answer repeats its question, as `searched_question`.)
    asked_about = f"{TOPICS[topic]}的规定是什么？"
    for asked in (asked_about, "火星上的首都叫什么名字？"):
        answer = key.post("/v1/kbs/hr/chat", json={"question": asked})
        assert answer.status_code == 200, answer.text
        seen.append(("chat", answer.text))
        with client.stream(
            "POST", "/v1/kbs/hr/chat", json={"question": asked, "stream": True}, headers=key.headers
        ) as events:
            stream = "\n".join(events.iter_lines())
        assert [name for name, _ in sse_events(stream.splitlines())][-1] == "done"
        seen.append(("chat events", stream))

    # The OpenAI-compatible face, through the official client.
    from openai import OpenAI

    openai = OpenAI(base_url="http://testserver/v1", api_key=made["key"], http_client=client)
    completion = openai.chat.completions.create(
        model="hr", messages=[{"role": "user", "content": asked_about}]
    )
    seen.append(("openai", completion.model_dump_json()))
    streamed = openai.chat.completions.create(
        model="hr", messages=[{"role": "user", "content": asked_about}], stream=True
    )
    seen.append(("openai events", "\n".join(chunk.model_dump_json() for chunk in streamed)))
    seen.append(("models", json.dumps([m.id for m in openai.models.list()])))

    # Documents: the list is exactly the permitted ones; a hidden one, its original and its groups are 404.
    listed = key.get("/v1/kbs/hr/documents").json()["data"]
    assert sorted(d["id"] for d in listed) == sorted(permitted_ids)
    seen.append(("documents", json.dumps(listed, ensure_ascii=False)))
    for i in range(len(TOPICS)):
        one, original = (
            key.get(f"/v1/kbs/hr/documents/{ids[i]}"),
            key.get(f"/v1/kbs/hr/documents/{ids[i]}/file"),
        )
        assert (one.status_code, original.status_code) == ((200, 200) if i in permitted else (404, 404))
        if i not in permitted and role == "editor":
            assert key.delete(f"/v1/kbs/hr/documents/{ids[i]}").status_code == 404
            assert key.put(f"/v1/kbs/hr/documents/{ids[i]}/groups", json={"groups": []}).status_code == 404
        seen.append(("document", one.text))
    examples = key.get("/v1/kbs/hr/examples")
    seen.append(("examples", examples.text))
    if role == "editor":
        seen.append(("jobs", key.get("/v1/jobs?kb=hr").text))
    seen.append(("knowledge bases", key.get("/v1/kbs").text))
    seen.append(("metrics", key.get("/metrics").text))  # labels are route templates, never names

    leaks = [(what, _leaks(text, hidden)) for what, text in seen if _leaks(text, hidden)]
    assert not leaks, f"hidden documents {hidden} leaked: {leaks}"
    # A hidden document's marker, asked for outright, finds nothing of it.
    for i in hidden[:1]:
        probe = key.post("/v1/kbs/hr/search", json={"query": MARKERS[i], "mode": "lexical"}).json()
        assert all(h["document_id"] != ids[i] for h in probe["data"])
    assert admin.delete(f"/v1/keys/{made['name']}").status_code == 204
