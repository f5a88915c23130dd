"""What a newcomer meets in the first seconds of `kbqa serve --sample-kb demo`: the addresses printed only
once the port accepts, `/healthz` answering while the models load, `/readyz` saying what is still loading,
model routes refusing with 503 meanwhile, and a SIGTERM during the loading ending the process promptly."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from servers import CLEAN_EXIT, KBQA, READY_TIMEOUT_S, clean_env, free_port, kbqa

pytestmark = pytest.mark.slow


def start(data: Path, log: Path, port: int) -> subprocess.Popen:
    """Return `kbqa serve --sample-kb demo` started on `port`, its output going to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                KBQA,
                "--data-dir",
                str(data),
                "serve",
                "--sample-kb",
                "demo",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def accepts(port: int) -> bool:
    """Return whether a TCP connection to the port is accepted now."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop(process: subprocess.Popen) -> int:
    """SIGTERM the server; return its exit code (killing it if it ignores the signal for 60 s)."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail("kbqa serve ignored SIGTERM for 60 s")


def test_healthz_answers_while_the_models_load_and_the_addresses_wait_for_the_port(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    process = start(tmp_path / "data", log, port)
    seen: list[tuple[int, dict]] = []  # (/healthz status, /readyz body) while the models load
    refused_chat = None
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"not ready after {READY_TIMEOUT_S:.0f} s:\n{log.read_text()}"
            # Read the output first, then try the port: an address printed before the port accepts fails here.
            announced = f"web page {url}/" in log.read_text(errors="replace")
            if not accepts(port):
                assert not announced, (
                    f"the addresses were printed before the port accepted:\n{log.read_text()}"
                )
                time.sleep(0.02)
                continue
            health = httpx.get(f"{url}/healthz", timeout=5).status_code
            ready = httpx.get(f"{url}/readyz", timeout=5)
            if ready.status_code == 200:
                break
            assert ready.status_code == 503 and ready.headers["retry-after"], ready.text
            seen.append((health, ready.json()))
            if refused_chat is None:
                refused_chat = httpx.post(
                    f"{url}/v1/kbs/demo/chat", json={"question": "年假几天？"}, timeout=5
                )
            time.sleep(0.05)

        assert seen, "ready at the first answer: nothing was seen loading"
        assert all(health == 200 for health, _ in seen), seen
        first = seen[0][1]
        assert first["status"] == "loading" and first["pending"], first
        assert "sample knowledge base demo" in first["pending"] + first["done"], first
        # The chat waited for nothing: it was refused at once, saying why and when to come back.
        if refused_chat.status_code == 503:  # unless the models finished loading in between
            assert refused_chat.json()["error"]["code"] == "loading", refused_chat.text
            assert int(refused_chat.headers["retry-after"]) > 0
        else:
            assert refused_chat.status_code == 200, refused_chat.text

        answer = httpx.post(f"{url}/v1/kbs/demo/chat", json={"question": "报销需要多久到账？"}, timeout=60)
        assert answer.status_code == 200 and answer.json()["answer"], answer.text
        output = log.read_text(errors="replace")
        assert f"API docs {url}/docs" in output
        deadline = time.monotonic() + 10  # the ready line comes from its own thread
        while "kbqa: ready" not in output and time.monotonic() < deadline:
            time.sleep(0.1)
            output = log.read_text(errors="replace")
        assert "kbqa: ready, the models loaded in" in output, output
    finally:
        assert stop(process) in CLEAN_EXIT, log.read_text()


def test_sigterm_while_the_sample_kb_is_built_stops_promptly_and_leaves_no_half_of_it(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    data = tmp_path / "data"
    process = start(data, log, port)
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while True:  # until the sample knowledge base is being built
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                body = httpx.get(f"{url}/readyz", timeout=5).json()
            except httpx.TransportError:
                body = {}
            if body.get("status") == "ready":
                pytest.skip("the sample knowledge base was built before it could be interrupted")
            if body.get("sample_kb"):
                break
            time.sleep(0.05)
    except BaseException:
        process.kill()
        raise
    signalled = time.monotonic()
    code = stop(process)
    took = time.monotonic() - signalled
    assert code in CLEAN_EXIT, log.read_text()
    # The sample stops within an embedding step (a few seconds on a busy CPU), well inside uvicorn's 10 s grace.
    assert took < 30, f"SIGTERM took {took:.0f} s:\n{log.read_text()}"
    listed = kbqa("--data-dir", str(data), "kb", "list")
    assert listed.returncode == 0, listed.stderr
    assert "demo" not in listed.stdout, (
        "a half-built sample knowledge base was left; the next start would keep it"
    )
