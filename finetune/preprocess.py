"""One training example's token ids and labels: a conversation laid out by the chat template it is served with.

Labels are the input ids with what the model should not learn set to -100: each turn's prompt (unless
`train_on_prompt`) and, with `mask_history`, every reply but the last. A reply learns to end: the last one
carries the template's reply suffix (or the tokenizer's EOS when it holds no stop token), and where a
template ends earlier replies with the next role token rather than a suffix (ChatGLM3's `<|user|>`), that
token is learnt, as in ChatGLM3's own fine-tuning script. Truncation to `cutoff_len` follows LLaMA-Factory:
turns in order (the last first with `mask_history`), each turn's budget shared between prompt and reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finetune.conversation import Conversation, Preference
from finetune.errors import FinetuneError
from llm.templates import Template, TokenizerTemplate
from llm.types import Message

IGNORE_INDEX = -100

# Message roles as the Jinja chat templates of Qwen, Llama and GLM name them.
_HF_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "observation": "tool"}


def encode_example(
    conversation: Conversation,
    template: Template | TokenizerTemplate,
    tokenizer: Any,
    cutoff_len: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    turn_limits: tuple[int | None, int | None] = (None, None),
) -> dict[str, list[int]]:
    """Return {"input_ids", "labels", "attention_mask"} of `conversation`, at most `cutoff_len` tokens long.

    `turn_limits` (DB-GPT-Hub's max_source_length, max_target_length) first cut each prompt and each reply.
    """
    most_prompt, most_reply = turn_limits
    turns = [
        (prompt[:most_prompt], reply[:most_reply])
        for prompt, reply in encode_turns(template, tokenizer, conversation.messages)
    ]
    if not turns:
        raise FinetuneError(f"{conversation.source or 'a conversation'} has no assistant reply to learn")
    stops = set(template.stop_token_ids(tokenizer))
    last_prompt, last_reply = turns[-1]
    if not stops.intersection(last_reply) and tokenizer.eos_token_id is not None:
        turns[-1] = (last_prompt, last_reply + [tokenizer.eos_token_id])
    last = len(turns) - 1
    labelled = []
    for index, (prompt, reply) in enumerate(turns):
        if train_on_prompt:
            prompt_labels = list(prompt)
        else:
            prompt_labels = [IGNORE_INDEX] * len(prompt)
            if index > 0 and not mask_history and prompt[0] in stops:
                prompt_labels[0] = prompt[0]  # the role token that ends the previous reply
        reply_labels = [IGNORE_INDEX] * len(reply) if mask_history and index != last else list(reply)
        labelled.append((prompt, prompt_labels, reply, reply_labels))
    input_ids, labels = _truncate(labelled, cutoff_len, newest_first=mask_history)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def encode_turns(
    template: Template | TokenizerTemplate, tokenizer: Any, messages: Sequence[Message]
) -> list[tuple[list[int], list[int]]]:
    """Return (prompt ids, reply ids) for each assistant reply, through the template or the tokenizer's own."""
    if isinstance(template, Template):
        return template.encode_turns(tokenizer, messages)
    return _rendered_turns(tokenizer, messages)


def _rendered_turns(tokenizer: Any, messages: Sequence[Message]) -> list[tuple[list[int], list[int]]]:
    """Split the tokenizer's chat template rendering into turns by rendering each prefix of the conversation."""

    def render(part: Sequence[Message], generation_prompt: bool) -> list[int]:
        conversation = [{"role": _HF_ROLES[m.role], "content": m.content} for m in part]
        ids = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
        )
        return list(ids)

    turns: list[tuple[list[int], list[int]]] = []
    done: list[int] = []
    for index, message in enumerate(messages):
        if message.role != "assistant":
            continue
        prompt, whole = render(messages[:index], True), render(messages[: index + 1], False)
        if prompt[: len(done)] != done or whole[: len(prompt)] != prompt:
            raise FinetuneError(
                "the tokenizer's chat template renders an earlier turn differently once a later one follows, "
                "so prompt and reply cannot be told apart; choose a named --template "
                "(chatglm3, glm4, chatml, llama3, default)"
            )
        turns.append((prompt[len(done) :], whole[len(prompt) :]))
        done = whole
    return turns


def _truncate(
    turns: list[tuple[list[int], list[int], list[int], list[int]]], cutoff_len: int, newest_first: bool
) -> tuple[list[int], list[int]]:
    """Return (ids, labels) of the turns cut to `cutoff_len`, ids and labels cut at the same places."""
    input_ids: list[int] = []
    labels: list[int] = []
    total = 0
    for prompt, prompt_labels, reply, reply_labels in reversed(turns) if newest_first else turns:
        if total >= cutoff_len:
            break
        prompt_len, reply_len = _budget(len(prompt), len(reply), cutoff_len - total)
        ids = prompt[:prompt_len] + reply[:reply_len]
        masks = prompt_labels[:prompt_len] + reply_labels[:reply_len]
        total += prompt_len + reply_len
        if newest_first:
            input_ids, labels = ids + input_ids, masks + labels
        else:
            input_ids, labels = input_ids + ids, labels + masks
    return input_ids, labels


def _budget(prompt_len: int, reply_len: int, budget: int) -> tuple[int, int]:
    """Return how many prompt and reply tokens fit in `budget` (LLaMA-Factory's infer_seqlen)."""
    if reply_len * 2 < budget:  # a short reply is kept whole; the prompt is cut
        most_reply = budget
    elif prompt_len * 2 < budget:  # a short prompt is kept whole; the reply is cut
        most_reply = budget - prompt_len
    else:  # both long: cut both in proportion
        most_reply = int(budget * reply_len / (prompt_len + reply_len))
    reply_len = min(most_reply, reply_len)
    return min(max(budget - reply_len, 0), prompt_len), reply_len


def encode_preference(
    preference: Preference, template: Template | TokenizerTemplate, tokenizer: Any, cutoff_len: int
) -> dict[str, list[int]]:
    """Return {"prompt_ids", "chosen_ids", "rejected_ids"}: the prompt and each reply as SFT lays them out.

    Each reply is its conversation's last, learnt turn (with the reply suffix or EOS); the two share the prompt,
    whose earlier turns are context. Prompt and longer reply are cut to `cutoff_len` as SFT cuts a turn.
    """
    encoded = {}
    for key, reply in (("chosen", preference.chosen), ("rejected", preference.rejected)):
        conversation = Conversation((*preference.prompt, Message("assistant", reply)), preference.source)
        example = encode_example(conversation, template, tokenizer, 10**9, mask_history=True)
        start = next(i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX)
        encoded["prompt_ids"], encoded[f"{key}_ids"] = (
            example["input_ids"][:start],
            example["input_ids"][start:],
        )
    prompt, chosen, rejected = encoded["prompt_ids"], encoded["chosen_ids"], encoded["rejected_ids"]
    prompt_len, reply_len = _budget(len(prompt), max(len(chosen), len(rejected)), cutoff_len)
    return {
        "prompt_ids": prompt[len(prompt) - prompt_len :],  # the question sits at the end of the prompt
        "chosen_ids": chosen[:reply_len],
        "rejected_ids": rejected[:reply_len],
    }


def encode_text(text: str, tokenizer: Any, cutoff_len: int) -> dict[str, list[int]]:
    """Return a pre-training example: the text's ids (with the tokenizer's own BOS) and EOS, every one learnt."""
    ids = list(tokenizer.encode(text, add_special_tokens=True))
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    ids = ids[:cutoff_len]
    return {"input_ids": ids, "labels": list(ids), "attention_mask": [1] * len(ids)}
