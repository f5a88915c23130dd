"""The `openai` backend against a real local OpenAI-schema server under uvicorn (tests/openai_server.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openai_server import FakeOpenAIServer, fake_tokens

from llm.config import OpenAIConfig
from llm.errors import LLMError, ModelBusy, ModelLoadError, ModelUnavailable
from llm.openai_backend import OpenAIChatModel, estimate_prompt_tokens, estimate_tokens
from llm.types import BASE_MODEL, GenerationParams, Message, Usage

QUESTION = [Message("system", "Answer briefly."), Message("user", "how many days of annual leave")]
REPLY = "served-model heard: how many days of annual leave"

MakeModel = Callable[..., OpenAIChatModel]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    """One fake server for the module; each test gets fresh controls through `controls`."""
    server = FakeOpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def controls(server: FakeOpenAIServer):
    """Fresh controls of the fake server for this test."""
    from openai_server import Controls

    server.controls = Controls()
    return server.controls


@pytest.fixture
def make_model(server: FakeOpenAIServer, controls) -> Iterator[MakeModel]:
    """A factory of models pointed at the fake server (no retries unless asked); all closed afterwards."""
    models: list[OpenAIChatModel] = []

    def make(**config) -> OpenAIChatModel:
        config = {"base_url": server.base_url, "max_retries": 0, "timeout_s": 10.0, **config}
        models.append(OpenAIChatModel(OpenAIConfig(**config), "served-model"))
        return models[-1]

    yield make
    for model in models:
        model.close()


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Return whether `condition` became true within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_generate_returns_the_reply_its_usage_and_sends_the_parameters(
    make_model: MakeModel, controls
) -> None:
    model = make_model()
    params = GenerationParams(max_new_tokens=64, temperature=0.3, top_p=0.9, seed=7)
    generation = model.generate(QUESTION, params)

    assert generation.text == REPLY
    assert generation.finish_reason == "stop"
    prompt_words = sum(len(fake_tokens(m.content)) for m in QUESTION)
    assert generation.usage == Usage(prompt_words, len(fake_tokens(REPLY)))
    [body] = controls.requests
    assert body["model"] == "served-model"
    assert body["messages"] == [{"role": m.role, "content": m.content} for m in QUESTION]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (64, 0.3, 0.9, 7)
    # Defaults stay off the wire, so servers that reject vLLM's extra fields still work.
    assert not {"stop", "stop_token_ids", "repetition_penalty", "stream"} & body.keys()


def test_stream_deltas_concatenate_to_the_generated_text_with_usage(make_model: MakeModel, controls) -> None:
    model = make_model()
    expected = model.generate(QUESTION, GenerationParams())
    stream = model.stream(QUESTION, GenerationParams())
    deltas = list(stream)

    assert len(deltas) == len(fake_tokens(REPLY)) and "" not in deltas
    assert "".join(deltas) == expected.text
    assert stream.generation == expected
    assert controls.requests[-1]["stream"] is True
    assert controls.requests[-1]["stream_options"] == {"include_usage": True}


def test_stream_without_usage_from_the_server_counts_it(make_model: MakeModel, controls) -> None:
    controls.send_usage = False
    model = make_model()
    generation = model.stream(QUESTION, GenerationParams()).read()

    assert generation.text == REPLY
    assert generation.usage == Usage(model.count_prompt_tokens(QUESTION), model.count_tokens(REPLY))


@pytest.mark.parametrize("streamed", [False, True])
def test_stop_strings_and_max_tokens_reach_the_server_and_are_honoured(
    make_model: MakeModel, controls, streamed: bool
) -> None:
    model = make_model()

    def run(params: GenerationParams):
        return model.stream(QUESTION, params).read() if streamed else model.generate(QUESTION, params)

    stopped = run(GenerationParams(stop=["annual", "never"]))
    assert (stopped.text, stopped.finish_reason) == ("served-model heard: how many days of ", "stop")
    assert controls.requests[-1]["stop"] == ["annual", "never"]

    cut = run(GenerationParams(max_new_tokens=3))
    assert (cut.text, cut.finish_reason, cut.usage.completion_tokens) == (
        "served-model heard: how ",
        "length",
        3,
    )
    assert controls.requests[-1]["max_tokens"] == 3


def test_vllm_sampling_extras_are_sent_in_the_body(make_model: MakeModel, controls) -> None:
    make_model().generate(QUESTION, GenerationParams(stop_token_ids=[7, 9], repetition_penalty=1.2))

    body = controls.requests[-1]
    assert body["stop_token_ids"] == [7, 9]
    assert body["repetition_penalty"] == 1.2


def test_an_adapter_is_asked_for_as_the_model_name(make_model: MakeModel, controls) -> None:
    model = make_model()

    assert model.generate(QUESTION, GenerationParams(adapter="zh-lora")).text.startswith("zh-lora heard:")
    assert controls.requests[-1]["model"] == "zh-lora"
    assert model.generate(QUESTION, GenerationParams(adapter=BASE_MODEL)).text == REPLY
    assert "".join(model.stream(QUESTION, GenerationParams(adapter="zh-lora"))).startswith("zh-lora heard:")


def test_the_configured_model_name_overrides_the_llm_model(server: FakeOpenAIServer, controls) -> None:
    model = OpenAIChatModel(
        OpenAIConfig(base_url=server.base_url, model="served-model", context_window=2048),
        "/models/chatglm3-6b",
    )
    try:
        assert (model.name, model.context_window) == ("served-model", 2048)
        assert model.generate(QUESTION, GenerationParams()).text == REPLY
    finally:
        model.close()


def test_observations_are_sent_as_user_turns(make_model: MakeModel, controls) -> None:
    messages = [*QUESTION, Message("assistant", "Let me look."), Message("observation", "ten days")]
    generation = make_model().generate(messages, GenerationParams())

    assert [m["role"] for m in controls.requests[-1]["messages"]] == ["system", "user", "assistant", "user"]
    assert generation.text == "served-model heard: ten days"


@pytest.mark.parametrize("streamed", [False, True])
def test_retries_outlast_a_few_server_errors(make_model: MakeModel, controls, streamed: bool) -> None:
    controls.fail_next = 2
    model = make_model(max_retries=2)

    reply = (
        model.stream(QUESTION, GenerationParams()).read()
        if streamed
        else model.generate(QUESTION, GenerationParams())
    )

    assert reply.text == REPLY
    assert len(controls.requests) == 3


@pytest.mark.parametrize("streamed", [False, True])
def test_a_server_that_keeps_failing_is_unavailable(
    server: FakeOpenAIServer, make_model: MakeModel, controls, streamed: bool
) -> None:
    controls.fail_next = 100
    model = make_model(max_retries=2)

    with pytest.raises(ModelUnavailable, match="HTTP 500") as raised:
        model.stream(QUESTION, GenerationParams()) if streamed else model.generate(
            QUESTION, GenerationParams()
        )

    assert server.base_url in str(raised.value)
    assert len(controls.requests) == 3


@pytest.mark.parametrize("streamed", [False, True])
def test_nothing_listening_is_unavailable_at_once(streamed: bool) -> None:
    # A bound socket that never listens refuses connections and keeps its port from being reused.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
        model = OpenAIChatModel(OpenAIConfig(base_url=url, max_retries=0), "served-model")
        started = time.monotonic()
        with pytest.raises(ModelUnavailable, match="is vLLM running") as raised:
            model.stream(QUESTION, GenerationParams()) if streamed else model.generate(
                QUESTION, GenerationParams()
            )
        model.close()

    assert time.monotonic() - started < 2
    assert f"cannot reach the model server at {url}" in str(raised.value)


def test_a_server_slower_than_the_timeout_is_unavailable(make_model: MakeModel, controls) -> None:
    controls.delay_s = 1.5
    model = make_model(timeout_s=0.2)
    started = time.monotonic()

    with pytest.raises(ModelUnavailable, match=r"no reply within 0\.2 s"):
        model.generate(QUESTION, GenerationParams())
    assert time.monotonic() - started < 1.2


def test_a_stream_stalling_longer_than_the_timeout_is_unavailable(make_model: MakeModel, controls) -> None:
    controls.delta_delay_s = 1.0
    stream = make_model(timeout_s=0.2).stream(QUESTION, GenerationParams())

    with pytest.raises(ModelUnavailable, match="no reply within"):
        next(stream)


def test_closing_a_stream_early_disconnects_from_the_server(make_model: MakeModel, controls) -> None:
    controls.delta_delay_s = 0.02
    words = " ".join(f"word{i}" for i in range(200))
    stream = make_model().stream([Message("user", words)], GenerationParams(max_new_tokens=1000))
    received = [next(stream) for _ in range(3)]
    stream.close()

    assert "".join(received) == "served-model heard: word0 "
    assert wait_for(lambda: bool(controls.disconnects)), "the server never saw the client go away"
    assert 3 <= controls.disconnects[0] < 100
    with pytest.raises(StopIteration):
        next(stream)


def test_closing_a_stream_before_its_first_delta_disconnects(make_model: MakeModel, controls) -> None:
    controls.delta_delay_s = 0.05
    stream = make_model().stream(QUESTION, GenerationParams())
    stream.close()

    assert wait_for(lambda: bool(controls.disconnects)), "the server never saw the client go away"
    assert controls.disconnects[0] < len(fake_tokens(REPLY))


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        (GenerationParams(adapter="missing"), 404, "The model `missing` does not exist."),
        (GenerationParams(max_new_tokens=8000), 400, "maximum context length is 4096 tokens"),
    ],
)
def test_a_refused_request_is_an_llm_error_with_the_servers_message(
    make_model: MakeModel, controls, params: GenerationParams, status: int, message: str
) -> None:
    model = make_model(max_retries=2)

    for call in (model.generate, model.stream):
        with pytest.raises(LLMError, match=f"HTTP {status}") as raised:
            call(QUESTION, params)
        assert not isinstance(raised.value, ModelUnavailable | ModelBusy)
        assert message in str(raised.value)
    assert len(controls.requests) == 2  # a refusal is not retried


def test_rate_limiting_is_busy(make_model: MakeModel, controls) -> None:
    controls.fail_next, controls.fail_status = 1, 429

    with pytest.raises(ModelBusy, match="HTTP 429"):
        make_model().generate(QUESTION, GenerationParams())


def test_the_estimate_counts_cjk_characters_and_thirds_of_other_text() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("年假五天。") == 5  # full-width punctuation counts as CJK
    assert estimate_tokens("abcdef") == 2
    assert estimate_tokens("abcdefg") == 3
    assert estimate_tokens("年假 is 5 days") == 2 + 4  # 2 CJK, then 12 other characters
    assert estimate_tokens("𠀀") == 1  # extension B, outside the basic plane
    messages = [Message("system", "abc"), Message("user", "年假")]
    assert estimate_prompt_tokens(messages) == 1 + 2 + 2 * 4 + 3


def test_without_a_tokenizer_the_model_estimates(make_model: MakeModel) -> None:
    model = make_model()

    assert model.count_tokens("员工年假 policy") == estimate_tokens("员工年假 policy")
    assert model.count_prompt_tokens(QUESTION) == estimate_prompt_tokens(QUESTION)


@pytest.mark.slow
def test_with_a_tokenizer_the_counts_are_exact(make_model: MakeModel, tmp_path: Path) -> None:
    from models import train_wordpiece
    from transformers import AutoTokenizer

    tokenizer = train_wordpiece(tmp_path)
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    tokenizer.save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    model = make_model(tokenizer=str(tmp_path))
    text = "员工每年享有带薪年假 the quick brown fox"
    messages = [*QUESTION, Message("observation", "ten days")]
    wire = [{"role": "user" if m.role == "observation" else m.role, "content": m.content} for m in messages]

    assert model.count_tokens(text) == len(tokenizer.encode(text, add_special_tokens=False))
    assert model.count_prompt_tokens(messages) == len(
        tokenizer.apply_chat_template(wire, add_generation_prompt=True, tokenize=True, return_dict=False)
    )
    assert model.count_prompt_tokens(messages) != estimate_prompt_tokens(messages)


def test_a_missing_tokenizer_is_a_load_error(make_model: MakeModel, tmp_path: Path) -> None:
    model = make_model(tokenizer=str(tmp_path / "absent"))

    with pytest.raises(ModelLoadError, match="absent"):
        model.count_tokens("text")
