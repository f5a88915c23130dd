"""Follow-up questions through every door of `kbqa serve` (a real uvicorn subprocess) on the sample knowledge
base: the chat route (JSON and SSE), the OpenAI-compatible endpoint with the official client, `kbqa ask
--history`, the history's bounds, and a generating backend (the fake OpenAI server) whose rewrite is used,
or fails or times out and the rules' is used."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import paths
import pytest
from openai_server import Controls, FakeOpenAIServer
from servers import Server, kbqa

from llm.followup import REWRITE_SYSTEM

pytestmark = pytest.mark.slow

SAMPLE = {"KBQA_SERVER__SAMPLE_KB": "demo", "KBQA_SERVER__SAMPLE_DOCS": str(paths.SAMPLE_DOCS)}
LAPTOP = "笔记本电脑多久可以更换？"
TRAVEL = "差旅住宿标准是多少？"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The offline defaults (extractive answers) with the sample knowledge base."""
    running = Server(tmp_path_factory.mktemp("conversations") / "data", SAMPLE)
    yield running
    running.stop()


def _chat(url: str, question: str, history: list[dict] | None = None, **extra) -> httpx.Response:
    body = {"question": question, "history": history or [], **extra}
    return httpx.post(f"{url}/v1/kbs/demo/chat", json=body, timeout=120)


def _turns(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_where_to_apply_after_the_laptop_question_finds_the_oa_form(server: Server) -> None:
    first = _chat(server.url, LAPTOP).json()
    assert "3 年" in first["answer"] and first["searched_question"] == LAPTOP
    alone = _chat(server.url, "在哪里申请？").json()
    assert "VPN" in alone["answer"]  # the follow-up alone also reads passages about something else
    follow = _chat(server.url, "在哪里申请？", _turns(LAPTOP, first["answer"])).json()
    assert follow["answer"].startswith("申请在星河OA“资产申领”中提交") and "VPN" not in follow["answer"]
    assert follow["searched_question"] == "笔记本电脑在哪里申请？"
    assert not follow["refused"] and follow["answerability"] > 0.9
    assert follow["timings"]["rewrite_ms"] >= 0 and "retrieval_ms" in follow["timings"]


def test_what_about_the_meal_allowance_streams_with_the_searched_question(server: Server) -> None:
    first = _chat(server.url, TRAVEL).json()
    body = {"question": "那餐补呢？", "history": _turns(TRAVEL, first["answer"]), "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/kbs/demo/chat", json=body, timeout=120) as response:
        stream = response.read().decode()
    done = [block for block in stream.split("\n\n") if block.startswith("event: done")]
    data = json.loads(done[0].split("data: ", 1)[1])
    assert "出差餐补每天 100 元" in data["answer"]
    assert [span["text"] for span in data["spans"]] == ["100 元"]  # read as 餐补是多少？: the money marked
    assert data["searched_question"] == "差旅住宿标准餐补呢？" and data["answerability"] > 0.9
    alone = _chat(server.url, "那餐补呢？").json()
    assert alone["answerability"] < data["answerability"]  # the history now changes what is judged


def test_what_about_sick_leave_asks_the_annual_leave_question_of_it(server: Server) -> None:
    first = _chat(server.url, "年假有几天？").json()
    follow = _chat(server.url, "那病假呢？", _turns("年假有几天？", first["answer"])).json()
    assert follow["searched_question"] == "病假有几天？"
    assert follow["answer"].startswith("病假：每年享有 12 天全薪病假"), follow["answer"]
    assert [span["text"] for span in follow["spans"]][:1] == ["12 天"]  # read as asked: 几天 marks days


def test_a_short_turn_goes_on_with_the_guest_wifi(server: Server) -> None:
    """密码是多少？ alone finds the password rules; after the guest Wi-Fi question it asks that password."""
    first = _chat(server.url, "怎么连接访客 Wi-Fi？").json()
    assert "Xinghe-Guest" in first["answer"]
    alone = _chat(server.url, "密码是多少？").json()
    assert alone["answer"].startswith("新密码至少 12 位"), alone["answer"]
    follow = _chat(server.url, "密码是多少？", _turns("怎么连接访客 Wi-Fi？", first["answer"])).json()
    assert follow["answer"].startswith("访客请连接“Xinghe-Guest”"), follow["answer"]
    assert follow["searched_question"] != "密码是多少？" and "访客" in follow["searched_question"]


def test_a_new_topic_is_not_changed_by_the_history(server: Server) -> None:
    answer = _chat(server.url, "报销款多久到账？", _turns(LAPTOP, "满 3 年可申请更换。")).json()
    assert answer["searched_question"] == "报销款多久到账？"


def test_the_openai_client_sends_the_conversation_and_gets_the_searched_question(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    messages = [
        {"role": "system", "content": "你是公司助手。"},
        {"role": "user", "content": LAPTOP},
        {"role": "assistant", "content": "公司配发的笔记本电脑使用满 3 年可申请更换。"},
        {"role": "user", "content": "在哪里申请？"},
    ]
    completion = client.chat.completions.create(model="demo", messages=messages)
    assert "资产申领" in completion.choices[0].message.content
    assert completion.model_extra["searched_question"] == "笔记本电脑在哪里申请？"
    chunks = list(client.chat.completions.create(model="demo", messages=messages, stream=True))
    assert chunks[-1].model_extra["searched_question"] == "笔记本电脑在哪里申请？"


def test_history_past_its_bounds_is_refused_with_422(server: Server) -> None:
    long_turns = [{"role": ("user", "assistant")[i % 2], "content": "很" * 19_000} for i in range(6)]
    refused = _chat(server.url, "在哪里申请？", long_turns)
    assert refused.status_code == 422 and "100000 characters" in refused.json()["error"]["message"]
    too_many = _chat(server.url, "在哪里申请？", _turns("问", "答") * 26)
    assert too_many.status_code == 422 and too_many.json()["error"]["code"]
    messages = [*long_turns, {"role": "user", "content": "在哪里申请？"}]
    body = {"model": "demo", "messages": messages}
    completion = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert completion.status_code == 422 and "100000 characters" in completion.json()["error"]["message"]


def test_kbqa_ask_holds_a_conversation_from_a_history_file(server: Server, tmp_path: Path) -> None:
    history = tmp_path / "history.json"
    history.write_text(
        json.dumps(_turns(LAPTOP, "满 3 年可申请更换。"), ensure_ascii=False), encoding="utf-8"
    )
    data = str(server.data_dir)
    asked = kbqa(
        "--data-dir", data, "ask", "在哪里申请？", "--kb", "demo", "--history", str(history), "--json"
    )
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert answer["searched_question"] == "笔记本电脑在哪里申请？" and "资产申领" in answer["text"]
    history.write_text('[{"role": "bot", "content": "x"}]', encoding="utf-8")
    bad = kbqa("--data-dir", data, "ask", "在哪里申请？", "--kb", "demo", "--history", str(history))
    assert bad.returncode == 2 and "role" in bad.stderr


# ---- a generating backend: the fake OpenAI server rewrites ----


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeOpenAIServer]:
    llm = FakeOpenAIServer()
    llm.controls = Controls(models=("m",))
    llm.start()
    yield llm
    llm.stop()


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeOpenAIServer) -> Iterator[Server]:
    settings = {
        **SAMPLE,
        "KBQA_LLM__BACKEND": "openai",
        "KBQA_LLM__OPENAI__BASE_URL": fake_llm.base_url,
        "KBQA_LLM__OPENAI__MODEL": "m",
        "KBQA_LLM__OPENAI__MAX_RETRIES": "0",
        "KBQA_LLM__FOLLOWUP__TIMEOUT_S": "1.5",
    }
    running = Server(tmp_path_factory.mktemp("conversations-llm") / "data", settings)
    yield running
    running.stop()


def _rewrite_requests(llm: FakeOpenAIServer) -> list[dict]:
    return [r for r in llm.controls.requests if r["messages"][0]["content"] == REWRITE_SYSTEM]


def test_the_model_rewrites_the_follow_up_and_its_question_is_searched(
    llm_server: Server, fake_llm: FakeOpenAIServer
) -> None:
    fake_llm.controls = Controls(models=("m",), replies=["笔记本电脑在哪里申请更换？"])
    answer = _chat(llm_server.url, "在哪里申请？", _turns(LAPTOP, "满 3 年。")).json()
    (rewrite,) = _rewrite_requests(fake_llm)
    assert rewrite["max_tokens"] == 64 and LAPTOP in rewrite["messages"][1]["content"]
    assert answer["searched_question"] == "笔记本电脑在哪里申请更换？"
    assert answer["timings"]["rewrite_ms"] > 0
    assert "资产申领" in fake_llm.controls.requests[-1]["messages"][-1]["content"]  # the chunks given


def test_a_failed_rewrite_falls_back_to_the_rules(llm_server: Server, fake_llm: FakeOpenAIServer) -> None:
    fake_llm.controls = Controls(models=("m",), fail_next=1)
    answer = _chat(llm_server.url, "那餐补呢？", _turns(TRAVEL, "每晚不超过 500 元。")).json()
    assert len(_rewrite_requests(fake_llm)) == 1
    assert answer["searched_question"] == "差旅住宿标准餐补呢？" and not answer["refused"]


def test_a_slow_rewrite_falls_back_to_the_rules_in_time(
    llm_server: Server, fake_llm: FakeOpenAIServer
) -> None:
    fake_llm.controls = Controls(models=("m",), delay_s=3.0)
    answer = _chat(llm_server.url, "那餐补呢？", _turns(TRAVEL, "每晚不超过 500 元。")).json()
    assert answer["searched_question"] == "差旅住宿标准餐补呢？"
    assert 1500 <= answer["timings"]["rewrite_ms"] < 3000
