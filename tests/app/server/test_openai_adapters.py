"""LoRA adapters over the OpenAI-compatible face, as vLLM offers them: `kbqa serve` with a tiny local model
and two adapters, spoken to with the official `openai` client. Each adapter is a model id
(`<base>:<adapter>`), the `adapter` extra is honoured, and an adapter the service lacks is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from models import build_random_lora_adapter, build_tiny_causal_lm
from servers import CLEAN_EXIT, Server, build_small_kb

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "报销款多久到账？"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server over knowledge base `demo` with a tiny Qwen2 (`lm`) carrying adapters `hr` and `it`."""
    root = tmp_path_factory.mktemp("adapters")
    model = build_tiny_causal_lm(root / "lm", "qwen2")
    adapters = {
        name: str(build_random_lora_adapter(model, root / name, seed))
        for name, seed in [("hr", 1), ("it", 2)]
    }
    env = {
        "KBQA_LLM__BACKEND": "transformers",
        "KBQA_LLM__MODEL": str(model),
        "KBQA_LLM__DEVICE": "cpu",
        "KBQA_LLM__ADAPTERS": json.dumps(adapters),
        "KBQA_LLM__MIN_ANSWERABILITY": "0",  # the tiny model must answer, not the refusal sentence
    }
    running = Server(build_small_kb(root), env)
    yield running
    assert running.stop() in CLEAN_EXIT, running.output()


def reply(client: openai.OpenAI, model: str, **extra: object) -> str:
    completion = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=8, temperature=0, extra_body=extra or None
    )
    assert completion.model == model
    return completion.choices[0].message.content or ""


def test_each_adapter_is_a_model_id_and_answers_as_itself(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    models = {m.id: m for m in client.models.list()}
    assert {"demo", "lm", "demo:hr", "demo:it", "lm:hr", "lm:it"} <= set(models)
    assert models["lm:hr"].model_extra["parent"] == "lm"
    for base in ("lm", "demo"):  # the bare LLM and a knowledge base
        plain, hr, it = reply(client, base), reply(client, f"{base}:hr"), reply(client, f"{base}:it")
        assert len({plain, hr, it}) == 3, (plain, hr, it)
        assert reply(client, base, adapter="hr") == hr  # the extra field, as /v1/kbs/{kb}/chat takes it
        assert reply(client, f"{base}:hr", adapter="hr") == hr
        assert reply(client, base, adapter="base") == plain
        # Streamed, the adapter's reply is the same.
        stream = client.chat.completions.create(
            model=f"{base}:it", messages=QUESTION, max_tokens=8, temperature=0, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == it


def test_an_adapter_the_service_lacks_is_refused_never_ignored(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="unknown adapter 'finance'") as refused:
        reply(client, "lm", adapter="finance")
    assert refused.value.body["code"] == "unknown_adapter"
    with pytest.raises(openai.BadRequestError, match="names adapter 'hr' but the request asks for 'it'"):
        reply(client, "demo:hr", adapter="it")
    with pytest.raises(openai.NotFoundError, match="no model named 'lm:finance'"):
        reply(client, "lm:finance")
