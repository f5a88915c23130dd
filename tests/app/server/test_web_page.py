"""The web page in Debian's headless Chromium, driven by Playwright, against `kbqa serve` in a subprocess.

Two servers: the default one (extractive answers, which arrive as one delta), and one whose LLM is the
fake OpenAI server of tests/openai_server.py streaming word by word, for what needs a real stream (the
question and its answer together while it streams, stop, citation numbering). Screenshots of the
desktop and phone layouts go to build/screenshots/ (ignored by git) for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import paths
import pytest
from fpdf import FPDF
from openai_server import Controls, FakeOpenAIServer
from playwright.sync_api import Browser, Page, expect, sync_playwright
from servers import free_port

from ingestion import SUPPORTED_SUFFIXES
from ingestion.loaders import IMAGE_SUFFIXES

pytestmark = pytest.mark.slow

KBQA = str(Path(sys.executable).parent / "kbqa")
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = paths.REPO / "build" / "screenshots"
# The first ingestion and the first question load the embedding model inside the server.
SLOW_MS = 90_000
POLICY = (
    "# 费用报销制度\n\n"
    "员工应在费用发生后三十天内提交报销单，并附上发票原件。\n\n"
    "报销款在审核通过后五个工作日内打到工资卡。\n"
)
QUESTION = "报销款多久到账？"
HANDBOOK = (
    "# Handbook\n\n"
    "## Leave\n\nEvery employee has twenty days of paid annual leave a year. Unused leave expires in March.\n\n"
    "## Travel\n\nTrains are booked in second class. Flights need the approval of a department head.\n\n"
    "## Equipment\n\nLaptops are replaced every four years. Phones are replaced every three years.\n"
)
# The fake model echoes its prompt; this English template lists the chunks last-first, so the answer
# names them [k] … [1] and the page must renumber them 1 … k. The Chinese one makes the reply the
# refusal sentence.
REVERSED_TEMPLATE = (
    "{% for chunk in chunks|reverse %}[{{ chunk.n }}] {{ chunk.text }}\n{% endfor %}Question: {{ question }}"
)
REFUSING_TEMPLATE = "{{ refusal }}{% if false %}{{ chunks }}{{ question }}{% endif %}"


@contextmanager
def _serve(home: Path, settings: dict[str, str]) -> Iterator[str]:
    """Run `kbqa serve` on a fresh data directory with `settings` (KBQA_… variables); yield its base URL."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("KBQA_")}
    env["KBQA_DATA_DIR"] = str(home / "data")
    env.update(settings)
    port = free_port()
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
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"kbqa serve was not ready (/readyz) within 60 s:\n{log_path.read_text()}")
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
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The default service: extractive answers."""
    with _serve(tmp_path_factory.mktemp("web"), {}) as url:
        yield url


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeOpenAIServer]:
    """The fake OpenAI server, streaming a word every 30 ms."""
    llm = FakeOpenAIServer()
    llm.controls = Controls(models=("m",), delta_delay_s=0.03)
    llm.start()
    yield llm
    llm.stop()


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeOpenAIServer) -> Iterator[str]:
    """A service answering with the streaming fake model, with the knowledge base `handbook`."""
    settings = {
        "KBQA_LLM__BACKEND": "openai",
        "KBQA_LLM__OPENAI__BASE_URL": fake_llm.base_url,
        "KBQA_LLM__OPENAI__MODEL": "m",
        "KBQA_LLM__OPENAI__MAX_RETRIES": "0",
        "KBQA_LLM__PROMPT__TEMPLATE_EN": REVERSED_TEMPLATE,
        "KBQA_LLM__PROMPT__TEMPLATE_ZH": REFUSING_TEMPLATE,
    }
    with _serve(tmp_path_factory.mktemp("web-llm"), settings) as url:
        _knowledge_base(url, "handbook", {"handbook.md": HANDBOOK.encode()})
        yield url


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


@contextmanager
def _tab(browser: Browser, **context_options) -> Iterator[Page]:
    """Yield a tab in a fresh context (own localStorage); fail if the page's script throws."""
    context = browser.new_context(**{"locale": "en-US", **context_options})
    tab = context.new_page()
    script_errors: list[str] = []
    tab.on("pageerror", lambda error: script_errors.append(str(error)))
    yield tab
    context.close()
    assert not script_errors, f"the page's script threw: {script_errors}"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A desktop-sized tab with an English browser."""
    with _tab(browser, viewport={"width": 1280, "height": 800}) as tab:
        yield tab


def _knowledge_base(url: str, name: str, files: dict[str, bytes]) -> None:
    """Create knowledge base `name` through the API and index `files` into it."""
    assert httpx.post(f"{url}/v1/kbs", json={"name": name}).status_code == 201
    upload = [("files", (file_name, content)) for file_name, content in files.items()]
    job = httpx.post(f"{url}/v1/kbs/{name}/documents", files=upload, timeout=30).json()["job"]
    deadline = time.monotonic() + SLOW_MS / 1000
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
        job = httpx.get(f"{url}/v1/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job


def _open(page: Page, url: str, kb: str) -> None:
    """Open the page on knowledge base `kb`."""
    page.goto(f"{url}/")
    expect(page.locator(f"#kb-select option[value='{kb}']")).to_have_count(1)
    page.select_option("#kb-select", kb)
    expect(page.locator("#chat-title")).to_have_text(kb)


def _ask(page: Page, question: str) -> dict:
    """Ask `question` with Enter, wait for its answer to finish; return the API's `done` event data."""
    page.fill("#question", question)
    with page.expect_response(lambda response: response.url.endswith("/chat"), timeout=SLOW_MS) as chat:
        page.press("#question", "Enter")
    expect(page.locator(".turn").last.locator(".answer")).to_have_attribute(
        "data-state", "done", timeout=SLOW_MS
    )
    return _done(chat.value.text())


def _done(stream: str) -> dict:
    """Return the data of the `done` event of a chat's server-sent events."""
    blocks = [block for block in stream.split("\n\n") if block.startswith("event: done")]
    assert len(blocks) == 1, stream
    return json.loads(blocks[0].split("data: ", 1)[1])


def _pdf(path: Path, pages: list[str]) -> Path:
    """Write an English PDF with one page of text each."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


def _no_horizontal_scroll(page: Page) -> None:
    """Assert that nothing on show sticks out of the window, and no scrolling box scrolls sideways."""
    overflow = page.evaluate(
        """() => {
        const width = window.innerWidth;
        const wide = [];
        for (const node of [document.documentElement, document.body, ...document.querySelectorAll('*')]) {
          if (!node.checkVisibility({ visibilityProperty: true })) continue;
          const box = node.getBoundingClientRect();
          if (box.width && (box.left < -1 || box.right > width + 1)) wide.push(node.id || node.className || node.tagName);
          if (node.scrollWidth > node.clientWidth + 1 && ['auto', 'scroll'].includes(getComputedStyle(node).overflowX)) {
            wide.push(`scrolls: ${node.id || node.className || node.tagName}`);
          }
        }
        return { width, scrollWidth: document.documentElement.scrollWidth, wide };
        }"""
    )
    assert overflow["scrollWidth"] <= overflow["width"], overflow
    assert overflow["wide"] == [], overflow


# ---- chat ----


def test_question_and_streamed_answer_appear_together_with_sources_numbered_in_order(
    llm_server: str, page: Page
) -> None:
    _open(page, llm_server, "handbook")
    question = "How many days of annual leave do we get?"
    page.fill("#question", question)
    with page.expect_response(lambda response: response.url.endswith("/chat")) as chat:
        page.press("#question", "Enter")
    turn = page.locator(".turn")
    expect(turn).to_have_count(1)
    # While the answer streams, part of it is already on show under its question.
    page.wait_for_function(
        """(question) => {
        const turn = document.querySelector('.turn');
        const answer = turn.querySelector('.answer');
        return turn.querySelector('.question').textContent === question && answer.dataset.state === 'streaming'
          && answer.querySelector('.answer-text').textContent.startsWith('m heard:');
        }""",
        arg=question,
    )
    expect(page.locator("#stop")).to_be_visible()
    expect(page.locator("#question")).to_have_value("")
    expect(turn.locator(".answer")).to_have_attribute("data-state", "done", timeout=SLOW_MS)
    expect(page.locator("#ask")).to_be_visible()

    cited = _done(chat.value.text())["citations"]
    assert len(cited) >= 2, cited
    # The answer names them last-first ([k] … [1]); the page numbers them 1, 2, … as they appear.
    markers = turn.locator(".answer-text .cite")
    expect(markers).to_have_text([str(shown) for shown in range(1, len(cited) + 1)])
    expect(turn.locator(".sources .source-number")).to_have_text([f"[{k}]" for k in range(1, len(cited) + 1)])
    first = max(cited, key=lambda c: c["n"])
    expect(turn.locator(".sources .source").first).to_contain_text("handbook.md")
    markers.first.click()
    dialog = page.locator("#source-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#source-number")).to_have_text("[1]")
    expect(page.locator("#source-text")).to_have_text(first["text"])
    # Markdown headings are the passage's heading path.
    expect(page.locator("#source-where")).to_contain_text("Handbook ›")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


def test_a_stopped_stream_stops(llm_server: str, fake_llm: FakeOpenAIServer, page: Page) -> None:
    _open(page, llm_server, "handbook")
    disconnects = len(fake_llm.controls.disconnects)
    page.fill("#question", "How often are laptops replaced? " + "Please answer in detail. " * 20)
    page.press("#question", "Enter")
    answer = page.locator(".turn .answer")
    expect(answer.locator(".answer-text")).to_contain_text("m heard:")
    page.click("#stop")
    expect(answer).to_have_attribute("data-state", "stopped")
    expect(answer.locator(".answer-meta")).to_contain_text("Stopped")
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#ask")).to_be_visible()
    shown = answer.locator(".answer-text").text_content()
    page.wait_for_timeout(800)  # twenty-six more words, were the stream still read
    assert answer.locator(".answer-text").text_content() == shown
    # The server went away from the model too: the fake saw its client leave mid-stream.
    deadline = time.monotonic() + 10
    while len(fake_llm.controls.disconnects) == disconnects:
        assert time.monotonic() < deadline, "the model's stream was not closed"
        time.sleep(0.1)


def test_a_refusal_by_the_model_looks_like_one_with_the_closest_passages_folded(
    llm_server: str, page: Page
) -> None:
    _open(page, llm_server, "handbook")
    _ask(page, "年假有多少天？")  # the Chinese template makes the fake model refuse
    answer = page.locator(".turn .answer")
    expect(answer).to_have_class("answer refusal")
    expect(answer.locator(".refusal-title")).to_have_text("Not found in your documents")
    expect(answer.locator(".answer-text")).to_contain_text("根据已知信息无法回答该问题")
    expect(answer.locator(".sources")).to_have_count(0)
    closest = answer.locator("details.closest")
    expect(closest.locator("summary")).to_contain_text("Closest passages")
    expect(closest.locator("li").first).to_be_hidden()
    closest.locator("summary").click()
    expect(closest.locator("li").first).to_contain_text("handbook.md")


def test_a_refused_question_shows_the_refusal_style(server: str, page: Page) -> None:
    _knowledge_base(server, "policy", {"expenses.md": POLICY.encode()})
    _open(page, server, "policy")
    _ask(page, QUESTION)
    expect(page.locator(".turn .answer").first).not_to_have_class("answer refusal")

    # No chunk passes a 0.99 threshold, so the service refuses; the page sends no threshold itself.
    def demanding(route) -> None:
        body = json.loads(route.request.post_data)
        body["retrieval"] = {"score_threshold": 0.99}
        route.continue_(post_data=json.dumps(body))

    page.route("**/chat", demanding)
    _ask(page, "报销单在多少天内提交？")
    refused = page.locator(".turn .answer").nth(1)
    expect(refused).to_have_class("answer refusal")
    expect(refused.locator(".refusal-title")).to_have_text("Not found in your documents")
    expect(refused.locator(".sources, .cite")).to_have_count(0)
    assert refused.evaluate("e => getComputedStyle(e).borderStyle") == "dashed"
    assert page.locator(".turn .answer").first.evaluate("e => getComputedStyle(e).borderStyle") == "solid"


def test_answerability_is_shown_and_a_refusal_folds_the_closest_passages(server: str, page: Page) -> None:
    """The answer-trust fields of real answers: answerability beside every answer, and a question the
    documents cannot answer refused, with the passages the search found folded below it."""
    _knowledge_base(server, "trust", {"expenses.md": POLICY.encode()})
    _open(page, server, "trust")
    answered = _ask(page, QUESTION)
    assert not answered["refused"] and answered["answerability"] >= 0.2
    percent = round(100 * answered["answerability"])
    expect(page.locator(".turn .answer").first.locator(".answerability")).to_have_text(
        f"answerability {percent}%"
    )
    refusal = _ask(page, "Who won the 2022 World Cup?")
    assert refusal["refused"] and refusal["answerability"] < 0.2 and refusal["closest"]
    refused = page.locator(".turn .answer").nth(1)
    expect(refused).to_have_class("answer refusal")
    expect(refused.locator(".answerability")).to_have_text(
        f"answerability {round(100 * refusal['answerability'])}%"
    )
    summary = refused.locator("details.closest summary")
    expect(summary).to_have_text(f"Closest passages ({len(refusal['closest'])})")
    summary.click()
    refused.locator("details.closest .source").first.click()
    expect(page.locator("#source-text")).to_have_text(refusal["closest"][0]["text"])
    expect(page.locator("#source-number")).to_be_empty()


def test_the_words_that_answer_are_bold(server: str, page: Page) -> None:
    """The answer's `spans` (the duration asked for by 多久) are bold on the page, at the offsets the server sent."""
    _knowledge_base(server, "marked", {"expenses.md": POLICY.encode()})
    _open(page, server, "marked")
    done = _ask(page, QUESTION)
    assert done["spans"], done
    marked = page.locator(".turn .answer .answer-text strong.answer-span")
    expect(marked).to_have_text([done["answer"][span["start"] : span["end"]] for span in done["spans"]])
    expect(marked.first).to_have_text("五个工作日")
    assert int(marked.first.evaluate("e => getComputedStyle(e).fontWeight")) >= 600
    # The rest of the answer is plain text around it, and the citation still follows.
    text = page.locator(".turn .answer .answer-text")
    expect(text).to_contain_text("报销款在审核通过后五个工作日内打到工资卡。")
    expect(text.locator(".cite")).to_have_count(1)


def test_a_citation_shows_its_passage_with_the_page_and_opens_the_pdf_there(
    server: str, page: Page, tmp_path: Path
) -> None:
    pdf = _pdf(
        tmp_path / "travel.pdf",
        [
            "Travel policy. Trains are booked in second class for every trip.",
            "Reimbursements are paid within five working days after the manager approves the claim.",
        ],
    )
    _knowledge_base(server, "travel", {"travel.pdf": pdf.read_bytes()})
    _open(page, server, "travel")
    question = "How many working days until reimbursements are paid?"
    _ask(page, question)
    turn = page.locator(".turn")
    expect(turn.locator(".question")).to_have_text(question)
    expect(turn.locator(".answer-text")).to_contain_text("five working days")
    turn.locator(".cite").first.click()
    expect(page.locator("#source-dialog")).to_be_visible()
    expect(page.locator("#source-title")).to_have_text("travel.pdf")
    expect(page.locator("#source-where")).to_contain_text("page 2")
    expect(page.locator("#source-text")).to_contain_text("paid within five working days")
    expect(page.locator("#source-text mark")).not_to_have_count(0)
    marked = {word.lower() for word in page.locator("#source-text mark").all_text_contents()}
    assert {"working", "days", "reimbursements", "paid"} <= marked, marked
    link = page.locator("#source-link")
    expect(link).to_contain_text("page 2")
    href = link.get_attribute("href")
    assert href.endswith("#page=2"), href
    original = httpx.get(f"{server}{href.split('#')[0]}")
    assert original.status_code == 200
    assert original.headers["content-type"] == "application/pdf"
    assert original.headers["content-disposition"].startswith("inline")
    assert original.content == pdf.read_bytes()

    # With an API key (a server may protect reads), the original is fetched with it and opened at the page.
    page.keyboard.press("Escape")
    page.fill("#api-key", "reader-key")
    page.dispatch_event("#api-key", "change")
    turn.locator(".cite").first.click()
    with page.context.expect_page() as opened, page.expect_request(lambda r: "/file" in r.url) as fetched:
        link.click()
    assert fetched.value.headers["authorization"] == "Bearer reader-key"
    opened.value.wait_for_url(re.compile(r"^blob:.*#page=2$"))


def test_reload_keeps_the_conversation_and_lists_it(server: str, page: Page) -> None:
    _knowledge_base(server, "kept", {"expenses.md": POLICY.encode()})
    _open(page, server, "kept")
    first_answer = _ask(page, QUESTION)["answer"]
    assert "[1]" in first_answer  # the history keeps the answer as the model wrote it
    # A follow-up carries the first turn as history.
    page.fill("#question", "报销单在多少天内提交？")
    with page.expect_request(lambda request: request.url.endswith("/chat")) as follow_up:
        page.press("#question", "Enter")
    assert json.loads(follow_up.value.post_data)["history"] == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first_answer},
    ]
    expect(page.locator(".turn .answer").nth(1)).to_have_attribute("data-state", "done", timeout=SLOW_MS)
    expect(page.locator(".turn .answer-text").nth(1)).to_contain_text("三十天")

    page.reload()
    expect(page.locator("#chat-title")).to_have_text("kept")
    expect(page.locator(".turn .question")).to_have_text([QUESTION, "报销单在多少天内提交？"])
    expect(page.locator(".turn .answer-text").first).to_have_text(first_answer.replace("[1]", "1"))
    expect(page.locator(".turn .cite").first).to_be_visible()
    listed = page.locator("#conversation-list .conversation-open")
    expect(listed).to_have_text([QUESTION])

    page.click("#new-conversation")
    expect(page.locator(".turn")).to_have_count(0)
    expect(page.locator("#empty-state")).to_be_visible()
    _ask(page, "发票要原件吗？")
    expect(listed).to_have_text(["发票要原件吗？", QUESTION])
    listed.nth(1).click()
    expect(page.locator(".turn")).to_have_count(2)
    expect(page.locator(".turn .question").first).to_have_text(QUESTION)


def test_a_follow_up_is_answered_from_the_conversation_and_shows_what_was_searched(
    server: str, page: Page
) -> None:
    it_faq = (paths.SAMPLE_DOCS / "it_faq.md").read_bytes()
    _knowledge_base(server, "it", {"it_faq.md": it_faq})
    _open(page, server, "it")
    _ask(page, "笔记本电脑多久可以更换？")
    expect(page.locator(".turn .searched-question")).to_have_count(0)  # searched as typed: nothing shown
    done = _ask(page, "在哪里申请？")
    assert done["searched_question"] == "笔记本电脑在哪里申请？"
    expect(page.locator(".turn .answer-text").nth(1)).to_contain_text("资产申领")
    searched = page.locator(".turn").nth(1).locator(".searched-question")
    expect(searched).to_have_text("Searched: 笔记本电脑在哪里申请？")
    page.reload()  # the saved conversation keeps what was searched
    expect(page.locator(".turn").nth(1).locator(".searched-question")).to_have_text(
        "Searched: 笔记本电脑在哪里申请？"
    )


# ---- documents ----


def test_drag_and_drop_upload_shows_progress_then_the_document(server: str, page: Page) -> None:
    page.goto(f"{server}/")
    page.fill("#kb-name", "dropped")
    page.click("#create-kb")
    expect(page.locator("#kb-select")).to_have_value("dropped")
    # An empty knowledge base opens its documents.
    expect(page.locator("#docs-panel")).to_be_visible()
    expect(page.locator("#no-documents")).to_be_visible()

    files = {"expenses.md": POLICY, "setup.exe": "MZ", "broken.pdf": "not a pdf at all"}
    transfer = page.evaluate_handle(
        """(files) => {
        const transfer = new DataTransfer();
        for (const [name, text] of Object.entries(files)) transfer.items.add(new File([text], name));
        return transfer;
        }""",
        files,
    )
    # What the upload rows say, in order, as a person watching them would have seen it.
    page.evaluate(
        """() => {
        window.seen = [];
        new MutationObserver(() => {
          for (const row of document.querySelectorAll('#uploads .upload')) {
            const line = `${row.querySelector('.upload-name').textContent}: ${row.querySelector('.upload-status').textContent}`;
            if (!window.seen.includes(line)) window.seen.push(line);
          }
        }).observe(document.querySelector('#uploads'), { subtree: true, childList: true, characterData: true });
        }"""
    )
    page.dispatch_event("#dropzone", "dragenter", {"dataTransfer": transfer})
    expect(page.locator("#dropzone")).to_have_class("dropzone dragging")
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})

    rows = page.locator("#uploads .upload")
    expect(rows).to_have_count(3)
    good = rows.filter(has_text="expenses.md")
    expect(good).to_have_attribute("data-state", "succeeded", timeout=SLOW_MS)
    expect(good.locator("progress")).to_have_js_property("value", 100)
    expect(good.locator(".upload-status")).to_contain_text("Done · files 1/1 · ")
    seen = [line for line in page.evaluate("window.seen") if line.startswith("expenses.md: ")]
    assert seen[0].startswith("expenses.md: Uploading "), seen
    assert seen[-1].startswith("expenses.md: Done · files 1/1 · "), seen
    refused = rows.filter(has_text="setup.exe")
    expect(refused).to_have_attribute("data-state", "failed")
    expect(refused).to_contain_text("415")
    broken = rows.filter(has_text="broken.pdf")
    expect(broken).to_have_attribute("data-state", re.compile("succeeded|failed"), timeout=SLOW_MS)
    expect(broken.locator(".upload-files")).to_contain_text("broken.pdf: ")

    docs = page.locator("#documents .doc")
    expect(docs).to_have_count(1)
    expect(docs).to_contain_text("expenses.md")
    chunks = httpx.get(f"{server}/v1/kbs/dropped/documents").json()["data"][0]["chunk_count"]
    expect(docs.locator(".doc-meta")).to_contain_text("1 chunk" if chunks == 1 else f"{chunks} chunks")
    expect(page.locator("#kb-counts")).to_contain_text("1 document · ")
    href = docs.locator("a").get_attribute("href")
    assert httpx.get(f"{server}{href}").content == POLICY.encode()

    docs.get_by_role("button", name="Re-index: expenses.md").click()
    reindexed = rows.filter(has_text="Re-index expenses.md")
    expect(reindexed).to_have_attribute("data-state", "succeeded", timeout=SLOW_MS)

    docs.get_by_role("button", name="Delete: expenses.md").click()
    expect(page.locator("#confirm-message")).to_contain_text("expenses.md")
    page.click("#confirm-dialog button[value=cancel]")
    expect(docs).to_have_count(1)
    docs.get_by_role("button", name="Delete: expenses.md").click()
    page.click("#confirm-ok")
    expect(docs).to_have_count(0)
    assert httpx.get(f"{server}/v1/kbs/dropped/documents").json()["data"] == []


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

    page.click("#delete-kb")
    expect(page.locator("#confirm-message")).to_contain_text("twice")
    page.click("#confirm-ok")
    expect(page.locator("#kb-select option[value=twice]")).to_have_count(0)
    assert httpx.get(f"{server}/v1/kbs/twice").status_code == 404


# ---- language, phone, screenshots ----


def test_the_page_speaks_the_browsers_language_and_switches(server: str, browser: Browser) -> None:
    with _tab(browser, locale="zh-CN") as tab:
        tab.goto(f"{server}/")
        expect(tab.locator("html")).to_have_attribute("lang", "zh-CN")
        expect(tab.locator("#new-conversation")).to_contain_text("新对话")
        expect(tab.locator("#question")).to_have_attribute("placeholder", re.compile("Enter 发送"))
        tab.select_option("#language", "en")
        expect(tab.locator("#new-conversation")).to_contain_text("New conversation")
        tab.reload()
        expect(tab.locator("#new-conversation")).to_contain_text("New conversation")
        # Every form control has a name a screen reader can say.
        unnamed = tab.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
            .map((e) => e.id || e.outerHTML)"""
        )
        assert unnamed == []
        assert httpx.get(f"{server}/static/favicon.svg").headers["content-type"].startswith("image/svg")
        expect(tab.locator("link[rel=icon]")).to_have_attribute("href", "/static/favicon.svg")


def test_phone_layout_has_no_horizontal_scroll(server: str, browser: Browser) -> None:
    _knowledge_base(server, "员工手册", {"expenses.md": POLICY.encode()})
    with _tab(
        browser, viewport={"width": 390, "height": 844}, locale="zh-CN", is_mobile=True, has_touch=True
    ) as tab:
        tab.goto(f"{server}/")
        # The side panel is folded away behind the menu button.
        expect(tab.locator("#sidebar")).to_be_hidden()
        tab.click("#menu-toggle")
        expect(tab.locator("#sidebar")).to_be_visible()
        tab.select_option("#kb-select", "员工手册")
        _no_horizontal_scroll(tab)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SCREENSHOTS / "phone-menu.png"))
        tab.click("#scrim", position={"x": 370, "y": 400})  # beside the panel
        expect(tab.locator("#sidebar")).to_be_hidden()
        _ask(tab, QUESTION)
        _ask(tab, "An English question about something the handbook does not cover at all, which is long?")
        _no_horizontal_scroll(tab)
        # Keyboard focus is visible.
        tab.focus("#question")
        tab.keyboard.press("Shift+Tab")
        assert tab.evaluate("getComputedStyle(document.activeElement).boxShadow") != "none"
        tab.screenshot(path=str(SCREENSHOTS / "phone-chat.png"))
        tab.click("#docs-toggle")
        expect(tab.locator("#docs-panel")).to_be_visible()
        _no_horizontal_scroll(tab)
        tab.screenshot(path=str(SCREENSHOTS / "phone-documents.png"))


# What the upload hint calls each supported suffix, in English.
KIND_WORDS = {
    ".pdf": "PDF",
    ".docx": "Word",
    ".pptx": "PowerPoint",
    ".md": "Markdown",
    ".markdown": "Markdown",
    ".txt": "text",
    ".htm": "HTML",
    ".html": "HTML",
    ".csv": "CSV",
    ".xlsx": "Excel",
    ".json": "JSON",
    ".jsonl": "JSON",
    **dict.fromkeys(IMAGE_SUFFIXES, "images"),
}
LONG_NAMES = {
    "employee_handbook.md": HANDBOOK,
    "quarterly_sales_report_east_region_2025_q3.md": "# Sales\n\n## East region\n\nSales grew by nine percent.\n",
    "travel-expense-policy-for-international-staff.md": "# Travel\n\n## Hotel limits\n\nTokyo: 25,000 yen a night.\n",
    "员工手册_2025年版_人事部发布.md": POLICY,
}


def _line_breaks(page: Page, selector: str) -> list[tuple[str, list[int]]]:
    """Return, for each element matching `selector`, its text and the indexes of the characters that begin
    a new line on screen."""
    return page.evaluate(
        """(selector) => [...document.querySelectorAll(selector)].map((node) => {
            const chars = [];
            const walker = document.createTreeWalker(node, NodeFilter.SHOW_TEXT);
            for (let text; (text = walker.nextNode()); ) for (let i = 0; i < text.data.length; i++) chars.push([text, i]);
            const breaks = [];
            let last = null;
            chars.forEach(([text, i], k) => {
                const range = document.createRange();
                range.setStart(text, i);
                range.setEnd(text, i + 1);
                const rect = range.getClientRects()[0];
                if (!rect) return;
                if (last !== null && rect.top > last + 2) breaks.push(k);
                last = rect.top;
            });
            return [node.textContent, breaks];
        })""",
        selector,
    )


def _inside_a_word(text: str, at: int) -> bool:
    """Return whether a line starting at text[at] cuts a word: not after a separator, space or Chinese."""
    before, after = text[at - 1], text[at]
    if before in "/_- " or after == " ":
        return False
    return not (re.match(r"[\u3400-\u9fff]", before) or re.match(r"[\u3400-\u9fff]", after))


def test_phone_names_wrap_between_words_the_hint_names_every_kind_and_examples_ask(
    server: str, browser: Browser
) -> None:
    _knowledge_base(server, "phone", {name: text.encode() for name, text in LONG_NAMES.items()})
    examples = httpx.get(f"{server}/v1/kbs/phone/examples").json()["data"]
    assert "Leave?" in examples and len(examples) <= 4, examples
    with _tab(browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True) as tab:
        tab.goto(f"{server}/")
        tab.click("#menu-toggle")
        tab.select_option("#kb-select", "phone")
        tab.click("#scrim", position={"x": 370, "y": 400})
        expect(tab.locator("#kb-name")).to_have_attribute("placeholder", "New knowledge base name")
        # An empty conversation offers the knowledge base's own questions.
        expect(tab.locator("#examples .example")).to_have_text(examples)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SCREENSHOTS / "phone-examples.png"))

        tab.click("#docs-toggle")
        expect(tab.locator("#documents .doc")).to_have_count(len(LONG_NAMES))
        hint = tab.locator("#upload-types").inner_text()
        missing = {suffix: KIND_WORDS.get(suffix) for suffix in SUPPORTED_SUFFIXES}
        assert None not in missing.values(), f"a new file type: name it in KIND_WORDS and i18n.js {missing}"
        assert [word for word in missing.values() if word not in hint] == [], hint
        broken = _line_breaks(tab, "#documents .doc-name")
        assert any(breaks for _, breaks in broken), f"no name wrapped at 390 px; use longer ones: {broken}"
        cut = [(text, at) for text, breaks in broken for at in breaks if _inside_a_word(text, at)]
        assert cut == [], f"document names broken inside a word: {cut}"
        _no_horizontal_scroll(tab)
        tab.screenshot(path=str(SCREENSHOTS / "phone-long-names.png"))
        tab.click("#docs-close")

        with tab.expect_response(lambda response: response.url.endswith("/chat"), timeout=SLOW_MS):
            tab.locator("#examples .example").first.click()
        expect(tab.locator(".turn .question").first).to_have_text(examples[0])
        expect(tab.locator(".turn .answer").first).to_have_attribute("data-state", "done", timeout=SLOW_MS)
        expect(tab.locator("#empty-state")).to_be_hidden()
        tab.screenshot(path=str(SCREENSHOTS / "phone-example-asked.png"))


def test_the_page_says_the_models_load_then_offers_the_sample_questions(
    tmp_path: Path, browser: Browser
) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("KBQA_")}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [KBQA, "--data-dir", str(tmp_path / "data"), "serve", "--sample-kb", "demo", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "web page" not in log.read_text():  # printed once the port accepts
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        with _tab(browser, viewport={"width": 390, "height": 844}, is_mobile=True) as tab:
            tab.goto(f"{url}/")
            if httpx.get(f"{url}/readyz").status_code == 503:
                expect(tab.locator("#chat-error")).to_contain_text("loading its models")
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                tab.screenshot(path=str(SCREENSHOTS / "phone-loading.png"))
            # Once ready, the sample knowledge base is chosen and offers questions it answers.
            expect(tab.locator("#chat-title")).to_have_text("demo", timeout=SLOW_MS)
            expect(tab.locator("#examples .example").first).to_be_visible(timeout=SLOW_MS)
            expect(tab.locator("#chat-error")).to_have_text("")
            examples = httpx.get(f"{url}/v1/kbs/demo/examples").json()["data"]
            assert tab.locator("#examples .example").all_inner_texts() == examples and len(examples) == 4
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_desktop_screenshot(server: str, browser: Browser, tmp_path: Path) -> None:
    pdf = _pdf(
        tmp_path / "travel-policy.pdf",
        [
            "Travel policy. Trains are booked in second class for every trip.",
            "Reimbursements are paid within five working days after the manager approves the claim.",
        ],
    )
    files = {
        "expenses.md": POLICY.encode(),
        "handbook.md": HANDBOOK.encode(),
        "travel-policy.pdf": pdf.read_bytes(),
    }
    _knowledge_base(server, "公司制度", files)
    with _tab(browser, viewport={"width": 1440, "height": 900}, locale="zh-CN") as tab:
        _open(tab, server, "公司制度")
        if tab.get_attribute("#docs-toggle", "aria-expanded") != "true":  # an empty one may have opened it
            tab.click("#docs-toggle")
        expect(tab.locator("#docs-panel")).to_be_visible()
        _ask(tab, QUESTION)
        _ask(tab, "How many days of annual leave do we get?")
        tab.route(
            "**/chat",
            lambda route: route.continue_(
                post_data=json.dumps(
                    {**json.loads(route.request.post_data), "retrieval": {"score_threshold": 0.99}}
                )
            ),
        )
        _ask(tab, "公司的股票代码是多少？")
        _no_horizontal_scroll(tab)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SCREENSHOTS / "desktop.png"))
        tab.emulate_media(color_scheme="dark")
        tab.screenshot(path=str(SCREENSHOTS / "desktop-dark.png"))
        tab.emulate_media(color_scheme="light")
        tab.locator(".turn .cite").first.click()
        expect(tab.locator("#source-dialog")).to_be_visible()
        tab.screenshot(path=str(SCREENSHOTS / "desktop-source.png"))


def test_the_api_docs_list_the_operations_with_the_network_cut(server: str, browser: Browser) -> None:
    with _tab(browser, viewport={"width": 1280, "height": 800}) as tab:
        outside: list[str] = []

        def only_the_service(route) -> None:
            if route.request.url.startswith(server):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort("internetdisconnected")

        tab.context.route("**/*", only_the_service)
        tab.goto(f"{server}/docs")
        expect(tab.locator(".opblock-summary-path").first).to_be_visible(timeout=SLOW_MS)
        paths = tab.locator(".opblock-summary-path").all_inner_texts()
        assert "/v1/kbs/{kb}/search" in [path.replace("\u200b", "") for path in paths], paths
        assert outside == [], f"/docs asked the internet for {outside}"
        tab.goto(f"{server}/redoc")
        expect(tab.get_by_role("heading", name="Search a knowledge base")).to_be_visible(timeout=SLOW_MS)
        tab.wait_for_load_state("networkidle")
        assert outside == [], f"/redoc asked the internet for {outside}"


def test_chinese_text_renders_with_real_glyphs(server: str, browser: Browser) -> None:
    # Without a CJK font Chromium draws every Chinese character as the same empty box (.notdef): the
    # characters of a label, drawn one by one, must differ from each other and from a character no font has.
    with _tab(browser, viewport={"width": 1280, "height": 800}, locale="zh-CN") as tab:
        tab.goto(f"{server}/")
        label = tab.locator("#new-conversation")
        expect(label).to_contain_text("新对话")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        label.screenshot(path=str(SCREENSHOTS / "chinese-label.png"))
        tab.evaluate(
            """() => {
                const box = document.createElement('div');
                box.id = 'glyphs';
                box.style.cssText = 'position:fixed;top:0;left:0;font-size:32px;background:#fff;color:#000;z-index:99';
                for (const ch of ['新', '对', '话', '\\u{F0000}']) {
                    const span = document.createElement('span');
                    span.textContent = ch;
                    box.append(span);
                }
                document.body.append(box);
            }"""
        )
        glyphs = [span.screenshot() for span in tab.locator("#glyphs span").all()]
    *chinese, missing = glyphs
    assert len(set(chinese)) == 3, "Chinese characters draw alike: no CJK font (install fonts-wqy-microhei)"
    assert missing not in chinese, "Chinese characters draw as the missing-glyph box: no CJK font"


# ---- keys with roles (issue 26) ----


def test_the_page_shows_only_what_the_key_may_do(tmp_path: Path, browser: Browser) -> None:
    from app.keys import KeyStore

    home = tmp_path / "keyed"
    store = KeyStore(home / "data")
    reader = store.create("hr-reader", "reader", ["hr"])[1]
    editor = store.create("hr-editor", "editor", ["hr"])[1]
    store.close()
    settings = {"KBQA_SERVER__API_KEYS": '["admin-key"]', "KBQA_SERVER__PROTECT_READS": "true"}
    with _serve(home, settings) as url, _tab(browser, viewport={"width": 1280, "height": 800}) as page:
        admin = {"Authorization": "Bearer admin-key"}
        for kb in ("hr", "ops"):
            assert httpx.post(f"{url}/v1/kbs", json={"name": kb}, headers=admin).status_code == 201
        upload = [("files", ("expenses.md", POLICY.encode()))]
        job = httpx.post(f"{url}/v1/kbs/hr/documents", files=upload, headers=admin, timeout=30).json()["job"]
        deadline = time.monotonic() + SLOW_MS / 1000
        while job["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
            job = httpx.get(f"{url}/v1/jobs/{job['id']}", headers=admin).json()

        # No key on a server that protects reads: a clear message, nothing listed.
        page.goto(f"{url}/")
        expect(page.locator("#kb-error")).to_contain_text("A valid API key is needed")

        # A reader of hr: hr only, no knowledge-base or document controls, its role under the key field.
        page.fill("#api-key", reader)
        page.dispatch_event("#api-key", "change")
        expect(page.locator("#key-status")).to_contain_text("reader: hr")
        expect(page.locator("#kb-select option")).to_have_count(1)
        expect(page.locator("#kb-select")).to_have_value("hr")
        expect(page.locator("#create-kb-form")).to_be_hidden()
        expect(page.locator("#delete-kb")).to_be_hidden()
        page.click("#docs-toggle")
        expect(page.locator("#documents > li")).to_have_count(1)
        expect(page.locator("#dropzone")).to_be_hidden()
        expect(page.locator(".doc-actions").first).to_be_hidden()
        assert "[1]" in _ask(page, QUESTION)["answer"]

        # An editor of hr: the upload box and the document actions; still no knowledge-base controls.
        page.fill("#api-key", editor)
        page.dispatch_event("#api-key", "change")
        expect(page.locator("#key-status")).to_contain_text("editor: hr")
        expect(page.locator("#dropzone")).to_be_visible()
        expect(page.locator(".doc-actions").first).to_be_visible()
        expect(page.locator("#create-kb-form")).to_be_hidden()

        # A wrong key: said so under the field.
        page.fill("#api-key", "kbqa_000000000000_wrong")
        page.dispatch_event("#api-key", "change")
        expect(page.locator("#key-status")).to_contain_text("Key not accepted")
        expect(page.locator("#key-status")).to_contain_text("not valid")

        # The admin: everything.
        page.fill("#api-key", "admin-key")
        page.dispatch_event("#api-key", "change")
        expect(page.locator("#kb-select option")).to_have_count(2)
        expect(page.locator("#create-kb-form")).to_be_visible()
        expect(page.locator("#delete-kb")).to_be_visible()
