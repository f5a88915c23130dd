"""The web service as users run it: `kbqa serve` in a subprocess, spoken to over real HTTP.

Covers the official `openai` client against the OpenAI-compatible face, the SSE chat stream event by
event, search staying responsive while an upload is indexed, a job surviving a SIGKILL or SIGTERM of the server,
back-to-back uploads, and API keys.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from servers import (
    CLEAN_EXIT,
    JOB_TIMEOUT_S,
    Server,
    assert_kb_check,
    build_small_kb,
    create_kb,
    document_sources,
    generated_files,
    upload,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server over a data directory with knowledge base `demo` (SMALL_DOCS)."""
    running = Server(build_small_kb(tmp_path_factory.mktemp("served")))
    yield running
    assert running.stop() in CLEAN_EXIT, running.output()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    """An HTTP client for the shared server."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def test_openai_client_models_chat_and_embeddings(server: Server) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    assert "demo" in [model.id for model in client.models.list()]

    question = [{"role": "user", "content": "差旅报销多久能到账？"}]
    whole = client.chat.completions.create(model="demo", messages=question)
    assert whole.choices[0].finish_reason == "stop"
    answer = whole.choices[0].message.content
    assert "五个工作日" in answer
    citations = whole.model_extra["citations"]
    assert citations and citations[0]["source"] == "docs/expense.md"
    assert {"n", "chunk_id", "document_id", "source", "score", "text"} <= citations[0].keys()

    chunks = list(
        client.chat.completions.create(
            model="demo", messages=question, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    streamed_citations = finish[0].model_extra["citations"]
    assert [c["chunk_id"] for c in streamed_citations] == [c["chunk_id"] for c in citations]
    # OpenAI's include_usage: one last chunk with no choices carries the usage.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert len({c.id for c in chunks}) == 1

    embedded = client.embeddings.create(model="x", input=["a", "b"])
    assert [item.index for item in embedded.data] == [0, 1]
    for item in embedded.data:
        assert len(item.embedding) == 384
        assert math.isclose(math.fsum(x * x for x in item.embedding), 1.0, rel_tol=1e-4)
    assert embedded.data[0].embedding != embedded.data[1].embedding

    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-kb", messages=question)
    assert raised.value.body["code"] == "model_not_found"


# --- server-sent events -------------------------------------------------------------------------------


def read_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """Return the (event, data) pairs of a server-sent-event stream, as they arrive."""
    events, name, data = [], None, []
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())
        elif line == "" and data:
            events.append((name or "message", json.loads("\n".join(data))))
            name, data = None, []
    return events


def test_chat_stream_sends_citations_deltas_then_done(client: httpx.Client) -> None:
    question = {"question": "年假需要提前几天申请？", "stream": True}
    with client.stream("POST", "/v1/kbs/demo/chat", json=question) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"]
        events = read_events(response)

    names = [name for name, _ in events]
    assert names[0] == "citations" and names[-1] == "done", names
    assert names[1:-1] and set(names[1:-1]) == {"delta"}, names
    offered = events[0][1]["citations"]
    assert offered[0]["source"] == "docs/leave.md"
    done = events[-1][1]
    assert done["answer"] == "".join(data["text"] for _, data in events[1:-1])
    assert "三个工作日" in done["answer"]
    assert done["citations"] and all(c in offered for c in done["citations"])

    whole = client.post("/v1/kbs/demo/chat", json={**question, "stream": False}).json()
    assert whole["answer"] == done["answer"]


# --- ingestion jobs ---------------------------------------------------------------------------------


def search(http: httpx.Client, kb: str, query: str) -> None:
    """Search a knowledge base; assert it answered."""
    response = http.post(f"/v1/kbs/{kb}/search", json={"query": query, "k": 5})
    assert response.status_code == 200, response.text


def job_status(http: httpx.Client, job_id: str) -> str:
    return http.get(f"/v1/jobs/{job_id}").json()["status"]


def test_search_answers_while_an_upload_is_indexed(client: httpx.Client, server: Server) -> None:
    # Searches of the knowledge base being written and of another one answer while the job runs: each round
    # is seen between two "running" statuses, so neither waited for the indexing to end. How fast they
    # answer meanwhile is bench/search_while_indexing.py's figure, not a test's.
    create_kb(client, "big")
    queries = ["报销需要多久", "设备维护记录保存几年", "VPN user name", "合同归档审批"]
    for kb in ("demo", "big"):  # the first search loads jieba's dictionary: a cost of its own
        search(client, kb, queries[0])
    files = generated_files(40, seed=1)
    job = upload(client, "big", files)
    statuses = set()
    rounds_while_running = 0
    while (status := job_status(client, job["id"])) in ("queued", "running"):
        statuses.add(status)
        for n, kb in enumerate(("demo", "big")):
            search(client, kb, queries[(rounds_while_running + n) % len(queries)])
        if status == "running" and job_status(client, job["id"]) == "running":
            rounds_while_running += 1
        time.sleep(0.05)  # a user's pace, not a load test
    assert "running" in statuses and rounds_while_running >= 3, "indexing ended too soon to see; upload more"

    done = wait_until(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["files_done"] == done["files_total"] == len(files)
    assert {f["status"] for f in done["files"]} == {"added"}
    assert document_sources(client, "big") == {name for name, _ in files}


def test_two_uploads_back_to_back_both_land(client: httpx.Client, server: Server) -> None:
    create_kb(client, "twice")
    first, second = generated_files(8, seed=2), generated_files(8, seed=3)
    jobs = [upload(client, "twice", first), upload(client, "twice", second)]
    for job in jobs:
        done = wait_until(client, job["id"])
        assert done["status"] == "succeeded", done
        assert done["files_done"] == 8
    assert document_sources(client, "twice") == {name for name, _ in first + second}
    listed = client.get("/v1/jobs", params={"kb": "twice"}).json()["data"]
    assert [job["id"] for job in listed] == [jobs[1]["id"], jobs[0]["id"]]
    assert_kb_check(server.data_dir, "twice")


def stored_job(data_dir: Path, job_id: str) -> tuple[str, int]:
    """Return the status and files done of a job as the server left them in its job table."""
    with closing(sqlite3.connect(data_dir / "jobs.sqlite")) as db:
        return db.execute("SELECT status, files_done FROM jobs WHERE id = ?", (job_id,)).fetchone()


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_job_running_when_the_server_goes_down_is_resumed(tmp_path: Path, how: str) -> None:
    data = tmp_path / "data"
    files = generated_files(20, seed=4)
    # Small batches commit as they go, so the kill lands between committed and pending files.
    env = {"KBQA_INGESTION__BATCH_CHUNKS": "4"}
    first = Server(data, env)
    try:
        with httpx.Client(base_url=first.url, timeout=60) as http:
            create_kb(http, "crash")
            job = upload(http, "crash", files)
            deadline = time.monotonic() + JOB_TIMEOUT_S
            while (seen := http.get(f"/v1/jobs/{job['id']}").json())["files_done"] < 4:
                assert seen["status"] in ("queued", "running"), seen
                assert time.monotonic() < deadline, seen
                time.sleep(0.02)
        if how == "stopped":
            # SIGTERM (docker stop) does not wait for the upload: the job stops after the batch at hand.
            assert first.stop() in CLEAN_EXIT, first.output()
    finally:
        first.kill()
    assert seen["status"] == "running" and seen["files_done"] < len(files), "killed too late; upload more"
    status, files_done = stored_job(data, job["id"])
    assert status == "running" and files_done < len(files), (status, files_done)

    second = Server(data, env)
    try:
        with httpx.Client(base_url=second.url, timeout=60) as http:
            done = wait_until(http, job["id"])
            assert done["status"] == "succeeded", done
            assert done["files_done"] == done["files_total"] == len(files)
            outcomes = {f["status"] for f in done["files"]}
            assert outcomes == {"added", "skipped"}, done["files"]
            # Chunks stored before the restart count too (one chunk a file), and none twice.
            assert done["chunks_done"] == len(files), done
            assert document_sources(http, "crash") == {name for name, _ in files}
            assert http.get("/v1/kbs/crash").json()["documents"] == len(files)
            originals = {name: body for name, body in files}
            for document in http.get("/v1/kbs/crash/documents").json()["data"]:
                kept = http.get(f"/v1/kbs/crash/documents/{document['id']}/file")
                assert kept.status_code == 200, (document["source"], kept.text)
                assert kept.content == originals[document["source"]]
    finally:
        assert second.stop() in CLEAN_EXIT, second.output()
    assert_kb_check(data, "crash")
    assert not any((data / "uploads").iterdir()), "the staged upload was not cleaned up"


# --- API keys ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that needs API key k1 for writes."""
    running = Server(tmp_path_factory.mktemp("keyed") / "data", env={"KBQA_SERVER__API_KEYS": '["k1"]'})
    yield running
    assert running.stop() in CLEAN_EXIT, running.output()


def test_writes_need_an_api_key_and_reads_do_not(keyed_server: Server) -> None:
    with httpx.Client(base_url=keyed_server.url, timeout=60) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k1"}):
            refused = http.post("/v1/kbs", json={"name": "keyed"}, headers=headers)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "unauthorized"
            assert refused.json()["error"]["request_id"] == refused.headers["x-request-id"]
            assert refused.headers["www-authenticate"] == "Bearer"
        assert http.get("/v1/kbs").json()["data"] == []

        created = http.post("/v1/kbs", json={"name": "keyed"}, headers={"Authorization": "Bearer k1"})
        assert created.status_code == 201, created.text
        assert [kb["name"] for kb in http.get("/v1/kbs").json()["data"]] == ["keyed"]
        assert http.get("/v1/kbs/keyed").status_code == 200
        assert http.delete("/v1/kbs/keyed").status_code == 401
        assert http.delete("/v1/kbs/keyed", headers={"Authorization": "Bearer k1"}).status_code == 204


def test_the_start_up_banner_keeps_each_address_whole_on_its_line(
    server: Server, client: httpx.Client
) -> None:
    # The log is a file, not a terminal: a console would fold a long line at its 80 columns.
    lines = server.output().splitlines()
    assert any(line.endswith(f"web page {server.url}/") for line in lines), lines[:5]
    assert any(line.endswith(f"API docs {server.url}/docs") for line in lines), lines[:5]
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg"), icon.text
    # /docs loads Swagger UI's files from the service itself, not a CDN.
    docs = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn." not in docs
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    redoc = client.get("/redoc").text
    assert "/docs-assets/redoc.standalone.js" in redoc and "cdn." not in redoc
