"""The web page in Debian's headless Chromium, driven by Playwright, against `kbqa serve` in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

pytestmark = pytest.mark.slow

KBQA = str(Path(sys.executable).parent / "kbqa")
CHROMIUM = Path("/usr/bin/chromium")
# The first ingestion and the first question load the embedding model inside the server.
SLOW_MS = 90_000
POLICY = (
    "# 费用报销制度\n\n"
    "员工应在费用发生后三十天内提交报销单，并附上发票原件。\n\n"
    "报销款在审核通过后五个工作日内打到工资卡。\n"
)
QUESTION = "报销款多久到账？"


def _free_port() -> int:
    """Return a TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run `kbqa serve` on a fresh data directory; yield its base URL once /healthz answers."""
    home = tmp_path_factory.mktemp("web")
    env = {name: value for name, value in os.environ.items() if not name.startswith("KBQA_")}
    env["KBQA_DATA_DIR"] = str(home / "data")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = home / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [KBQA, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"kbqa serve exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"kbqa serve did not answer /healthz within 60 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Launch Debian's Chromium headless (Playwright's own browser downloads are not used)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing; the web page tests need Debian's Chromium: "
            "apt-get install -y --no-install-recommends chromium",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser tab (own localStorage); fails the test if the page's script throws."""
    context = browser.new_context()
    tab = context.new_page()
    script_errors: list[str] = []
    tab.on("pageerror", lambda error: script_errors.append(str(error)))
    yield tab
    context.close()
    assert not script_errors, f"the page's script threw: {script_errors}"


def test_create_upload_ask_and_open_a_citation(server: str, page: Page, tmp_path: Path) -> None:
    page.goto(f"{server}/")
    page.fill("#kb-name", "制度")
    page.click("#create-kb")
    expect(page.locator("#kb-select")).to_have_value("制度")

    policy = tmp_path / "expenses.md"
    policy.write_text(POLICY, encoding="utf-8")
    page.set_input_files("#file-input", str(policy))
    page.click("#upload")
    job = page.locator("#job-status")
    expect(job).to_have_attribute("data-status", "succeeded", timeout=SLOW_MS)
    expect(job).to_contain_text("1/1")
    expect(page.locator("#job-files")).to_contain_text("expenses.md")
    expect(page.locator("#documents tr")).to_have_count(1)
    expect(page.locator("#documents")).to_contain_text("expenses.md")
    expect(page.locator("#kb-select option:checked")).to_contain_text("1 文档")
    download = page.locator("#documents a").get_attribute("href")
    assert httpx.get(f"{server}{download}").content == policy.read_bytes()

    page.fill("#question", QUESTION)
    with page.expect_response(lambda response: response.url.endswith("/chat")) as chat:
        page.click("#ask")
    assert chat.value.headers["content-type"].startswith("text/event-stream")
    answer = page.locator("#answer")
    expect(answer).to_have_attribute("data-state", "done", timeout=SLOW_MS)
    expect(answer).to_contain_text("五个工作日")
    expect(page.locator("#chat-error")).to_be_empty()

    citation = page.locator("#citations summary").first
    expect(citation).to_contain_text("expenses.md")
    expect(citation).to_contain_text("[1]")
    chunk = page.locator("#citations .chunk").first
    expect(chunk).to_be_hidden()
    citation.click()
    expect(chunk).to_be_visible()
    expect(chunk).to_contain_text("报销款在审核通过后五个工作日内打到工资卡")

    # A follow-up question carries the first turn as history, and the first turn moves into the log.
    first_answer = answer.text_content()
    page.fill("#question", "报销单要在多少天内提交？")
    with page.expect_request(lambda request: request.url.endswith("/chat")) as follow_up:
        page.press("#question", "Enter")
    assert json.loads(follow_up.value.post_data)["history"] == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first_answer},
    ]
    expect(answer).to_have_attribute("data-state", "done", timeout=SLOW_MS)
    expect(answer).to_contain_text("三十天")
    expect(page.locator("#conversation .turn")).to_have_count(1)
    expect(page.locator("#conversation .question")).to_have_text(QUESTION)


def test_unsupported_file_type_shows_the_api_error(server: str, page: Page, tmp_path: Path) -> None:
    assert httpx.post(f"{server}/v1/kbs", json={"name": "tools"}).status_code == 201
    program = tmp_path / "setup.exe"
    program.write_bytes(b"MZ\x90\x00" + bytes(60))
    refused = httpx.post(
        f"{server}/v1/kbs/tools/documents", files={"files": (program.name, program.read_bytes())}
    )
    assert refused.status_code == 415
    message = refused.json()["error"]["message"]

    page.goto(f"{server}/")
    page.select_option("#kb-select", "tools")
    page.set_input_files("#file-input", str(program))
    page.click("#upload")
    error = page.locator("#upload-error")
    expect(error).to_contain_text(message)
    expect(error).to_contain_text("415")
    expect(page.locator("#job-status")).to_be_empty()
    expect(page.locator("#documents tr")).to_have_count(0)


def test_create_errors_show_and_the_api_key_is_sent(server: str, page: Page) -> None:
    page.goto(f"{server}/")
    page.fill("#api-key", "secret-key")
    page.dispatch_event("#api-key", "change")
    page.fill("#kb-name", "twice")
    with page.expect_request(lambda request: request.method == "POST") as created:
        page.click("#create-kb")
    assert created.value.headers["authorization"] == "Bearer secret-key"
    expect(page.locator("#kb-select")).to_have_value("twice")

    page.fill("#kb-name", "twice")
    page.click("#create-kb")
    expect(page.locator("#kb-error")).to_contain_text("409")
    expect(page.locator("#kb-error")).to_contain_text(
        httpx.post(f"{server}/v1/kbs", json={"name": "twice"}).json()["error"]["message"]
    )

    page.reload()
    expect(page.locator("#api-key")).to_have_value("secret-key")
