"""The words that answer, over HTTP: `kbqa serve --sample-kb` on the sample documents (examples/docs), as a
new user meets it, asked through `/v1/kbs/{kb}/chat` (JSON and server-sent events) and the official
`openai` client. Real bundled e5 model, real FAISS and SQLite, uvicorn in a subprocess."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import paths
import pytest
from openai import OpenAI
from servers import Server, sse_events

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`kbqa serve` that builds the sample knowledge base `demo` at start-up."""
    env = {"KBQA_SERVER__SAMPLE_KB": "demo", "KBQA_SERVER__SAMPLE_DOCS": str(paths.SAMPLE_DOCS)}
    running = Server(tmp_path_factory.mktemp("spans") / "data", env=env)
    yield running
    running.stop()


def ask(server: Server, question: str) -> dict:
    """Return the JSON answer of `/chat` to `question` on the sample knowledge base."""
    response = httpx.post(f"{server.url}/v1/kbs/demo/chat", json={"question": question}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def marked(body: dict) -> list[str]:
    """Return the answer's marked words, read at the offsets the server gave, after checking them."""
    for span in body["spans"]:
        assert body["answer"][span["start"] : span["end"]] == span["text"], body
    return [span["text"] for span in body["spans"]]


def first_sentence(text: str) -> str:
    """Return an extractive answer's first sentence, without its citation."""
    return re.split(r"\s?\[\d+\]", text, maxsplit=1)[0]


def test_a_record_row_reads_as_its_key_and_the_value_is_marked(server: Server) -> None:
    body = ask(server, "星河X1 重量多少？")
    assert not body["refused"]
    assert first_sentence(body["answer"]) == "重量：2.1 kg", body["answer"]
    assert marked(body) == ["2.1 kg"]


def test_sick_leave_leads_with_the_sick_leave_rule_and_marks_its_days(server: Server) -> None:
    """病假 and 年假 share 假 and a duration: the sick-leave rule must lead, its 12 天 marked."""
    body = ask(server, "病假一年有几天？")
    assert not body["refused"]
    assert first_sentence(body["answer"]).startswith("病假：每年享有 12 天全薪病假"), body["answer"]
    assert marked(body)[0] == "12 天"


def test_the_spans_come_in_the_stream_and_the_openai_extras(server: Server) -> None:
    with httpx.stream(
        "POST",
        f"{server.url}/v1/kbs/demo/chat",
        json={"question": "报销需要多久到账？", "stream": True},
        timeout=120,
    ) as response:
        events = sse_events(response.iter_lines())
    done = events[-1][1]
    assert events[-1][0] == "done" and done["answer"] == "".join(d["text"] for n, d in events if n == "delta")
    assert "3 个工作日" in marked(done)

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    completion = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "报销需要多久到账？"}]
    )
    content = completion.choices[0].message.content
    extras = completion.model_extra
    assert extras["spans"] == done["spans"] and content == done["answer"]
    stream = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "报销需要多久到账？"}], stream=True
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    spans = [c.model_extra["spans"] for c in chunks if c.model_extra and "spans" in c.model_extra]
    assert spans == [done["spans"]] and streamed == done["answer"]


def test_a_refusal_marks_nothing_and_english_off_topic_questions_stay_refused(server: Server) -> None:
    for question in (
        "Who won the 2022 World Cup?",
        "What is the capital of Mars?",
        "How tall is Mount Everest?",
    ):
        body = ask(server, question)
        assert body["refused"] and body["spans"] == [], (question, body)


def test_an_english_question_is_answered_from_the_chinese_handbook(server: Server) -> None:
    """No word of the question is in the handbook; CC-CEDICT's 病假 ("sick leave") carries it across."""
    body = ask(server, "How many days of sick leave do I get?")
    assert not body["refused"] and body["answerability"] >= 0.32, body
    assert first_sentence(body["answer"]).startswith("病假：每年享有 12 天全薪病假"), body["answer"]
    assert marked(body)[0] == "12 天"
    assert body["citations"][0]["source"].endswith("employee_handbook.pdf")


def test_an_english_question_for_days_reads_the_tiers_of_a_rule(server: Server) -> None:
    """The leave tiers hold three durations; an English 几天 picks among them by the unit asked (it failed)."""
    body = ask(server, "How many days of annual leave do I get?")
    assert not body["refused"], body
    assert {"10 天", "12 天", "15 天"} <= set(marked(body)), body


def test_the_unanswerable_english_questions_of_the_check_set_stay_refused(server: Server) -> None:
    """The English questions of bench/bilingual_check.json that the sample documents do not answer."""
    checks = json.loads((paths.REPO / "bench" / "bilingual_check.json").read_text(encoding="utf-8"))
    english = [c["question"] for c in checks["questions"] if not c["answers"] and c["question"].isascii()]
    assert len(english) >= 20
    answered = [q for q in english if not ask(server, q)["refused"]]
    assert answered == []
