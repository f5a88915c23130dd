"""Hostile and heavy input against a real `kbqa serve`: long texts, oversized fields and bodies, huge
uploads, long file names, and clients that go away; the service answers 4xx and keeps serving others."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from documents import docx_bomb
from servers import (
    CLEAN_EXIT,
    Server,
    assert_kb_check,
    build_small_kb,
    create_kb,
    generated_files,
    upload,
    wait_until,
)

from app.jobs import MAX_ATTEMPTS

pytestmark = pytest.mark.slow

LONG_TEXT = ("员工入职满一年后，每年享有十天带薪年假。VPN user names are badge numbers. " * 400)[:20_000]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server over knowledge base `demo`, with uploads limited to 1 MiB a file."""
    running = Server(
        build_small_kb(tmp_path_factory.mktemp("hostile")), env={"KBQA_SERVER__MAX_UPLOAD_MB": "1"}
    )
    yield running
    assert running.stop() in CLEAN_EXIT, running.output()


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    """An HTTP client for the shared server."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> str:
    """Assert a JSON error with this status (and code); return its message."""
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    if code is not None:
        assert error["code"] == code, error
    return error["message"]


def test_search_answers_within_2_s_while_20000_character_inputs_are_sent(
    http: httpx.Client, server: Server
) -> None:
    assert http.post("/v1/kbs/demo/search", json={"query": "年假"}).status_code == 200  # jieba warmed up
    heavy = [
        ("/v1/embeddings", {"input": [LONG_TEXT, LONG_TEXT[::-1]], "model": "e5"}),
        ("/v1/embeddings", {"input": LONG_TEXT}),
        (
            "/v1/chat/completions",
            {
                "model": "demo",
                "messages": [
                    {"role": "user", "content": LONG_TEXT},
                    {"role": "assistant", "content": LONG_TEXT},
                    {"role": "user", "content": LONG_TEXT[:8000]},
                ],
            },
        ),
        (
            "/v1/kbs/demo/chat",
            {
                "question": LONG_TEXT[:8000],
                "history": [
                    {"role": "user", "content": LONG_TEXT},
                    {"role": "assistant", "content": LONG_TEXT},
                ],
            },
        ),
        ("/v1/kbs/demo/search", {"query": LONG_TEXT[:4000]}),
    ]
    results: list[tuple[str, int, float]] = []
    stop = threading.Event()

    def send(path: str, body: dict) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            while not stop.is_set():
                started = time.perf_counter()
                status = client.post(path, json=body).status_code
                results.append((path, status, time.perf_counter() - started))

    senders = [threading.Thread(target=send, args=item) for item in heavy]
    for sender in senders:
        sender.start()
    searches: list[float] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = http.post("/v1/kbs/demo/search", json={"query": "VPN user name", "k": 3}, timeout=10)
            searches.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
            time.sleep(0.2)
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    print(
        f"{len(searches)} searches, slowest {max(searches):.2f} s; heavy requests: "
        f"{len(results)}, slowest {max(r[2] for r in results):.2f} s"
    )
    assert {status for _, status, _ in results} == {200}, results
    assert len(results) >= len(heavy), results
    assert max(searches) < 2.0, sorted(searches)[-5:]
    # A 20,000-character text costs one model window, not forty (16,000 characters took 102 s before the
    # cut, alone): with five of them at a time on two shared cores, each still ends within a minute.
    assert max(seconds for _, _, seconds in results) < 60, max(results, key=lambda r: r[2])


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/kbs/demo/search", {"query": "x" * 4001}, "query"),
        ("/v1/kbs/demo/search", {"query": "x", "source": "*" * 10**6}, "source"),
        ("/v1/kbs/demo/search", {"query": "x", "metadata": {f"k{i}": "v" for i in range(1000)}}, "metadata"),
        ("/v1/kbs/demo/chat", {"question": "x" * 8001}, "question"),
        (
            "/v1/kbs/demo/chat",
            {"question": "x", "history": [{"role": "user", "content": "x" * 20_001}]},
            "content",
        ),
        (
            "/v1/kbs/demo/chat",
            {"question": "x", "history": [{"role": "user", "content": "x"}] * 51},
            "history",
        ),
        ("/v1/kbs/demo/chat", {"question": "x", "generation": {"stop": ["x"] * 17}}, "stop"),
        ("/v1/embeddings", {"input": "x" * 20_001}, "input"),
        ("/v1/embeddings", {"input": ["x"] * 2049}, "input"),
        (
            "/v1/chat/completions",
            {"model": "demo", "messages": [{"role": "user", "content": "x" * 8001}]},
            "question",
        ),
        (
            "/v1/chat/completions",
            {"model": "demo", "messages": [{"role": "user", "content": "x" * 20_001}]},
            "content",
        ),
        (
            "/v1/chat/completions",
            {"model": "demo", "messages": [{"role": "user", "content": "x"}] * 101},
            "messages",
        ),
    ],
)
def test_a_field_over_its_documented_maximum_is_refused_with_422(
    http: httpx.Client, path: str, body: dict, field: str
) -> None:
    message = assert_error(http.post(path, json=body), 422, "invalid_request")
    assert field in message, message


def test_filters_at_their_limits_are_served(http: httpx.Client) -> None:
    glob = "*" * 1000
    many = {f"k{i}": "v" for i in range(32)}
    for options in ({"source": glob}, {"metadata": many}, {"source": glob, "metadata": many}):
        response = http.post("/v1/kbs/demo/search", json={"query": "年假", **options})
        assert response.status_code == 200, response.text


def test_a_json_body_over_the_limit_is_refused_before_it_is_read(http: httpx.Client) -> None:
    big = json.dumps({"input": ["x" * 1000] * 17_000}).encode()  # about 17 MiB, over the 16 MiB default
    message = assert_error(
        http.post("/v1/embeddings", content=big, headers={"content-type": "application/json"}), 413
    )
    assert "request body" in message
    assert (
        http.post("/v1/embeddings", content=big, headers={"content-type": "application/json"}).json()[
            "error"
        ]["code"]
        == "body_too_large"
    )

    def chunked() -> Iterator[bytes]:  # no declared length: refused once the bytes received pass the limit
        for start in range(0, len(big), 1 << 20):
            yield big[start : start + (1 << 20)]

    response = http.post("/v1/embeddings", content=chunked(), headers={"content-type": "application/json"})
    assert_error(response, 413, "body_too_large")
    assert http.get("/healthz").status_code == 200


def test_an_upload_over_the_file_limit_stops_being_read_at_the_limit(
    http: httpx.Client, server: Server
) -> None:
    sent = 0
    boundary = "kbqa-boundary"

    def body() -> Iterator[bytes]:  # one 64 MiB file, 1 MiB a piece, as a client streams it
        nonlocal sent
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        for _ in range(64):
            sent += 1
            yield b"x" * (1 << 20)
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    try:
        response = http.post("/v1/kbs/demo/documents", content=body(), headers=headers)
        assert_error(response, 413, "file_too_large")
    except httpx.TransportError:
        pass  # the server answered and closed the connection while the client was still writing
    assert sent < 16, f"the server read {sent} MiB of a file limited to 1 MiB"
    assert not any((server.data_dir / "uploads").glob("*/*")), "the refused upload was left on disk"
    assert http.get("/healthz").status_code == 200


def test_a_long_file_name_is_shortened_on_disk_and_kept_whole_by_the_document(http: httpx.Client) -> None:
    name = "关于员工年假与报销流程的补充说明" * 6 + ".md"  # 96 Chinese characters: 291 bytes
    assert len(name.encode()) > 255
    text = "# 补充说明\n\n长文件名的文档也能上传，年假申请需提前五个工作日。\n".encode()
    response = http.post("/v1/kbs/demo/documents", files=[("files", (name, text, "text/markdown"))])
    assert response.status_code == 202, response.text
    job_id = response.json()["job"]["id"]
    job = wait_until(http, job_id, seconds=120)
    assert job["status"] == "succeeded", job
    documents = {d["source"]: d for d in http.get("/v1/kbs/demo/documents").json()["data"]}
    assert name in documents
    original = http.get(f"/v1/kbs/demo/documents/{documents[name]['id']}/file")
    assert original.status_code == 200 and original.content == text
    hits = http.post("/v1/kbs/demo/search", json={"query": "长文件名的文档", "k": 1}).json()["data"]
    assert hits[0]["source"] == name
    deleted = http.delete(f"/v1/kbs/demo/documents/{documents[name]['id']}")
    assert deleted.status_code == 204


def test_work_for_a_client_that_went_away_stops(http: httpx.Client) -> None:
    body = {"input": [LONG_TEXT[i : i + 500] for i in range(2000)]}  # 2,000 texts: minutes of work

    def stopped() -> float:
        metrics = http.get("/metrics").text
        found = re.search(
            r'kbqa_requests_total\{method="POST",route="/v1/embeddings",status="499"\} (\S+)', metrics
        )
        return float(found.group(1)) if found else 0.0

    before = stopped()
    with pytest.raises(httpx.TimeoutException):
        http.post("/v1/embeddings", json=body, timeout=2)
    deadline = time.monotonic() + 15
    while stopped() == before:
        assert time.monotonic() < deadline, "the embeddings of a client that left went on"
        time.sleep(0.2)


def rss_mb(server: Server) -> float:
    """Return the server process's resident memory in MiB."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def test_a_docx_zip_bomb_is_refused_with_bounded_memory(
    http: httpx.Client, server: Server, tmp_path: Path
) -> None:
    bomb = docx_bomb(tmp_path / "bomb.docx", 300_000)  # 27 MiB of XML in about 100 KB: ~1 GB as a tree
    before = rss_mb(server)
    response = http.post("/v1/kbs/demo/documents", files=[("files", ("bomb.docx", bomb.read_bytes()))])
    assert response.status_code == 202, response.text
    job = wait_until(http, response.json()["job"]["id"], seconds=300)
    growth = rss_mb(server) - before
    print(f"zip bomb: RSS {before:.0f} MiB, grew {growth:.0f} MiB")
    assert job["status"] == "failed" and "zip bomb" in job["files"][0]["reason"], job
    assert growth < 100, f"refusing the zip bomb grew the server by {growth:.0f} MiB"
    assert "bomb.docx" not in {d["source"] for d in http.get("/v1/kbs/demo/documents").json()["data"]}


def test_a_job_the_server_keeps_going_down_in_is_failed_after_bounded_attempts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"KBQA_INGESTION__BATCH_CHUNKS": "1"}
    files = generated_files(30, seed=12)
    job_id = None
    for attempt in range(MAX_ATTEMPTS + 1):
        running = Server(data, env)
        try:
            with httpx.Client(base_url=running.url, timeout=60) as client:
                if job_id is None:
                    create_kb(client, "crashy")
                    job_id = upload(client, "crashy", files)["id"]
                if attempt == MAX_ATTEMPTS:
                    job = client.get(f"/v1/jobs/{job_id}").json()
                    break
                deadline = time.monotonic() + 120
                while client.get(f"/v1/jobs/{job_id}").json()["status"] != "running":  # then crash it
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
        finally:
            running.kill()
    assert job["status"] == "failed", job
    assert f"went down {MAX_ATTEMPTS} times" in job["error"] and "rule_12_" in job["error"], job
    assert not (data / "uploads" / job_id).exists()


def large_csv(rows: int) -> bytes:
    """Return a CSV of `rows` distinct rows: one document of many chunks (about 5 rows a chunk)."""
    lines = ["编号,部门,规定"]
    lines += [
        f"KB{i:05d},第{i % 17}部门,第{i}号规定：差旅报销须在{i % 30 + 1}个工作日内提交凭证并经主管审批。"
        for i in range(rows)
    ]
    return "\n".join(lines).encode()


def test_a_large_document_shows_progress_appears_whole_and_its_job_can_be_cancelled(tmp_path: Path) -> None:
    running = Server(tmp_path / "data", {"KBQA_INGESTION__BATCH_CHUNKS": "8"})
    try:
        with httpx.Client(base_url=running.url, timeout=60) as http:
            create_kb(http, "big")
            assert upload(http, "big", [("small.md", "# 小文件\n\n年假十天。".encode())])["id"]
            big = upload(http, "big", [("big.csv", large_csv(2000))])
            queued = upload(http, "big", [("later.md", "# 后来\n\n报销五天。".encode())])
            # Progress inside one document, which searchers do not see until it is whole.
            job = wait_until(
                http, big["id"], lambda j: j["status"] == "running" and j["chunks_done"] >= 8, 120, 0.05
            )
            assert job["files_done"] == 0, job
            assert "big.csv" not in {d["source"] for d in http.get("/v1/kbs/big/documents").json()["data"]}
            # A queued job is cancelled at once; the running one within a batch.
            cancelled = http.post(f"/v1/jobs/{queued['id']}/cancel")
            assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled", cancelled.text
            asked = time.monotonic()
            assert http.post(f"/v1/jobs/{big['id']}/cancel").status_code == 202
            job = wait_until(http, big["id"], lambda j: j["status"] != "running", 60, 0.05)
            print(f"cancelled within {time.monotonic() - asked:.1f} s at {job['chunks_done']} chunks")
            assert job["status"] == "cancelled", job
            assert {d["source"] for d in http.get("/v1/kbs/big/documents").json()["data"]} == {"small.md"}
            assert http.get(f"/v1/jobs/{queued['id']}").json()["status"] == "cancelled"
            refused = http.post(f"/v1/jobs/{big['id']}/cancel")
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_finished"
            assert http.post("/v1/jobs/nope/cancel").status_code == 404
            assert not any((running.data_dir / "uploads").glob("*/*")), "cancelled uploads were left on disk"
            assert_kb_check(running.data_dir, "big")
            assert http.delete("/v1/kbs/big").status_code == 204  # nothing holds it any more
    finally:
        assert running.stop() in CLEAN_EXIT, running.output()


def test_sigterm_during_a_large_document_stops_the_server_within_the_bound(tmp_path: Path) -> None:
    env = {"KBQA_INGESTION__BATCH_CHUNKS": "8"}
    first = Server(tmp_path / "data", env)
    try:
        with httpx.Client(base_url=first.url, timeout=60) as http:
            create_kb(http, "big")
            job = upload(http, "big", [("big.csv", large_csv(2000))])
            wait_until(
                http, job["id"], lambda j: j["status"] == "running" and j["chunks_done"] >= 8, 120, 0.05
            )
        asked = time.monotonic()
        assert first.stop() in CLEAN_EXIT, first.output()
        stopped = time.monotonic() - asked
    finally:
        first.kill()
    print(f"SIGTERM during a large document: stopped in {stopped:.1f} s")
    assert stopped < 30, f"the server took {stopped:.1f} s to stop"
    assert_kb_check(tmp_path / "data", "big")
    second = Server(tmp_path / "data", env)
    try:
        with httpx.Client(base_url=second.url, timeout=60) as http:
            assert http.get(f"/v1/jobs/{job['id']}").json()["status"] in ("queued", "running")
            assert http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
            wait_until(http, job["id"], lambda j: j["status"] == "cancelled", 60, 0.05)
    finally:
        assert second.stop() in CLEAN_EXIT, second.output()
    assert_kb_check(tmp_path / "data", "big")


def test_protect_reads_covers_metrics_docs_and_readiness_details(tmp_path: Path) -> None:
    # An upload a crash cut short before its job was saved: its staging folder goes at the next start.
    leftover = tmp_path / "data" / "uploads" / "0123abcd"
    leftover.mkdir(parents=True)
    (leftover / "half.md").write_bytes(b"x" * 1000)
    env = {"KBQA_SERVER__API_KEYS": '["k1"]', "KBQA_SERVER__PROTECT_READS": "true"}
    running = Server(tmp_path / "data", env)
    try:
        assert not leftover.exists(), "the interrupted upload's staging folder was kept"
        with httpx.Client(base_url=running.url, timeout=60) as http:
            key = {"Authorization": "Bearer k1"}
            for path in ("/metrics", "/docs", "/redoc", "/openapi.json", "/v1/kbs", "/v1/jobs"):
                assert_error(http.get(path), 401, "unauthorized")
                assert http.get(path, headers=key).status_code == 200, path
            assert http.get("/healthz").json() == {"status": "ok"}
            assert http.get("/readyz").json() == {"status": "ready"}  # for health checks: no model names
            assert http.get("/readyz", headers=key).json()["embedding"] == "multilingual-e5-small"
            paths = http.get("/openapi.json", headers=key).json()["paths"]
            assert "/v1/jobs/{job_id}/cancel" in paths
            # The schema lists the errors the API really answers with, each with the error body.
            documented = paths["/v1/kbs/{kb}/documents"]["post"]["responses"]
            assert {"400", "401", "404", "409", "413", "415", "422", "429"} <= set(documented)
            assert "ErrorOut" in documented["413"]["content"]["application/json"]["schema"]["$ref"]
    finally:
        assert running.stop() in CLEAN_EXIT, running.output()
