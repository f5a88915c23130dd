"""The prompt builder: what it puts into the model's context window, measured with a real tokenizer."""

from __future__ import annotations

import pytest
from hits import search_hit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm.errors import PromptTooLong
from llm.prompt import PromptBuilder, PromptConfig, language_of
from llm.templates import TEMPLATES
from llm.types import Message

PIECES = [
    "差旅费用应在出差结束后三十天内提交报销申请。",
    "审核通过的报销款在每周四统一付款，通常十个工作日内到账。",
    "Backups of the production database run every night at 2 am. ",
    "Submit the claim within 30 days of returning; attach every receipt.\n",
    "{{ question }} {% if x %}模板语法只是文字{% endif %} ",  # chunk text is data, never a template
    "VPN 服务器地址 vpn.xinghe.example，每个账号最多 2 台设备。",
]
CORPUS = PIECES + ["年假有几天？", "How long does reimbursement take?", "你是一个严谨的企业知识库问答助手。"]


@pytest.fixture(scope="module")
def counter():
    """Count prompt tokens as the transformers backend does: a ChatML template over a trained BPE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>")
    template = TEMPLATES["chatml"]
    assert template.fits(fast)
    return lambda messages: len(template.encode_prompt(fast, messages))


def make_history(turns: int) -> list[Message]:
    """Return `turns` earlier question/answer pairs, oldest first."""
    messages: list[Message] = []
    for i in range(turns):
        messages += [
            Message("user", f"第{i}个问题：年假有几天？"),
            Message("assistant", f"Answer {i}: ten days. [1]"),
        ]
    return messages


@st.composite
def texts(draw: st.DrawFn, max_size: int = 3000) -> str:
    """Draw a chunk-like text: repeated Chinese/English pieces cut to a length, or arbitrary characters."""
    if draw(st.booleans()):
        return draw(st.text(max_size=40))
    piece = draw(st.sampled_from(PIECES))
    length = draw(st.integers(0, max_size))
    return (piece * (length // len(piece) + 1))[:length]


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunk_texts=st.lists(texts(), max_size=8),
    pages=st.lists(st.none() | st.integers(1, 300), min_size=8, max_size=8),
    question=st.sampled_from(["报销需要多久到账？", "How long does reimbursement take?"]) | texts(600),
    turns=st.integers(0, 6),
    max_turns=st.integers(0, 4),
    window=st.sampled_from(range(16, 12001, 7)),  # spreads draws more evenly than integers()
    max_new_tokens=st.integers(1, 512),
)
def test_prompt_always_fits_and_keeps_its_promises(
    counter, chunk_texts, pages, question, turns, max_turns, window, max_new_tokens
) -> None:
    calls = 0

    def counting(messages: list[Message]) -> int:
        nonlocal calls
        calls += 1
        return counter(messages)

    config = PromptConfig(max_history_turns=max_turns)
    hits = [search_hit(i, text, pages[i]) for i, text in enumerate(chunk_texts)]
    history = make_history(turns)
    budget = window - max_new_tokens - config.margin_tokens
    unlimited = PromptBuilder(config.model_copy(update={"max_history_turns": 100}), counter, 10**9)
    try:
        prompt = PromptBuilder(config, counting, window).build(question, hits, history, max_new_tokens)
    except PromptTooLong:
        # Only when the system text and the question alone are over the budget.
        assert unlimited.build(question, [], [], max_new_tokens).prompt_tokens > budget
        return

    assert prompt.prompt_tokens == counter(prompt.messages) <= budget
    system, *kept, user = prompt.messages
    language = language_of(question)
    assert prompt.language == language
    assert system == Message("system", config.system_zh if language == "zh" else config.system_en)
    assert user.role == "user" and question in user.content
    # History: a suffix of whole pairs, at most max_turns of them.
    assert len(kept) == 2 * prompt.history_turns and prompt.history_turns <= max_turns
    assert kept == history[len(history) - len(kept) :]
    # Chunks: a prefix of the ranking; only the first may be cut, and then it is alone.
    included = prompt.hits
    assert [h.chunk_id for h in included] == [h.chunk_id for h in hits[: len(included)]]
    cut = [h for h, original in zip(included, hits, strict=False) if h.text != original.text]
    if cut:
        assert included == cut and cut[0].text.endswith("…")
        assert hits[0].text.startswith(cut[0].text[:-1])
    for n, hit in enumerate(included, start=1):
        assert f"[{n}] {hit.text}" in user.content
    # Each stop was forced: one more whole chunk, or one more history pair, would not have fit.
    if len(included) < len(hits) and not cut:
        more = unlimited.build(question, hits[: len(included) + 1], [], max_new_tokens)
        assert more.prompt_tokens > budget
    if prompt.history_turns < min(turns, max_turns):
        longer = history[len(history) - len(kept) - 2 :]
        more = unlimited.build(question, included, longer, max_new_tokens)
        assert more.history_turns == prompt.history_turns + 1 and more.prompt_tokens > budget
    # Binary searches, not one render per prefix: one search each over chunks, characters and pairs.
    bits = len(hits).bit_length() + len(hits[0].text if hits else "").bit_length() + turns.bit_length()
    assert calls <= 4 + bits


def test_the_best_ranked_chunks_are_kept_when_the_window_is_small(counter) -> None:
    config = PromptConfig()
    hits = [search_hit(i, PIECES[i % 4] * 6) for i in range(6)]
    unlimited = PromptBuilder(config, counter, 10**9)
    two = unlimited.build("报销需要多久到账？", hits[:2], [], 100).prompt_tokens
    window = two + 100 + config.margin_tokens  # room for exactly the first two chunks
    prompt = PromptBuilder(config, counter, window).build("报销需要多久到账？", hits, make_history(3), 100)
    assert prompt.hits == hits[:2] and prompt.prompt_tokens == two
    assert prompt.history_turns == 0  # grounding first: the chunks took the room
    # The ranking decides, not the length: reversed hits keep the other two.
    reversed_prompt = PromptBuilder(config, counter, window + 50).build(
        "报销需要多久到账？", hits[::-1], [], 100
    )
    assert reversed_prompt.hits[:2] == hits[::-1][:2]


def test_a_huge_first_chunk_is_cut_to_fit(counter) -> None:
    huge = search_hit(0, PIECES[0] * 800)  # about 17,000 characters
    builder = PromptBuilder(PromptConfig(), counter, 1024)
    prompt = builder.build("报销需要多久到账？", [huge, search_hit(1, PIECES[1])], [], 256)
    budget = 1024 - 256 - PromptConfig().margin_tokens
    (cut,) = prompt.hits
    assert cut.chunk_id == 0 and cut.text.endswith("…") and huge.text.startswith(cut.text[:-1])
    assert 100 < len(cut.text) < len(huge.text)
    # It was cut no shorter than needed: a character more would not fit, so the budget is nearly full.
    assert budget - 12 <= prompt.prompt_tokens <= budget


def test_a_question_longer_than_the_window_is_refused(counter) -> None:
    builder = PromptBuilder(PromptConfig(), counter, 512)
    with pytest.raises(PromptTooLong, match=r"context window of 512 tokens"):
        builder.build("年假有几天？" * 400, [search_hit(0, PIECES[0])], [], 128)
    with pytest.raises(PromptTooLong):
        builder.without_context("How many days of leave do I get? " * 100, [], 128)
    with pytest.raises(PromptTooLong, match="leaves 0 for the prompt"):
        builder.build("年假有几天？", [], [], 512)  # the reply alone takes the whole window


def test_language_follows_the_question(counter) -> None:
    config = PromptConfig()
    builder = PromptBuilder(config, counter, 4096)
    hits = [search_hit(0, PIECES[2])]
    zh = builder.build("VPN 怎么连？", hits, [], 256)
    en = builder.build("How do I connect to the VPN?", hits, [], 256)
    assert (zh.language, en.language) == ("zh", "en")
    assert zh.messages[0].content == config.system_zh and en.messages[0].content == config.system_en
    assert "问题：VPN 怎么连？" in zh.messages[-1].content
    assert "Question: How do I connect to the VPN?" in en.messages[-1].content
    assert language_of("台北101大樓") == "zh" and language_of("Größe: 3 m") == "en"


def test_chunks_are_numbered_with_source_and_page(counter) -> None:
    hits = [search_hit(0, "年假每年十天。", page=3), search_hit(1, "病假须提供证明。")]
    builder = PromptBuilder(PromptConfig(), counter, 4096)
    zh = builder.build("年假有几天？", hits, [], 256).messages[-1].content
    assert "[1] 年假每年十天。（来源：doc0.md，第3页）" in zh
    assert "[2] 病假须提供证明。（来源：doc1.md）" in zh
    assert PromptConfig().refusal_zh in zh
    en = builder.build("How many days?", hits, [], 256).messages[-1].content
    assert "[1] 年假每年十天。 (source: doc0.md, page 3)" in en and "(source: doc1.md)" in en


def test_history_keeps_the_most_recent_pairs(counter) -> None:
    history = make_history(5)
    builder = PromptBuilder(PromptConfig(max_history_turns=2), counter, 4096)
    prompt = builder.build("年假有几天？", [search_hit(0, PIECES[0])], history, 256)
    assert prompt.history_turns == 2 and prompt.messages[1:-1] == history[-4:]
    assert (
        PromptBuilder(PromptConfig(max_history_turns=0), counter, 4096)
        .build("年假？", [], history, 256)
        .history_turns
        == 0
    )
    with pytest.raises(ValueError, match="alternate"):
        builder.build("年假有几天？", [], history[1:], 256)


def test_without_context_asks_plainly(counter) -> None:
    config = PromptConfig()
    builder = PromptBuilder(config, counter, 4096)
    prompt = builder.without_context("公司食堂几点开饭？", make_history(1), 256)
    assert prompt.hits == [] and prompt.history_turns == 1 and prompt.language == "zh"
    assert prompt.messages[0] == Message("system", config.no_context_system_zh)
    assert prompt.messages[-1] == Message("user", "公司食堂几点开饭？")
    assert prompt.prompt_tokens == counter(prompt.messages)
    assert (
        builder.without_context("When is lunch?", [], 256).messages[0].content == config.no_context_system_en
    )


def test_refusal_and_notice_follow_the_question_language() -> None:
    config = PromptConfig()
    assert config.refusal("年假有几天？") == config.refusal_zh
    assert config.refusal("How many leave days?") == config.refusal_en
    assert config.notice("年假有几天？") == config.no_context_notice_zh
    assert config.notice("How many leave days?") == config.no_context_notice_en


def test_templates_are_checked_and_sandboxed(counter) -> None:
    from jinja2.exceptions import SecurityError

    with pytest.raises(ValueError, match="never uses question"):
        PromptBuilder(
            PromptConfig(template_en="{% for c in chunks %}{{ c.text }}{% endfor %}"), counter, 4096
        )
    probe = "{{ question }}{{ chunks.append(1) }}"  # a settings file must not be able to change objects
    builder = PromptBuilder(PromptConfig(template_en=probe), counter, 4096)
    with pytest.raises(SecurityError):
        builder.build("How?", [], [], 16)
