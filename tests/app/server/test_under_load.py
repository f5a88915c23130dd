"""A real `kbqa serve` under races and hostile files (issue 23): searches and chats that meet deletes, an
upload without a key, a second server on the same data directory, a busy write lock, a delete cut short,
BOM-less UTF-16, originals served back, nested metadata, a spreadsheet that lies about its size."""

from __future__ import annotations

import fcntl
import json
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from documents import table_pdf, xlsx_dimension_bomb
from servers import CLEAN_EXIT, KBQA, Server, build_small_kb, clean_env, create_kb, upload, wait_until

from app.settings import load_settings
from retrieval import KnowledgeBaseCatalog

pytestmark = pytest.mark.slow

KEY = "k1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with an API key over knowledge base `demo`."""
    running = Server(
        build_small_kb(tmp_path_factory.mktemp("load")), env={"KBQA_SERVER__API_KEYS": json.dumps([KEY])}
    )
    yield running
    assert running.stop() in CLEAN_EXIT, running.output()


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    """An HTTP client bearing the server's key."""
    with httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def io_counter(pid: int, name: str) -> int:
    """Return a counter of /proc/<pid>/io (wchar: bytes the process wrote, to files and sockets alike)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return int(value)
    raise KeyError(name)


def test_searches_and_chats_never_fail_while_the_documents_they_find_are_deleted(http: httpx.Client) -> None:
    create_kb(http, "race")
    # Near-copies of one rule: every search finds them all, and dedupe reads each one's vector.
    files = [
        (f"rule{i:02d}.md", f"# 年假规定{i}\n\n员工入职满一年后每年享有十天带薪年假，编号{i}。\n".encode())
        for i in range(40)
    ]
    assert wait_until(http, upload(http, "race", files)["id"])["status"] == "succeeded"
    ids = [d["id"] for d in http.get("/v1/kbs/race/documents").json()["data"]]
    statuses: Counter[int] = Counter()
    done = threading.Event()

    def ask(path: str, body: dict) -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=60, headers=dict(http.headers)) as client:
            while not done.is_set():
                statuses[client.post(path, json=body).status_code] += 1

    askers = [
        threading.Thread(
            target=ask, args=("/v1/kbs/race/search", {"query": "年假有几天", "k": 20, "neighbours": 1})
        )
        for _ in range(4)
    ] + [
        threading.Thread(target=ask, args=("/v1/kbs/race/chat", {"question": "年假有几天？"}))
        for _ in range(2)
    ]
    for thread in askers:
        thread.start()
    try:
        for document_id in ids:
            assert http.delete(f"/v1/kbs/race/documents/{document_id}").status_code == 204
    finally:
        done.set()
        for thread in askers:
            thread.join()
    assert sum(statuses.values()) > len(ids) and set(statuses) == {200}, statuses


def test_an_upload_without_a_key_is_refused_before_its_body_is_read(server: Server) -> None:
    written = io_counter(server.process.pid, "wchar")
    boundary = "kbqa-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    declared = 90 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            (
                f"POST /v1/kbs/demo/documents HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
            ).encode()
            + head
            + b"x" * (1024 * 1024)
        )
        # The rest (89 MiB) is never sent: the answer must come from the headers alone.
        reply = read_response(sock)
    assert reply.startswith("HTTP/1.1 401"), reply[:300]
    assert '"unauthorized"' in reply and "connection: close" in reply.lower()
    assert io_counter(server.process.pid, "wchar") - written < 1024 * 1024
    # Still refused with a wrong key, and still served with the right one.
    wrong = httpx.post(
        f"{server.url}/v1/kbs/demo/documents",
        headers={"Authorization": "Bearer nope"},
        files={"files": ("a.md", b"# a")},
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"


def read_response(sock: socket.socket) -> str:
    """Return one HTTP response read from `sock`: its head and a body of its content-length."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode("latin-1")


def _length(data: bytes) -> int:
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    return next(
        (int(line.split(":")[1]) for line in head.splitlines() if line.startswith("content-length:")), 0
    )


def test_bomless_utf16_text_is_read_as_text(http: httpx.Client) -> None:
    text = "Expense reports are paid within five working days after the manager approves them."
    job = upload(http, "demo", [("utf16.txt", text.encode("utf-16-le"))])
    assert wait_until(http, job["id"])["status"] == "succeeded"
    hits = http.post(
        "/v1/kbs/demo/search", json={"query": "When are expense reports paid?", "source": "utf16.txt"}
    )
    assert hits.status_code == 200 and hits.json()["data"][0]["text"] == text


def test_originals_are_served_as_inert_files(http: httpx.Client, tmp_path: Path) -> None:
    page = b"<html><body><script>fetch('/v1/kbs').then(r => r.text()).then(alert)</script><p>VPN rules.</p></body></html>"
    pdf = table_pdf(tmp_path / "table.pdf").read_bytes()
    job = upload(http, "demo", [("page.html", page), ("table.pdf", pdf)])
    assert wait_until(http, job["id"])["status"] == "succeeded"
    ids = {d["source"]: d["id"] for d in http.get("/v1/kbs/demo/documents").json()["data"]}
    html = http.get(f"/v1/kbs/demo/documents/{ids['page.html']}/file")
    shown = http.get(f"/v1/kbs/demo/documents/{ids['table.pdf']}/file")
    saved = http.get(f"/v1/kbs/demo/documents/{ids['table.pdf']}/file", params={"attachment": "true"})
    for response in (html, shown, saved):
        assert response.status_code == 200
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-security-policy"] == "sandbox"
    assert html.headers["content-disposition"].startswith("attachment") and html.content == page
    assert shown.headers["content-disposition"].startswith("inline")
    assert saved.headers["content-disposition"].startswith("attachment") and saved.content == pdf


def test_deeply_nested_metadata_is_a_clear_400(http: httpx.Client) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    response = http.post(
        "/v1/kbs/demo/documents", files={"files": ("a.md", b"# a")}, data={"metadata": nested}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_metadata"


def test_a_spreadsheet_claiming_a_million_rows_is_read_as_the_rows_it_holds(
    http: httpx.Client, server: Server, tmp_path: Path
) -> None:
    bomb = xlsx_dimension_bomb(tmp_path / "bomb.xlsx").read_bytes()
    before = rss_mb(server.process.pid)
    started = time.monotonic()
    job = wait_until(http, upload(http, "demo", [("bomb.xlsx", bomb)])["id"], seconds=60)
    assert job["status"] == "succeeded" and job["chunks_done"] >= 1, job
    assert time.monotonic() - started < 30
    assert rss_mb(server.process.pid) - before < 200
    hits = http.post("/v1/kbs/demo/search", json={"query": "年假", "source": "bomb.xlsx"}).json()["data"]
    # The two rows it holds, and nothing of the million it claims.
    assert hits[0]["text"] == "编号: KB0001\n规定: 员工入职满一年后，每年享有十天带薪年假。\n\nend"


def test_a_page_nested_two_million_deep_is_refused_and_its_memory_does_not_pile_up(
    http: httpx.Client, server: Server
) -> None:
    page = (
        b"<html><body>"
        + b"<div>" * 2_000_000
        + "年假十天。".encode()
        + b"</div>" * 2_000_000
        + b"</body></html>"
    )

    def refused() -> None:
        job = wait_until(http, upload(http, "demo", [("deep.html", page)])["id"], seconds=60)
        assert job["status"] == "failed" and "nested more than 512 elements deep" in job["files"][0]["reason"]

    refused()  # the upload path's buffers are made once
    before = settled_rss(server.process.pid, 0, seconds=2)
    for _ in range(3):  # a leak grows with each; memory that returns does not
        refused()
    # Measured here after the module's other tests: within 2 MiB of `before` over eight pages. A page left
    # in memory by each (before the traceback fix: +60 MiB a page), or the heap keeping large buffers (with
    # glibc's mmap threshold left to creep up: +40 MiB every second or third page) passes 50 by the third.
    assert settled_rss(server.process.pid, before + 25) - before < 50


def settled_rss(pid: int, target: float, seconds: float = 10.0) -> float:
    """Return the RSS of `pid` in MiB once it is below `target`, or after `seconds`."""
    deadline = time.monotonic() + seconds
    while (now := rss_mb(pid)) >= target and time.monotonic() < deadline:
        time.sleep(0.2)
    return now


def rss_mb(pid: int) -> float:
    """Return the resident memory of process `pid` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


# --- one server per data directory, the write lock, deletes cut short -------------------------------


def test_a_second_server_on_a_data_directory_is_refused_and_the_first_keeps_working(tmp_path: Path) -> None:
    data = build_small_kb(tmp_path)
    first = Server(data)
    try:
        second = subprocess.run(
            [KBQA, "--data-dir", str(data), "serve", "--port", "1"],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=120,
            check=False,
        )
        assert second.returncode == 1, second.stdout + second.stderr
        message = " ".join(second.stderr.split())
        assert f"another kbqa server (pid {first.process.pid})" in message and "--data-dir" in message
        with httpx.Client(base_url=first.url, timeout=60) as http:
            job = upload(http, "demo", [("later.md", "# 班车\n\n班车每天早上八点从总部出发。\n".encode())])
            assert wait_until(http, job["id"])["status"] == "succeeded"
            assert http.get(f"/v1/kbs/demo/documents/{_id(http, 'later.md')}/file").status_code == 200
    finally:
        assert first.stop() in CLEAN_EXIT, first.output()
    # The lock goes with the process: a server started after it is served.
    Server(data).stop()


def test_an_upload_waits_while_another_process_writes_the_knowledge_base(tmp_path: Path) -> None:
    data = build_small_kb(tmp_path)
    server = Server(data)
    try:
        with open(data / "kbs" / "demo" / "write.lock", "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # what `kbqa index build` into `demo` holds while it writes
            with httpx.Client(base_url=server.url, timeout=60) as http:
                job = upload(http, "demo", [("shuttle.md", "# 班车\n\n班车每天早上八点出发。\n".encode())])
                time.sleep(2)
                waiting = http.get(f"/v1/jobs/{job['id']}").json()
                assert waiting["status"] == "running" and "waiting" in (waiting["reading"] or ""), waiting
                fcntl.flock(held, fcntl.LOCK_UN)
                assert wait_until(http, job["id"])["status"] == "succeeded"
                assert http.get(f"/v1/kbs/demo/documents/{_id(http, 'shuttle.md')}/file").status_code == 200
    finally:
        assert server.stop() in CLEAN_EXIT, server.output()


def test_the_original_of_a_delete_cut_short_is_removed_at_the_next_start(tmp_path: Path) -> None:
    data = build_small_kb(tmp_path)
    server = Server(data)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        job = upload(http, "demo", [("gone.md", "# 停车\n\n地下车库晚上十点关闭。\n".encode())])
        assert wait_until(http, job["id"])["status"] == "succeeded"
        document_id = _id(http, "gone.md")
    assert server.stop() in CLEAN_EXIT
    original = data / "kbs" / "demo" / "originals" / "gone.md"
    assert original.is_file()
    # What a kill between the delete's commit and its unlink leaves: the document gone, its file kept.
    catalog = KnowledgeBaseCatalog(load_settings(data_dir=data).data_dir)
    kb = catalog.open("demo")
    with kb.writing():
        kb.delete_documents([document_id])
    kb.close()
    Server(data).stop()
    assert not original.exists()


def _id(http: httpx.Client, source: str) -> int:
    """Return the id of the document stored under `source`."""
    return next(d["id"] for d in http.get("/v1/kbs/demo/documents").json()["data"] if d["source"] == source)
