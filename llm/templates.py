"""Chat templates: how a conversation becomes token ids, and which tokens end the reply.

A template is a list of slots per role. A slot is text (formatted with the message's `content`) or a
`Token` (one special token by name). Each text slot is encoded on its own, without special tokens added,
which is how ChatGLM3's own tokenizer builds its prompts (`build_chat_input`), so the ids match the
model's training exactly. The same templates serve inference (`encode_prompt`) and fine-tuning
(`encode_turns`, which keeps the prompt and reply ids of each exchange apart so the prompt can be
masked), so an adapter is trained on the layout it is served with.

`hf` renders the tokenizer's own chat template (Qwen2.5, GLM-4 `-hf`, Llama-3 ship one); `auto` picks
`chatglm3` for a tokenizer with ChatGLM3's special tokens, else `hf` when the tokenizer has a chat
template, else `default`. The ChatGLM3 check comes first because its segment-wise ids differ from what
a Jinja template renders and then encodes in one piece.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from llm.types import Message, Role


@dataclass(frozen=True)
class Token:
    """A special token, written into the ids by name, never by encoding its text."""

    name: str


Slot = str | Token


@dataclass(frozen=True)
class Template:
    """A named chat layout: the slots of each role, the generation prompt, and the stop tokens."""

    name: str
    prefix: tuple[Slot, ...]
    roles: dict[Role, tuple[Slot, ...]]
    generation_prompt: tuple[Slot, ...]
    stop_tokens: tuple[str, ...] = ()  # special tokens that end a reply, besides the tokenizer's EOS
    reply_suffix: tuple[Slot, ...] = ()  # what closes an assistant reply in training data (EOS, end-of-turn)
    strip_reply_prefix: str = ""  # characters the model emits before the reply proper (ChatGLM's "\n")
    default_system: str = ""
    needs_tokens: tuple[str, ...] = field(default=())  # special tokens a tokenizer must have to use this
    system_in_user: bool = False  # the system text opens the first user turn (LLaMA-2's <<SYS>> block)

    def encode_prompt(self, tokenizer: Any, messages: Sequence[Message]) -> list[int]:
        """Return the ids of `messages` followed by the generation prompt."""
        ids = self._encode(tokenizer, self.prefix, "")
        for message in self._with_system(messages):
            ids += self._encode(tokenizer, self.roles[message.role], message.content)
        return ids + self._encode(tokenizer, self.generation_prompt, "")

    def encode_turns(self, tokenizer: Any, messages: Sequence[Message]) -> list[tuple[list[int], list[int]]]:
        """Return (prompt ids, reply ids) for each assistant reply in `messages`, for training.

        The prompt ids of a turn hold everything since the previous reply (the prefix and system text in
        the first), ending with the generation prompt; the reply ids hold the reply and its suffix. A suffix
        that history does not show after each reply (ChatGLM's EOS, which ends the whole conversation; the
        next role token ends a reply) closes the last reply only, so earlier turns are laid out as
        `encode_prompt` lays out history.
        """
        turns: list[tuple[list[int], list[int]]] = []
        pending = self._encode(tokenizer, self.prefix, "")
        suffix = self._encode(tokenizer, self.reply_suffix, "")
        for message in self._with_system(messages):
            if message.role != "assistant":
                pending += self._encode(tokenizer, self.roles[message.role], message.content)
                continue
            prompt = pending + self._encode(tokenizer, self.generation_prompt, "")
            reply = self._encode(tokenizer, self._reply_slots(), message.content)
            turns.append((prompt, reply + suffix if self._suffix_in_history() else reply))
            pending = []
        if turns and not self._suffix_in_history():
            turns[-1] = (turns[-1][0], turns[-1][1] + suffix)
        return turns

    def _suffix_in_history(self) -> bool:
        def text(slots: Sequence[Slot]) -> str:
            return "".join(slot.name if isinstance(slot, Token) else slot for slot in slots)

        return text(self.roles["assistant"]).endswith(text(self.reply_suffix))

    def _reply_slots(self) -> tuple[Slot, ...]:
        # Where the assistant's slots begin with the generation prompt (ChatGLM's role token), the reply is
        # the rest, segment by segment as in history and in ChatGLM3's own training data (build_single_message
        # encodes "\n" and the content apart); otherwise the reply text as the model emits it.
        assistant, generation = self.roles["assistant"], self.generation_prompt
        if assistant[: len(generation)] == generation:
            return assistant[len(generation) :]
        return (self.strip_reply_prefix + "{content}",)

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Return the ids that end a reply: the tokenizer's EOS and the template's stop tokens."""
        ids = [_token_id(tokenizer, name) for name in self.stop_tokens]
        if tokenizer.eos_token_id is not None:
            ids.insert(0, tokenizer.eos_token_id)
        return list(dict.fromkeys(ids))

    def fits(self, tokenizer: Any) -> bool:
        """Return whether `tokenizer` has every special token this template writes."""
        vocab = tokenizer.get_vocab()
        return all(name in vocab for name in self.needs_tokens)

    def _with_system(self, messages: Sequence[Message]) -> list[Message]:
        if self.default_system and not any(m.role == "system" for m in messages):
            messages = [Message("system", self.default_system), *messages]
        if not self.system_in_user:
            return list(messages)
        fused: list[Message] = []
        system = ""
        for message in messages:
            if message.role == "system":
                system += "".join(
                    str(slot).replace("{content}", message.content) for slot in self.roles["system"]
                )
            elif message.role == "user" and system:
                fused.append(Message("user", system + message.content))
                system = ""
            else:
                fused.append(message)
        return fused

    @staticmethod
    def _encode(tokenizer: Any, slots: Sequence[Slot], content: str) -> list[int]:
        ids: list[int] = []
        for slot in slots:
            if isinstance(slot, Token):
                ids.append(_token_id(tokenizer, slot.name))
            elif text := slot.replace("{content}", content):
                ids += tokenizer.encode(text, add_special_tokens=False)
        return ids


@dataclass(frozen=True)
class TokenizerTemplate:
    """The tokenizer's own Jinja chat template (`apply_chat_template`), stopping at its EOS."""

    name: str = "hf"
    stop_tokens: tuple[str, ...] = ()
    strip_reply_prefix: str = ""

    def encode_prompt(self, tokenizer: Any, messages: Sequence[Message]) -> list[int]:
        """Return the ids of `messages` followed by the generation prompt."""
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        encoded = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(encoded)

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Return the ids that end a reply: EOS (one or several, from the generation config too)."""
        eos = tokenizer.eos_token_id
        return [eos] if eos is not None else []

    def fits(self, tokenizer: Any) -> bool:
        """Return whether the tokenizer has a chat template."""
        return bool(getattr(tokenizer, "chat_template", None))


def _token_id(tokenizer: Any, name: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(name)
    if token_id is None or token_id == tokenizer.unk_token_id and name != tokenizer.unk_token:
        raise ValueError(f"the tokenizer has no special token {name!r}")
    return token_id


def _glm(role: str) -> tuple[Slot, ...]:
    return (Token(f"<|{role}|>"), "\n", "{content}")


TEMPLATES: dict[str, Template | TokenizerTemplate] = {
    # ChatGLM3-6B: [gMASK]sop <|role|> "\n" content …, ids 64790/64792 and 64794-64797 in its tokenizer.
    "chatglm3": Template(
        name="chatglm3",
        prefix=(Token("[gMASK]"), Token("sop")),
        roles={role: _glm(role) for role in ("system", "user", "assistant", "observation")},
        generation_prompt=(Token("<|assistant|>"),),
        stop_tokens=("<|user|>", "<|observation|>"),
        reply_suffix=(Token("</s>"),),
        strip_reply_prefix="\n",
        needs_tokens=("[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
    ),
    # GLM-4-9B-chat: the same roles with [gMASK]<sop> and <|endoftext|>.
    "glm4": Template(
        name="glm4",
        prefix=(Token("[gMASK]"), Token("<sop>")),
        roles={role: _glm(role) for role in ("system", "user", "assistant", "observation")},
        generation_prompt=(Token("<|assistant|>"),),
        stop_tokens=("<|user|>", "<|observation|>"),
        reply_suffix=(Token("<|endoftext|>"),),
        strip_reply_prefix="\n",
        needs_tokens=("[gMASK]", "<sop>", "<|user|>", "<|assistant|>"),
    ),
    # Qwen and other ChatML models.
    "chatml": Template(
        name="chatml",
        prefix=(),
        roles={
            "system": ("<|im_start|>system\n{content}<|im_end|>\n",),
            "user": ("<|im_start|>user\n{content}<|im_end|>\n",),
            "assistant": ("<|im_start|>assistant\n{content}<|im_end|>\n",),
            "observation": ("<|im_start|>tool\n{content}<|im_end|>\n",),
        },
        generation_prompt=("<|im_start|>assistant\n",),
        stop_tokens=("<|im_end|>",),
        reply_suffix=(Token("<|im_end|>"), "\n"),
        needs_tokens=("<|im_start|>", "<|im_end|>"),
    ),
    "llama3": Template(
        name="llama3",
        prefix=(Token("<|begin_of_text|>"),),
        roles={
            role: (f"<|start_header_id|>{header}<|end_header_id|>\n\n{{content}}<|eot_id|>",)
            for role, header in (
                ("system", "system"),
                ("user", "user"),
                ("assistant", "assistant"),
                ("observation", "ipython"),
            )
        },
        generation_prompt=("<|start_header_id|>assistant<|end_header_id|>\n\n",),
        stop_tokens=("<|eot_id|>",),
        reply_suffix=(Token("<|eot_id|>"),),
        needs_tokens=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    # Plain text for base models without a chat format.
    "default": Template(
        name="default",
        prefix=(),
        roles={
            "system": ("System: {content}\n",),
            "user": ("Human: {content}\n",),
            "assistant": ("Assistant: {content}\n",),
            "observation": ("Observation: {content}\n",),
        },
        generation_prompt=("Assistant:",),
        strip_reply_prefix=" ",
    ),
    # LLaMA-2 chat as LLaMA-Factory and DB-GPT-Hub lay it out: the system block opens the first user turn.
    # (Their BOS before each user turn and EOS after each reply are left out of the history; training ends
    # the last reply with EOS, and serving stops there.)
    "llama2": Template(
        name="llama2",
        prefix=(),
        roles={
            "system": ("<<SYS>>\n{content}\n<</SYS>>\n\n",),
            "user": ("[INST] {content} [/INST]",),
            "assistant": ("{content}",),
            "observation": ("[INST] {content} [/INST]",),
        },
        generation_prompt=(),
        system_in_user=True,
    ),
    "hf": TokenizerTemplate(),
}
# LLaMA-Factory's `qwen`: ChatML with its default system prompt.
TEMPLATES["qwen"] = replace(TEMPLATES["chatml"], name="qwen", default_system="You are a helpful assistant.")


def check_template_name(name: str) -> str:
    """Return `name` when it names a template (or `auto`); ValueError otherwise, before any model loads."""
    if name != "auto" and name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; choose auto or one of {', '.join(TEMPLATES)}")
    return name


def template_for(name: str, tokenizer: Any) -> Template | TokenizerTemplate:
    """Return the named template (`auto` picks one for `tokenizer`); ValueError for a name not known."""
    name = check_template_name(name)
    if name == "auto":
        for candidate in ("chatglm3", "hf"):
            if TEMPLATES[candidate].fits(tokenizer):
                return TEMPLATES[candidate]
        return TEMPLATES["default"]
    template = TEMPLATES[name]
    if not template.fits(tokenizer):
        raise ValueError(f"the tokenizer lacks the special tokens of the {name!r} chat template")
    return template
