"""Training examples as the chat templates lay them out: exact token ids and label masks for ChatGLM3 (against
sentencepiece and ChatGLM3's own fine-tuning recipe), ChatML and Llama 3 (against their Jinja chat templates),
multi-turn with and without mask_history, train_on_prompt, and truncation to cutoff_len."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece
from chatglm3_checkpoints import train_sentencepiece
from models import CORPUS, train_byte_level_bpe

from finetune.conversation import Conversation
from finetune.errors import FinetuneError
from finetune.preprocess import IGNORE_INDEX, encode_example, encode_turns
from llm.chatglm3 import SPECIAL_TOKENS, build_tokenizer
from llm.templates import TEMPLATES
from llm.types import Message

SYSTEM = Message("system", "你是知识库问答助手。")
TURNS = [
    Message("user", "年假有几天？"),
    Message("assistant", "工作满一年后年假为五天。"),
    Message("user", "报销申请需要多久提交？"),
    Message("assistant", "费用发生后三十天内提交。"),
]
SINGLE = Conversation((SYSTEM, *TURNS[:2]))
MULTI = Conversation((SYSTEM, *TURNS))
# Meta's Llama 3 chat template (tokenizer_config.json of Meta-Llama-3-8B-Instruct).
LLAMA3_JINJA = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def encode(conversation: Conversation, template: str, tokenizer, cutoff_len: int = 1024, **options) -> tuple:
    example = encode_example(conversation, TEMPLATES[template], tokenizer, cutoff_len, **options)
    assert example["attention_mask"] == [1] * len(example["input_ids"])
    assert len(example["labels"]) == len(example["input_ids"])
    return example["input_ids"], example["labels"]


def masked(ids: list[int]) -> list[int]:
    return [IGNORE_INDEX] * len(ids)


# --- ChatGLM3 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def glm(tmp_path_factory: pytest.TempPathFactory):
    """(ChatGLM3 tokenizer, sentencepiece processor, special token ids) on a small sentencepiece model."""
    model_file = train_sentencepiece(tmp_path_factory.mktemp("sp") / "tokenizer.model", CORPUS)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    special = {name: sp.get_piece_size() + i for i, name in enumerate(SPECIAL_TOKENS)}
    return build_tokenizer(model_file), sp, special


def chatglm3_recipe(sp, special: dict[str, int], messages: list[Message], eos: int) -> tuple[list, list]:
    """ChatGLM3's finetune_demo: build_single_message per message, one EOS at the end, and the labels of the
    tokens that follow an assistant message's tokens (its loss mask shifted by one)."""
    ids, loss = [special["[gMASK]"], special["sop"]], [False, False]
    for message in messages:
        tokens = [special[f"<|{message.role}|>"], *sp.encode("\n"), *sp.encode(message.content)]
        ids += tokens
        loss += [message.role == "assistant"] * len(tokens)
    ids.append(eos)
    loss = [False, *loss]
    return ids, [token if learn else IGNORE_INDEX for token, learn in zip(ids, loss, strict=True)]


def test_chatglm3_single_turn_ids_and_labels(glm) -> None:
    tokenizer, sp, special = glm
    ids, labels = encode(SINGLE, "chatglm3", tokenizer)
    prompt = [
        special["[gMASK]"],
        special["sop"],
        special["<|system|>"],
        *sp.encode("\n"),
        *sp.encode(SYSTEM.content),
        special["<|user|>"],
        *sp.encode("\n"),
        *sp.encode(TURNS[0].content),
        special["<|assistant|>"],
    ]
    reply = [*sp.encode("\n"), *sp.encode(TURNS[1].content), 2]
    assert ids == prompt + reply
    assert labels == masked(prompt) + reply
    assert (ids, labels) == chatglm3_recipe(sp, special, list(SINGLE.messages), 2)
    # What is learnt is what inference asks for: the reply follows the prompt the llm module builds.
    assert ids[: len(prompt)] == TEMPLATES["chatglm3"].encode_prompt(tokenizer, [SYSTEM, TURNS[0]])


def test_chatglm3_multi_turn_follows_chatglm3s_own_recipe(glm) -> None:
    tokenizer, sp, special = glm
    ids, labels = encode(MULTI, "chatglm3", tokenizer)
    assert (ids, labels) == chatglm3_recipe(sp, special, list(MULTI.messages), 2)
    # History is laid out as inference lays it out: no EOS between turns, <|user|> ends the first reply.
    second_prompt = TEMPLATES["chatglm3"].encode_prompt(tokenizer, [SYSTEM, *TURNS[:3]])
    assert ids[: len(second_prompt)] == second_prompt
    user = second_prompt.index(special["<|user|>"], second_prompt.index(special["<|assistant|>"]))
    assert labels[user] == special["<|user|>"] and ids.count(2) == 1


def test_chatglm3_mask_history_learns_the_last_reply_only(glm) -> None:
    tokenizer, sp, special = glm
    ids, labels = encode(MULTI, "chatglm3", tokenizer, mask_history=True)
    full_ids, full_labels = encode(MULTI, "chatglm3", tokenizer)
    assert ids == full_ids
    last_reply = [*sp.encode("\n"), *sp.encode(TURNS[3].content), 2]
    assert labels == masked(ids[: -len(last_reply)]) + last_reply
    assert sum(label != IGNORE_INDEX for label in full_labels) > len(last_reply)


def test_train_on_prompt_learns_every_token(glm) -> None:
    tokenizer, _, _ = glm
    ids, labels = encode(MULTI, "chatglm3", tokenizer, train_on_prompt=True)
    assert labels == ids


# --- ChatML (Qwen) and Llama 3, against their Jinja templates ------------------------------------------


@pytest.fixture(scope="module")
def chatml_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """A byte-level BPE tokenizer with ChatML's special tokens and its Jinja chat template (as Qwen's)."""
    return train_byte_level_bpe(tmp_path_factory.mktemp("chatml"))


@pytest.fixture(scope="module")
def llama3_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """A byte-level BPE tokenizer with Llama 3's special tokens and Meta's chat template."""
    tokenizer = train_byte_level_bpe(tmp_path_factory.mktemp("llama3"))
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tokenizer.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})
    tokenizer.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=False)
    tokenizer.chat_template = LLAMA3_JINJA
    return tokenizer


def jinja(tokenizer, messages: list[Message], generation_prompt: bool = False) -> list[int]:
    rendered = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        add_generation_prompt=generation_prompt,
        tokenize=True,
        return_dict=False,
    )
    return list(rendered)


def reply_spans(tokenizer, messages: list[Message]) -> list[tuple[int, int]]:
    """Return [start, end) of each assistant reply in the Jinja rendering: after its generation prompt, up
    to the end of its rendering."""
    spans = []
    for index, message in enumerate(messages):
        if message.role == "assistant":
            start = len(jinja(tokenizer, messages[:index], generation_prompt=True))
            spans.append((start, len(jinja(tokenizer, messages[: index + 1]))))
    return spans


@pytest.mark.parametrize("template", ["chatml", "llama3", "hf"])
@pytest.mark.parametrize("mask_history", [False, True], ids=["all-replies", "mask-history"])
def test_ids_are_the_jinja_rendering_and_labels_the_replies(
    template: str, mask_history: bool, chatml_tokenizer, llama3_tokenizer
) -> None:
    tokenizer = llama3_tokenizer if template == "llama3" else chatml_tokenizer
    ids, labels = encode(MULTI, template, tokenizer, mask_history=mask_history)
    assert ids == jinja(tokenizer, list(MULTI.messages))
    spans = reply_spans(tokenizer, list(MULTI.messages))
    learnt = spans[-1:] if mask_history else spans
    expected = [
        token if any(start <= i < end for start, end in learnt) else IGNORE_INDEX
        for i, token in enumerate(ids)
    ]
    assert labels == expected
    end_of_turn = tokenizer.convert_tokens_to_ids("<|eot_id|>" if template == "llama3" else "<|im_end|>")
    assert all(end_of_turn in labels[start:end] for start, end in learnt)  # each learnt reply learns to stop


def test_llama3_single_turn_exact_ids(llama3_tokenizer) -> None:
    tokenizer = llama3_tokenizer

    def special(name: str) -> int:
        return tokenizer.convert_tokens_to_ids(name)

    def text(value: str) -> list[int]:
        return tokenizer.encode(value, add_special_tokens=False)

    ids, labels = encode(Conversation((TURNS[0], TURNS[1])), "llama3", tokenizer)
    header = [special("<|start_header_id|>"), *text("user"), special("<|end_header_id|>")]
    prompt = [special("<|begin_of_text|>"), *header, *text("\n\n" + TURNS[0].content), special("<|eot_id|>")]
    prompt += [
        special("<|start_header_id|>"),
        *text("assistant"),
        special("<|end_header_id|>"),
        *text("\n\n"),
    ]
    reply = [*text(TURNS[1].content), special("<|eot_id|>")]
    assert ids == prompt + reply
    assert labels == masked(prompt) + reply


def test_a_chat_template_that_rewrites_history_is_refused(chatml_tokenizer, tmp_path: Path) -> None:
    tokenizer = train_byte_level_bpe(tmp_path)
    # Marks the last message, so a longer conversation renders its earlier turns differently.
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{% if loop.last %}!{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(FinetuneError, match="choose a named --template"):
        encode_turns(TEMPLATES["hf"], tokenizer, list(MULTI.messages))
    with pytest.raises(FinetuneError, match="no assistant reply"):
        encode(Conversation((TURNS[0],), source="d.json#3"), "chatml", chatml_tokenizer)


# --- truncation ---------------------------------------------------------------------------------------


def test_cutoff_len_cuts_prompt_and_reply_keeping_labels_aligned(glm) -> None:
    tokenizer, _, _ = glm
    cutoff = 40
    long_text = "报销申请需要在费用发生后三十天内提交，由部门经理审批。" * 6
    long_prompt = Conversation((Message("user", long_text), TURNS[1]))
    ((prompt, reply),) = TEMPLATES["chatglm3"].encode_turns(tokenizer, long_prompt.messages)
    assert len(prompt) > cutoff and len(reply) * 2 < cutoff
    ids, labels = encode(long_prompt, "chatglm3", tokenizer, cutoff_len=cutoff)
    # A short reply is kept whole; the prompt gives way (LLaMA-Factory's infer_seqlen).
    assert ids == prompt[: cutoff - len(reply)] + reply
    assert labels == masked(prompt[: cutoff - len(reply)]) + reply

    long_reply = Conversation((TURNS[0], Message("assistant", long_text)))
    ((prompt, reply),) = TEMPLATES["chatglm3"].encode_turns(tokenizer, long_reply.messages)
    assert len(prompt) * 2 < cutoff < len(reply)
    ids, labels = encode(long_reply, "chatglm3", tokenizer, cutoff_len=cutoff)
    # A short prompt is kept whole; the reply is cut.
    assert ids == prompt + reply[: cutoff - len(prompt)]
    assert labels == masked(prompt) + reply[: cutoff - len(prompt)]

    both_long = Conversation((Message("user", long_text), Message("assistant", long_text[:60])))
    ((prompt, reply),) = TEMPLATES["chatglm3"].encode_turns(tokenizer, both_long.messages)
    assert min(len(prompt), len(reply)) * 2 >= cutoff
    ids, labels = encode(both_long, "chatglm3", tokenizer, cutoff_len=cutoff)
    kept = int(cutoff * len(reply) / (len(prompt) + len(reply)))  # both long: cut in proportion
    assert ids == prompt[: cutoff - kept] + reply[:kept]
    assert labels == masked(prompt[: cutoff - kept]) + reply[:kept]


def test_cutoff_with_mask_history_keeps_the_last_turn(glm) -> None:
    tokenizer, _, _ = glm
    turns = TEMPLATES["chatglm3"].encode_turns(tokenizer, MULTI.messages)
    last_prompt, last_reply = turns[-1]
    cutoff = len(last_prompt) + len(last_reply) + 3
    ids, labels = encode(MULTI, "chatglm3", tokenizer, cutoff_len=cutoff, mask_history=True)
    assert len(ids) == cutoff
    assert ids[-len(last_prompt) - len(last_reply) :] == last_prompt + last_reply
    assert labels[-len(last_reply) :] == last_reply
    assert labels[: -len(last_reply)] == masked(ids[: -len(last_reply)])
    ids, labels = encode(MULTI, "chatglm3", tokenizer, cutoff_len=cutoff)
    assert ids[:5] == turns[0][0][:5]  # without mask_history the first turns come first
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels, strict=True))
