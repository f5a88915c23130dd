"""The local transformers backend on tiny random Qwen2 and Llama models loaded from a directory: greedy
generation against plain `model.generate`, streaming, stop strings and ids, the bounded queue, a cancelled
stream, LoRA adapters (switched per request and merged), templates and load errors."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from models import build_random_lora_adapter

from llm.config import LLMConfig
from llm.errors import ModelBusy, ModelLoadError, UnknownAdapter
from llm.templates import TEMPLATES
from llm.transformers_backend import TransformersChatModel
from llm.types import BASE_MODEL, GenerationParams, Message

QUESTION = [Message("system", "你是知识库助手。"), Message("user", "报销需要多久到账？")]
GREEDY = GenerationParams(max_new_tokens=24)


def load(model_dir: Path, **config: object) -> TransformersChatModel:
    return TransformersChatModel(
        LLMConfig(backend="transformers", model=str(model_dir), device="cpu", **config)
    )


@pytest.fixture(scope="module")
def chat(tiny_lm_dir: Path) -> TransformersChatModel:
    return load(tiny_lm_dir)


def plain_generate(chat: TransformersChatModel, messages: list[Message], max_new_tokens: int) -> list[int]:
    """Return the new ids of a plain greedy `model.generate` on the same prompt, as a user would write it."""
    import torch

    conversation = [{"role": m.role, "content": m.content} for m in messages]
    ids = chat.tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.inference_mode():
        output = chat.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False
        )
    return output[0, ids.shape[1] :].tolist()


def test_greedy_generation_matches_plain_generate(chat: TransformersChatModel) -> None:
    reference = plain_generate(chat, QUESTION, GREEDY.max_new_tokens)
    result = chat.generate(QUESTION, GREEDY)
    assert result.text == chat.tokenizer.decode(reference, skip_special_tokens=True)
    assert result.usage.prompt_tokens == chat.count_prompt_tokens(QUESTION)
    assert result.usage.completion_tokens == len(reference)
    assert result.finish_reason == ("length" if len(reference) == GREEDY.max_new_tokens else "stop")


def test_stream_deltas_add_up_to_the_generated_text(chat: TransformersChatModel) -> None:
    whole = chat.generate(QUESTION, GREEDY)
    stream = chat.stream(QUESTION, GREEDY)
    deltas = list(stream)
    assert len(deltas) > 1 and all(deltas)
    assert "".join(deltas) == whole.text
    assert stream.generation == whole


def test_stop_token_id_ends_the_reply(chat: TransformersChatModel) -> None:
    reference = plain_generate(chat, QUESTION, GREEDY.max_new_tokens)
    position = 5
    stop_id = reference[position]
    first = reference.index(stop_id)
    params = GREEDY.model_copy(update={"stop_token_ids": [stop_id]})
    for result in (chat.generate(QUESTION, params), chat.stream(QUESTION, params).read()):
        assert result.usage.completion_tokens == first + 1
        assert result.finish_reason == "stop"
        assert result.text == chat.tokenizer.decode(reference[:first], skip_special_tokens=True)


def test_stop_string_cuts_the_reply_in_both_paths(chat: TransformersChatModel) -> None:
    full = chat.generate(QUESTION, GREEDY).text
    middle = len(full) // 2
    stop = full[middle : middle + 2]
    params = GREEDY.model_copy(update={"stop": ["never-in-output", stop]})
    expected = full[: full.index(stop)]
    whole = chat.generate(QUESTION, params)
    stream = chat.stream(QUESTION, params)
    assert whole.text == expected and "".join(stream) == expected
    assert whole.finish_reason == stream.generation.finish_reason == "stop"
    assert stream.generation.usage.completion_tokens < GREEDY.max_new_tokens


def test_count_prompt_tokens_is_the_chat_template_length(chat: TransformersChatModel) -> None:
    conversation = [{"role": m.role, "content": m.content} for m in QUESTION]
    ids = chat.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True)
    assert chat.count_prompt_tokens(QUESTION) == len(ids["input_ids"])
    assert chat.template.name == "hf"
    # Our own ChatML template lays out the same ids as the tokenizer's Jinja one.
    assert TEMPLATES["chatml"].encode_prompt(chat.tokenizer, QUESTION) == ids["input_ids"]
    assert chat.context_window == 1024


def test_a_full_queue_is_refused_at_once(tiny_lm_dir: Path) -> None:
    chat = load(tiny_lm_dir, queue_size=1)
    params = GenerationParams(max_new_tokens=64)
    running = chat.stream(QUESTION, params)
    next(running)  # holds the model
    waiting = chat.stream(QUESTION, params)  # admitted: waits its turn
    with pytest.raises(ModelBusy, match="busy"):
        chat.stream(QUESTION, params)
    with pytest.raises(ModelBusy):
        chat.generate(QUESTION, params)
    running.close()
    assert waiting.read().usage.completion_tokens > 0
    assert chat.generate(QUESTION, GREEDY).text  # every place was given back


def test_closing_a_stream_stops_its_generation(tiny_lm_dir: Path) -> None:
    chat = load(tiny_lm_dir, queue_size=0)
    steps = []
    hook = chat.model.register_forward_hook(lambda *args: steps.append(1))
    stream = chat.stream(QUESTION, GenerationParams(max_new_tokens=200))
    next(stream)
    stream.close()
    hook.remove()
    assert len(steps) < 50  # the worker saw the cancellation within a few tokens, not after 200
    # close() has returned: the generation has ended and its one place (queue_size 0) is free at once, so a
    # new stream is admitted rather than refused with ModelBusy, and runs to its end.
    assert chat.stream(QUESTION, GREEDY).read().text
    assert chat.generate(QUESTION, GREEDY).text  # the single place is free again


def test_generation_on_two_threads_is_serialised(tiny_lm_dir: Path) -> None:
    chat = load(tiny_lm_dir, queue_size=4)
    expected = chat.generate(QUESTION, GREEDY).text
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(chat.stream(QUESTION, GREEDY).read().text))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 3


# --- LoRA adapters --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapters(tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: str(build_random_lora_adapter(tiny_lm_dir, root / name, seed))
        for name, seed in (("hr", 1), ("it", 2))
    }


def test_adapters_are_chosen_per_request(
    tiny_lm_dir: Path, chat: TransformersChatModel, adapters: dict[str, str]
) -> None:
    base_text = chat.generate(QUESTION, GREEDY).text
    with_adapters = load(tiny_lm_dir, adapters=adapters)

    def reply(adapter: str | None) -> str:
        return with_adapters.generate(QUESTION, GREEDY.model_copy(update={"adapter": adapter})).text

    hr, it, base = reply("hr"), reply("it"), reply(BASE_MODEL)
    assert hr != base_text and it != base_text and hr != it
    assert base == base_text and reply(None) == base_text  # no default adapter: the base model
    assert reply("hr") == hr and reply("it") == it  # switching back and forth is stable
    streamed = with_adapters.stream(QUESTION, GREEDY.model_copy(update={"adapter": "it"}))
    assert "".join(streamed) == it
    with pytest.raises(UnknownAdapter, match="finance"):
        reply("finance")


def test_default_and_merged_adapter_give_the_adapter_output(
    tiny_lm_dir: Path, adapters: dict[str, str]
) -> None:
    with_adapters = load(tiny_lm_dir, adapters=adapters, default_adapter="hr")
    hr = with_adapters.generate(QUESTION, GREEDY).text
    assert hr == with_adapters.generate(QUESTION, GREEDY.model_copy(update={"adapter": "hr"})).text
    merged = load(tiny_lm_dir, adapters=adapters, merge_adapter="hr")
    assert merged.adapters == {}
    assert merged.generate(QUESTION, GREEDY).text == hr


def test_adapter_settings_are_checked(tiny_lm_dir: Path, adapters: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not in llm.adapters"):
        load(tiny_lm_dir, adapters=adapters, default_adapter="finance")
    with pytest.raises(ModelLoadError, match="adapter"):
        load(tiny_lm_dir, adapters={"missing": str(tmp_path / "nowhere")})


# --- loading --------------------------------------------------------------------------------------


def test_load_errors_are_clear(tiny_lm_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load the model"):
        load(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match="unknown chat template"):
        load(tiny_lm_dir, template="vicuna")
    with pytest.raises(ModelLoadError, match="special tokens"):
        load(tiny_lm_dir, template="chatglm3")
    with pytest.raises(ModelLoadError, match="CUDA"):
        load(tiny_lm_dir, quantization="4bit")


def test_named_template_and_context_window_override(tiny_lm_dir: Path) -> None:
    chat = load(tiny_lm_dir, template="chatml", context_window=128)
    assert chat.template.name == "chatml" and chat.context_window == 128
    assert chat.generate(QUESTION, GREEDY).usage.prompt_tokens == chat.count_prompt_tokens(QUESTION)
