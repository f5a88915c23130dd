"""The Python client (app.client) against a live `kbqa serve` with API keys and a streaming model: every
route it wraps, sync and async, and the errors it raises: 401, 404, 409, 413, 422, 503 after retries, and
an answer stream the server cuts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from openai_server import Controls, FakeOpenAIServer
from servers import SMALL_DOCS, Server, kbqa, serve_small_kb

from app.client import (
    Answer,
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    Delta,
    Done,
    Job,
    NotFound,
    Sources,
    StreamCut,
    TooLarge,
    Unauthorized,
    Unavailable,
)

pytestmark = pytest.mark.slow
KEY = "k1"


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeOpenAIServer]:
    """The fake OpenAI server the kbqa server answers with, a word every 20 ms."""
    fake = FakeOpenAIServer()
    fake.controls = Controls(models=("m",), delta_delay_s=0.02)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, llm: FakeOpenAIServer) -> Iterator[Server]:
    """One kbqa server for the module: keys, 0.01 MiB uploads, answers from the fake model."""
    env = {
        "KBQA_SERVER__API_KEYS": f'["{KEY}"]',
        "KBQA_SERVER__MAX_UPLOAD_MB": "0.01",
        "KBQA_LLM__BACKEND": "openai",
        "KBQA_LLM__OPENAI__BASE_URL": llm.base_url,
        "KBQA_LLM__OPENAI__MODEL": "m",
        "KBQA_LLM__OPENAI__MAX_RETRIES": "0",
        "KBQA_LLM__OPENAI__UNHEALTHY_COOLDOWN_S": "0",
        # The fake model echoes the prompt, so its standalone form of a follow-up would be nonsense; the
        # offline rewriter keeps 年假有几天？, which stands on its own, and the history still reaches the answer.
        "KBQA_LLM__FOLLOWUP__MODEL_REWRITE": "false",
    }
    running = serve_small_kb(tmp_path_factory.mktemp("client"), env, api_key=KEY)
    yield running
    running.stop()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.url, api_key=KEY, max_wait=0.1) as client:
        yield client


def test_knowledge_bases_documents_and_jobs(client: Client, tmp_path: Path) -> None:
    assert {kb.name for kb in client.knowledge_bases()} >= {"demo"}
    demo = client.knowledge_base("demo")
    assert demo.documents == len(SMALL_DOCS) and demo.chunks >= len(SMALL_DOCS)

    created = client.create_knowledge_base("notes")
    assert created.name == "notes" and created.documents == 0
    with pytest.raises(Conflict) as exists:
        client.create_knowledge_base("notes")
    assert exists.value.status == 409 and exists.value.code == "knowledge_base_exists"

    path = tmp_path / "wifi.md"
    path.write_text("# Wi-Fi\n\nThe guest network password changes every Monday.\n", encoding="utf-8")
    seen: list[Job] = []
    job = client.upload(
        "notes",
        [path, ("desk.md", "# 工位\n\n工位预订在周五前完成。\n".encode())],
        metadata={"team": "it"},
        wait=True,
        progress=seen.append,
    )
    assert job.status == "succeeded" and job.files_done == 2 and job.chunks_done >= 2
    assert seen and seen[-1].id == job.id and all(j.kb == "notes" for j in seen)
    assert job.id in {j.id for j in client.jobs("notes")}
    assert client.job(job.id).status == "succeeded"
    with pytest.raises(Conflict):
        client.cancel_job(job.id)  # finished already

    documents = client.documents("notes")
    assert sorted(d.source for d in documents) == ["desk.md", "wifi.md"]
    wifi = next(d for d in documents if d.source == "wifi.md")
    assert client.document("notes", wifi.id).metadata == {"team": "it"}
    assert client.document_file("notes", wifi.id) == path.read_bytes()
    reindexed = client.wait(client.reindex_document("notes", wifi.id).id)
    assert reindexed.kind == "reindex" and reindexed.status == "succeeded"
    client.delete_document("notes", wifi.id)
    assert [d.source for d in client.documents("notes")] == ["desk.md"]
    client.delete_knowledge_base("notes")
    with pytest.raises(NotFound):
        client.knowledge_base("notes")


def test_search_and_retrieve(client: Client) -> None:
    hits = client.search("demo", "年假有几天？", k=2)
    assert len(hits) == 2 and hits[0].source == "leave.md" and -1 <= hits[0].score <= 1
    assert hits[0].heading_path == ["年假制度"]
    found = client.retrieve("demo", "年假有几天？", k=1, mode="dense", source="leave*")
    assert [hit.source for hit in found.hits] == ["leave.md"]
    assert found.answerability is not None and 0 <= found.answerability <= 1
    assert client.search("demo", "年假", score_threshold=0.99) == []


def test_ask_whole_and_streamed_with_history(client: Client, llm: FakeOpenAIServer) -> None:
    history = [("user", "我想请假"), ("assistant", "好的，请问是什么假？")]
    answer = client.ask("demo", "年假有几天？", history=history, generation={"max_new_tokens": 8})
    assert isinstance(answer, Answer) and answer.answer.startswith("m heard:")
    assert answer.usage.completion_tokens == 8 and answer.finish_reason == "length"
    assert any(c.source == "leave.md" for c in answer.citations + answer.closest)
    sent = llm.controls.requests[-1]["messages"]
    assert any(m["content"] == "好的，请问是什么假？" for m in sent), "the history reached the model"

    events = list(client.ask_stream("demo", "年假有几天？", generation={"max_new_tokens": 5}))
    assert isinstance(events[0], Sources) and events[0].citations
    deltas = [e.text for e in events if isinstance(e, Delta)]
    assert isinstance(events[-1], Done) and "".join(deltas).strip() == events[-1].answer.answer
    assert len(deltas) == 5


def test_async_client(server: Server, llm: FakeOpenAIServer) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, api_key=KEY, max_wait=0.2) as client:
            assert "demo" in {kb.name for kb in await client.knowledge_bases()}
            hits = await client.search("demo", "VPN user name", k=1)
            assert hits[0].source == "vpn.md"
            answer = await client.ask(
                "demo", "How do I connect to the VPN?", generation={"max_new_tokens": 4}
            )
            assert answer.usage.completion_tokens == 4
            events = [e async for e in client.ask_stream("demo", "VPN?", generation={"max_new_tokens": 3})]
            assert isinstance(events[-1], Done) and sum(isinstance(e, Delta) for e in events) == 3
            job = await client.upload(
                "demo", [("guest.md", b"# Guest\n\nGuests sign in at reception.\n")], wait=True
            )
            assert job.status == "succeeded"
            with pytest.raises(NotFound):
                await client.documents("missing")
            llm.controls.fail_next, llm.controls.fail_status = 1, 503  # answered 503, then tried again
            assert (
                await client.ask("demo", "VPN?", generation={"max_new_tokens": 2})
            ).usage.completion_tokens == 2
            async with AsyncClient(server.url, api_key=KEY, retries=0) as once:
                llm.controls.fail_next = 1
                with pytest.raises(Unavailable):
                    await once.ask("demo", "VPN?")

    anyio.run(main)


def test_errors_carry_the_servers_code_and_message(server: Server, client: Client) -> None:
    with Client(server.url) as keyless, pytest.raises(Unauthorized) as unauthorized:
        keyless.search("demo", "年假")
    assert unauthorized.value.status == 401 and unauthorized.value.code == "unauthorized"
    assert unauthorized.value.request_id
    with Client(server.url, api_key="wrong") as wrong, pytest.raises(Unauthorized):
        wrong.ask("demo", "年假有几天？")

    with pytest.raises(NotFound) as missing:
        client.search("nope", "年假")
    assert missing.value.code == "knowledge_base_not_found" and "nope" in missing.value.message
    with pytest.raises(NotFound) as no_document:
        client.document("demo", 999)
    assert no_document.value.code == "document_not_found"

    with pytest.raises(TooLarge) as too_large:
        client.upload("demo", [("big.md", b"# Big\n\n" + "大".encode() * 6000)])
    assert too_large.value.status == 413 and too_large.value.code in ("file_too_large", "upload_too_large")

    with pytest.raises(BadRequest) as invalid:
        client.search("demo", "年假", k=0)
    assert invalid.value.status == 422 and invalid.value.code == "invalid_request"


def test_503_is_tried_again_after_retry_after(server: Server, llm: FakeOpenAIServer) -> None:
    asked = len(llm.controls.requests)
    llm.controls.fail_next, llm.controls.fail_status = 1, 503
    with Client(server.url, api_key=KEY, retries=0) as once, pytest.raises(Unavailable) as busy:
        once.ask("demo", "年假有几天？", generation={"max_new_tokens": 2})
    assert busy.value.status == 503 and busy.value.code == "model_unavailable"

    llm.controls.fail_next = 1
    with Client(server.url, api_key=KEY, retries=2, max_wait=0.2) as patient:
        answer = patient.ask("demo", "年假有几天？", generation={"max_new_tokens": 2})
    assert answer.usage.completion_tokens == 2
    assert len(llm.controls.requests) - asked == 3, "one request refused, then one failed and one retried"


def test_the_cli_asks_and_searches_a_remote_kbqa(server: Server) -> None:
    remote = ("--server", server.url, "--api-key", KEY)
    searched = kbqa(*remote, "search", "年假有几天？", "--kb", "demo", "-k", "1")
    assert searched.returncode == 0, searched.stderr
    assert "leave.md" in searched.stdout and "cosine" in searched.stdout and "年假制度" in searched.stdout
    hits = json.loads(kbqa(*remote, "search", "VPN", "--kb", "demo", "-k", "2", "--json").stdout)
    assert len(hits) == 2 and hits[0]["source"] == "vpn.md"

    asked = kbqa(*remote, "ask", "年假有几天？", "--kb", "demo", "--max-new-tokens", "6")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.startswith("m heard:") and "leave.md" in asked.stdout
    assert "answerability" in asked.stderr and "tokens" in asked.stderr
    answer = json.loads(
        kbqa(*remote, "ask", "年假?", "--kb", "demo", "--max-new-tokens", "3", "--json").stdout
    )
    assert answer["usage"]["completion_tokens"] == 3

    keyless = kbqa("--server", server.url, "ask", "年假有几天？", "--kb", "demo")
    assert keyless.returncode == 1 and "401 unauthorized" in keyless.stderr
    missing = kbqa(*remote, "search", "x", "--kb", "nope")
    assert missing.returncode == 1 and "knowledge_base_not_found" in missing.stderr


def test_a_stream_the_server_cuts_raises(server: Server, client: Client) -> None:
    """Last in the module: it kills the server mid-answer."""
    events = client.ask_stream("demo", "年假有几天？", generation={"max_new_tokens": 400})
    assert isinstance(next(events), Sources)
    assert isinstance(next(events), Delta)
    server.kill()
    with pytest.raises(StreamCut) as cut:
        for _ in events:
            pass
    assert cut.value.code == "stream_cut"
