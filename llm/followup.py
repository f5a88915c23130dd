"""Follow-up questions: the standalone question a turn of a conversation searches for.

A follow-up leans on the turns before it ("在哪里申请？" after "笔记本电脑多久可以更换？"), so searching it
as written finds an answer to a question nobody asked. Every turn with history gets a candidate
standalone question before retrieval:

- offline (`rule_rewrite`, the extractive backend and every fallback): a turn is a follow-up when it
  points back (它/他/她/其/该/这个/那些…, it/they/this…), is an ellipsis (那…呢？, 还有呢, what about …?)
  or holds almost no content terms of its own; the subject terms of the previous question (itself made
  standalone the same way) replace its pronoun, or lead it. The previous question is searched too: when
  the chunks it finds are about another of its terms (咖啡因 of 人类最早在哪一个时期即使用咖啡因？, whose
  topic is 人类), the reading that carries that term is searched as well and the more answerable kept.
  When neither is answered well but the previous question was, the readings carrying the previous
  question's other names are tried too (新北市 of 营造业在新北市中占了就业人口中的百分之多少？).
  An ellipsis naming another thing of the sort the previous question asked about (那病假呢？ after
  年假有几天？) asks that question of it instead (病假有几天？). A short turn goes on with the passage the
  previous question found (密码是多少？ after 怎么连接访客 Wi-Fi？) when its rewrite finds that passage first.
  A turn that is none of these is a *weak* candidate: it is changed only when the knowledge base barely
  answers it as written.
- with a generating backend (`model_rewrite`): the model rewrites the turn from the recent turns with a
  short fixed prompt, its tokens and time bounded; on error, timeout or an empty reply the offline
  rewriter's candidate is used.

`choose` then lets answerability decide between the question as written and the candidate (see there);
the answer reports the question that was searched, and answerability is that question's. `search_turn`
does all of it for one turn; the service calls it with its knowledge base's search (`app/services.py`),
and the answerer answers from what it returns. One job past ~400 lines: the question a turn searches;
the rules, the model's rewrite and the choice share `Candidate` and `FollowupConfig` and nothing else uses
them apart.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llm.types import ChatModel, GenerationParams, Message
from retrieval import Retrieval, SearchHit
from retrieval.lexical import content_terms, terms, whole_terms, words
from retrieval.text_rules import CJK_CHAR, fold

log = logging.getLogger(__name__)

Method = Literal["as-written", "rules", "model"]
# points-back: a pronoun, an ellipsis or a model's rewrite; short: a turn of at most one content term;
# none: a turn that may stand on its own.
Strength = Literal["points-back", "short", "none"]
# Search terms → how many chunks of the knowledge base hold each (0: none; the fewer, the rarer).
Rarity = Callable[[Sequence[str]], Mapping[str, int]]
# A question → the texts of the chunks its search finds (what an answer to it would cite).
Sources = Callable[[str], Sequence[str]]


class FollowupConfig(BaseModel):
    """How a follow-up question becomes the standalone question that is searched."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    enabled: bool = Field(
        True, description="Rewrite follow-ups before searching; false searches every turn as written."
    )
    model_rewrite: bool = Field(
        True, description="With a generating backend, let the model rewrite the follow-up (else rules only)."
    )
    max_new_tokens: int = Field(64, ge=8, le=512, description="Most tokens of the model's rewrite.")
    timeout_s: float = Field(
        10.0, gt=0, le=120, description="Seconds the model's rewrite may take before the rules' is used."
    )
    max_turns: int = Field(
        3, ge=1, le=20, description="Earlier question/answer pairs the rewrite looks at (the most recent)."
    )
    weak_below: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="A turn without follow-up words is rewritten only when its answerability as written is "
        "below this, and the rewrite's is higher; a pronoun whose reading with the previous question's "
        "topic is below this, when that question's is not, also tries that question's other names.",
    )
    switch_margin: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="A short turn (one content term) is searched rewritten when that answerability beats "
        "the question as written by more than this (or when it goes on with the previous passage, "
        "`continue_margin`).",
    )
    continue_margin: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="A short turn whose rewrite finds first the passage the previous question found first, "
        "when as written it finds another, is searched rewritten unless that answerability is below the "
        "question as written's by more than this (密码是多少？ after 怎么连接访客 Wi-Fi？).",
    )


@dataclass(frozen=True)
class Candidate:
    """A standalone question made from a turn and the turns before it."""

    searched: str  # the question to search and judge
    read: str  # the question the extractive reader reads: the turn as typed, pronouns resolved
    strength: Strength  # how surely the turn leans on the ones before it
    method: Method
    # Other readings of the turn (another subject carried), as sure as this one: every one is searched and
    # the most answerable kept (`choose`).
    alternatives: tuple[Candidate, ...] = ()
    # Readings carrying another name of the previous question (新北市 of 营造业在新北市中占了…): tried only
    # when none of the readings above is answered well (`FollowupConfig.weak_below`).
    fallbacks: tuple[Candidate, ...] = ()
    previous: str = ""  # the previous question, standalone: a short turn may go on reading what it found


@dataclass(frozen=True)
class Searched:
    """The question that was searched, what the search found, and how the question was made."""

    searched: str
    read: str  # the question the extractive reader reads: the turn as typed, pronouns resolved
    found: Retrieval
    method: Method
    rewrite_ms: float = 0.0  # making a follow-up standalone (the model's rewrite, or the rules)
    retrieval_ms: float = 0.0  # the search, or the searches when both questions were tried

    @classmethod
    def as_written(cls, question: str, found: Retrieval) -> Searched:
        """Return `question` searched as typed, with what the search found."""
        return cls(question, question, found, "as-written")


# --- the offline rules ------------------------------------------------------------------------------

# Words that point back to something named earlier (jieba cuts them as words of their own).
# Pronouns always point back; demonstratives may also begin a phrase of their own (这个月, this year).
_PRONOUN_TEXT = "它 它们 它們 他 他们 他們 她 她们 她們 其 it its they them their he she his her him"
_PRONOUNS = frozenset(_PRONOUN_TEXT.split())
_DEMONSTRATIVE_TEXT = """
该 該 此 这 這 这个 這個 那个 那個 这些 這些 那些 这种 這種 那种 那種 这项 這項 这里 這裡 那里 那裡 this that these those
"""
_POINTERS = _PRONOUNS | frozenset(_DEMONSTRATIVE_TEXT.split())
# An ellipsis: 那餐补呢？ 还有呢？ 那么…？ what about …? and …?
_ELLIPSIS = re.compile(
    r"^\s*(?:那么?|那麼|还有|還有|另外|以及|和|跟)|^\s*(?:what about|how about|and)\b|呢\s*[？?]?\s*$",
    re.IGNORECASE,
)
# An ellipsis naming one thing: 那病假呢？ 星河S2 呢？ (not 还有呢？, 其他呢？).
_ELLIPTIC_NAME = re.compile(
    r"^\s*(?:那么|那麼|那)?\s*[，,]?\s*(?!还有|還有|另外|其他|其它)(?P<name>[^，,。？?！!\s][^，,。？?！!]*?)\s*呢\s*[？?]?\s*$"
)
_LEADING = re.compile(r"^\s*(?:那么|那麼|那|还有|還有|另外|以及)\s*[，,]?\s*")
# 它 points back wherever jieba put it (给它, 它会), unlike 他/她 (其他, 他人) and except in 其它 ("other").
_GLUED_IT = re.compile(r"(?<!其)它(?:们|們)?")
_ENGLISH = re.compile(r"[A-Za-z]")
_WORD = re.compile(r"\w")


def rule_rewrite(
    question: str,
    history: Sequence[Message],
    max_turns: int = 3,
    rarity: Rarity | None = None,
    sources: Sources | None = None,
) -> Candidate | None:
    """Return the rules' standalone question for `question` after `history`, or None when nothing to carry.

    `rarity` says how many chunks of the knowledge base hold each search term; with it, a long topic or a
    question without one carries only its rarest terms. `sources` finds the chunks that answer a question;
    with it, a turn that leans on the previous one also gets the reading that carries the term those chunks
    are about, when that is not the previous question's topic (`_about`).
    """
    previous = _previous_questions(history, max_turns)
    if not previous:
        return None
    standalone = _standalone(previous[-1], previous[:-1], rarity)
    ellipsis = _ellipsis(question, standalone)
    if ellipsis and ellipsis.swaps:
        return Candidate(ellipsis.asked, ellipsis.asked, "points-back", "rules")
    subject = _subject(standalone, question, rarity)
    if not subject:
        return None
    read = ellipsis.asked if ellipsis else None
    candidate = replace(_carrying(question, subject, read), previous=standalone)
    candidates = _unsaid(standalone, question)
    if sources is None or candidate.strength == "none" or len(candidates) < 2:
        return candidate
    about = _about(candidates, _unsaid(_topic(standalone), question), sources(standalone), rarity)
    carried = [about] if about and not _narrows(about, subject) else []
    alternatives = tuple(_carrying(question, _as_written(t, standalone), read) for t in carried)
    if candidate.strength != "points-back" or rarity is None:
        return replace(candidate, alternatives=alternatives)
    others = _other_names(candidates, [subject, *carried], rarity)
    fallbacks = tuple(_carrying(question, _as_written(t, standalone), read) for t in others)
    return replace(candidate, alternatives=alternatives, fallbacks=fallbacks)


# A pronoun poorly answered with the previous question's topic tries at most this many of its other names.
MAX_FALLBACKS = 3


def _other_names(candidates: Sequence[str], carried: Sequence[str], rarity: Rarity) -> list[str]:
    """Return the terms of the previous question (`candidates`) a pronoun may name besides those `carried`:
    words of two characters or more, the ones the knowledge base holds least often first (新北市 and 就业人口
    of 营造业在新北市中占了就业人口中的百分之多少？, whose topic is 营造业)."""
    said = fold(" ".join(carried)).casefold()
    others = [t for t in candidates if len(t) >= 2 and t not in said]
    counts = rarity(others) if others else {}
    held = [t for t in others if counts.get(t, 0)]  # a name no chunk holds finds nothing about it
    return sorted(held, key=lambda t: counts[t])[:MAX_FALLBACKS]


def _carrying(question: str, subject: str, read: str | None = None) -> Candidate:
    """Return `question` made standalone by carrying `subject`: in place of its pronoun, or leading it.

    The reader reads the turn with its pronoun resolved, or as typed, or `read` when given (what an
    ellipsis asks of the thing it names, `_ellipsis`)."""
    tokens = terms(question)
    glued = _GLUED_IT.search(
        question
    )  # jieba may glue 它 to its neighbour (给它, 它会, 它市): still a pronoun
    pointer = next((t for t in tokens if t in _PRONOUNS), None) or (glued.group() if glued else None)
    pointer = pointer or next((t for t in tokens if t in _POINTERS), None)
    strength: Strength = "none"
    if pointer in _PRONOUNS or _ELLIPSIS.search(question):
        strength = "points-back"
    elif pointer is not None or len(content_terms(question)) <= 1:
        strength = "short"
    if pointer is not None:
        resolved = _replace_word(question, pointer, subject)
        return Candidate(resolved, resolved, strength, "rules")
    typed = _LEADING.sub("", question) or question
    joiner = " " if _ENGLISH.search(subject[-1:] + typed[:1]) else ""
    return Candidate(f"{subject}{joiner}{typed}", read or question, strength, "rules")


@dataclass(frozen=True)
class _Ellipsis:
    """What an elliptic turn naming one thing (那病假呢？) asks: the previous question, of that thing."""

    asked: str  # 病假有几天？ after 年假有几天？; 餐补是多少？ after 差旅住宿标准是多少？
    swaps: bool  # the thing stands for the previous question's topic, so `asked` is searched too


def _ellipsis(question: str, previous: str) -> _Ellipsis | None:
    """Return what an elliptic turn asks of the thing it names, or None when it names none or the rest of the
    previous question says more than what it asks (那高铁呢？ after 出差可以坐飞机吗？ stands for 飞机).

    The thing swaps for the previous question's topic when the topic is one word or shares a character
    with it (病假 for 年假, 星河S2 for 星河X1): 病假有几天？ is searched and read. Otherwise (餐补 after
    差旅住宿标准是多少？, 上海 after 北京住宿标准多少？) the topic is carried into the search (`_carrying`),
    and what the turn asks of the thing, 餐补是多少？, is only read: the reader knows the kind of value asked.
    """
    named = _ELLIPTIC_NAME.match(question)
    if not named or not content_terms(named.group("name")):
        return None
    name, topic = named.group("name"), _topic(previous)
    at = previous.find(topic) if topic else -1
    if at < 0:
        return None
    before, rest = previous[:at], previous[at + len(topic) :]
    if any(len(t) > 1 for t in content_terms(before + " " + rest)) or fold(name) in fold(previous):
        return None
    swaps = len(whole_terms(content_terms(topic))) == 1 or bool(set(CJK_CHAR.findall(name)) & set(topic))
    return _Ellipsis(f"{before}{name}{rest}", swaps)


def _previous_questions(history: Sequence[Message], max_turns: int) -> list[str]:
    """Return the earlier user questions, oldest first, at most `max_turns` of them."""
    asked = [m.content for m in history if m.role == "user" and m.content.strip()]
    return asked[-max_turns:]


def _standalone(previous: str, before: Sequence[str], rarity: Rarity | None = None) -> str:
    """Return the previous question made standalone from the ones `before` it, when it points back."""
    if not before:
        return previous
    earlier = rule_rewrite(previous, [Message("user", q) for q in before], len(before), rarity)
    return earlier.searched if earlier and earlier.strength == "points-back" else previous


def _unsaid(text: str, question: str) -> list[str]:
    """Return the whole content terms of `text` that `question` does not name itself (nor points with)."""
    own = set(content_terms(question))
    return [t for t in whole_terms(content_terms(text)) if t not in own and t not in _POINTERS]


def _subject(standalone: str, question: str, rarity: Rarity | None = None) -> str:
    """Return what `standalone` (the previous question) was about, less what `question` names."""
    topic = _topic(standalone)
    named = _unsaid(topic, question) if topic else []
    # A topic of one character is a piece of a word jieba did not know (自 of 自在奥义书的成书时间是…).
    if len("".join(named)) >= 2:
        if rarity is None or len(named) <= MAX_TOPIC_TERMS:
            return topic.strip(" \t，,、：:；;")  # as the person wrote it (梅艷芳, not the folded 梅艳芳)
        carried = named
    else:
        carried = _unsaid(standalone, question)
    if not carried:
        return ""
    if rarity is not None and len(carried) > MAX_CARRIED:
        # Without a topic every term of the previous question would drown the follow-up's own: the rarest
        # in the knowledge base name what it was about (淮海中路 and 街道, not 开始 or 彻底).
        counts = rarity(carried)
        rarest = set(sorted(carried, key=lambda t: counts.get(t, 0))[:MAX_CARRIED])
        carried = [t for t in carried if t in rarest]
    english = all(_ENGLISH.search(t) for t in carried)
    return (" " if english else "").join(_as_written(t, standalone) for t in carried)


def _about(
    candidates: Sequence[str], named: Sequence[str], found: Sequence[str], rarity: Rarity | None = None
) -> str:
    """Return the term (of `candidates`, a question's) that the chunks `found` for it are about, or "" when
    that is what its topic (`named`) says already or no term is held by most of them.

    The words before a question's asking word are not always its subject: 人类 of 人类最早在哪一个时期即使用
    咖啡因？, 科学革命 of 科学革命的重要人物伽利略是哪里人？. The chunks its search finds are about 咖啡因 and
    伽利略: the term most of them hold, when the topic's terms are held by fewer; of terms held by as
    many, the one the knowledge base holds least often (`rarity`): 咖啡因, not 一个. A term the knowledge
    base holds more often than half the question's terms names no subject but what the chunks talk about
    (地区 of chunks found for 尤金袋鼠分布在哪些地区？): it is not carried.
    """
    texts = [fold(text).casefold() for text in found]

    def held(term: str) -> int:
        return sum(term in text for text in texts)

    counts = rarity(candidates) if rarity is not None and candidates else {}
    best = max(candidates, key=lambda t: (held(t), -counts.get(t, 0)), default="")
    if not best or 2 * held(best) <= len(texts):
        return ""
    if named and min(held(t) for t in named) >= held(best):
        return ""
    if counts and counts.get(best, 0) > sorted(counts.values())[len(counts) // 2]:
        return ""
    return best


def _narrows(term: str, subject: str) -> bool:
    """Return whether `term` is `subject`, or a name of it without its model: 星河 of 星河S2, whose chunks all
    hold the brand (carrying it alone answered 它保修多久？ with every product's warranty)."""
    folded = fold(subject).casefold()
    return term == folded or bool(re.search(re.escape(term) + r"\s*[a-z0-9]", folded))


def _as_written(term: str, text: str) -> str:
    """Return `term` (folded: Simplified, lower case) as `text` writes it, where folding kept the length."""
    folded = fold(text).casefold()
    at = folded.find(term)
    return text[at : at + len(term)] if at >= 0 and len(folded) == len(text) else term


# Words that end the topic of a question: question words, verbs of being or having, modal verbs and the
# particles that start what is asked. What comes before (笔记本电脑 of 笔记本电脑多久可以更换？, 蔡敏 of
# 蔡敏的出生地在哪里？) is what a pronoun in the next turn points back to; the rest is what that turn
# asked about it, which a follow-up does not repeat. The question is cut at jieba's words, never inside one:
# 多伦多大学位于哪里？ is about 多伦多大学, not 多 (cut at 多大), 萱侬律位于… about 萱侬律, not 萱侬律位.
_TOPIC_END_TEXT = """
的 是 有 在 为 被 由 于 从 向 把 给 曾 曾经 可以 能 能否 会 需要 要 吗 呢 不 没有 并未
what which who whom whose when where why how is are was were does do did can should has have
"""
_TOPIC_END = frozenset(_TOPIC_END_TEXT.split())
_ASKING_WORD = re.compile(
    r"^(?:什么|甚么|哪|谁|多少|多久|多[长大高远]|几|如何|怎|为什么|为何|何时|何处|何地|是否)"
)
# An asking word that picks a kind (哪种症状, 哪一个场馆, 什么方法, 几位): at the start of a question the
# words up to its verb say what is asked for, not what the question is about (潮州市 of
# 哪一个场馆是潮州市体育的主要场馆？). 哪里, 哪些地方 (where) and 什么时候 (when) ask no kind.
_PICKING_WORD = re.compile(r"^(?:哪(?![里儿])|什么|甚么|何种|几|多少)(?!(?:些|个|一个)?(?:时候|地方))")
_MEASURE = re.compile(r"^(?:[^\W\d_a-z]|[一几][^\W\d_a-z])$")  # one character, or 一个, 几种 (folded)
_PUNCTUATION = re.compile(r"^[\W_]+$")
_VERB_YU = re.compile(r"^\w于$")  # 位于, 生于, 属于, 用于: jieba's words, ending the topic as 于 does
_CLAUSE_END = re.compile(r"^[,;:?!、。…]+$")  # folded (NFKC): ， is ","; a hyphen or a dot is part of a name
# Words before a topic: asking (请问, 是 of 什么是…), leading on (那么, 该 of 那么该棱柱…), saying when
# or how often (后来 of 后来又有些凉茶铺…, 一般).
_BEFORE_TEXT = """
请问 是 那么 后来 以前 之前 当时 目前 现在 如今 最早 最初 起初 早期 近年 近年来 曾经 原本 原来 又 一般 通常 首先 最先
please tell me
"""
_BEFORE_TOPIC = frozenset([*_BEFORE_TEXT.split(), *_POINTERS])
# A topic of more terms than MAX_TOPIC_TERMS, or a question without one, carries its MAX_CARRIED terms the
# knowledge base holds least often when it is known (`Rarity`): 淮海中路街道 of 淮海中路街道开始彻底改建,
# not every word of the clause.
MAX_TOPIC_TERMS = 3
MAX_CARRIED = 2


def _topic(question: str) -> str:
    """Return the words of `question` before its first question word or particle (its topic), or "".

    A question that opens by asking (为什么飞机的翼尖…, 什么是奥义书？) has its topic after the asking
    words; one that opens with a clause of time or place (天启三年后，史继偕为什么…; 在中国，假苹婆…) in the
    clause after it.
    """
    pieces = words(question)
    folded = "".join(pieces)
    # In the person's own script where folding kept the length (梅艷芳, not the folded 梅艳芳).
    text = question if len(folded) == len(question) else folded
    at = [0]
    for word in pieces:
        at.append(at[-1] + len(word))
    start, skipping, resume = 0, False, 0
    for i, word in enumerate(pieces):
        if i < resume:
            continue  # the kind asked for (种症状为 of 哪种症状为…)
        key = word.strip().casefold()
        if _CLAUSE_END.match(key):
            if not skipping and i > start and (0 < resume == start or not _WORD.search(folded[at[i] :])):
                return text[at[start] : at[i]].strip()  # the last clause, all topic (…开始彻底改建？)
            start, skipping = i + 1, False  # a clause of time or place: the topic is in the next one
            continue
        asking = bool(_ASKING_WORD.match(key))
        if skipping:
            continue
        if start == i and asking and _PICKING_WORD.match("".join(pieces[i : i + 3])):
            start = resume = _after_kind(pieces, i + 1)
        elif start == i and (not key or _PUNCTUATION.match(key) or key in _BEFORE_TOPIC or asking):
            start = i + 1  # still asking or leading on: the topic starts after this word
        elif key in _TOPIC_END or asking or _VERB_YU.match(key):
            if len(_WORD.findall(folded[at[start] : at[i]])) >= 2:
                return text[at[start] : at[i]].strip()
            if i > start:
                continue  # one character is no topic but part of a name: 在 of 自在奥义书
            skipping = True  # a clause opening with 在, 有…: a place or a condition, not the topic
    return "" if skipping else text[at[start] :].strip()


def _after_kind(pieces: Sequence[str], at: int) -> int:
    """Return the index of the word after the kind that an asking word picks, starting at `pieces[at]`: its
    measure words (一 个 种, 一个), one word naming the kind (场馆), and a verb or 的 after it (是, 为)."""

    def key(i: int) -> str:
        return pieces[i].strip().casefold() if i < len(pieces) else ""

    while _MEASURE.match(key(at)) and key(at) not in _TOPIC_END:
        at += 1
    if _WORD.match(key(at)) and key(at) not in _TOPIC_END and not _ASKING_WORD.match(key(at)):
        at += 1
    if key(at) in _TOPIC_END or _VERB_YU.match(key(at)):
        at += 1
    return at


def _replace_word(question: str, word: str, subject: str) -> str:
    """Return `question` with its first `word` (a pronoun; every 它) replaced by `subject`."""
    if _ENGLISH.search(word):
        return re.sub(rf"\b{re.escape(word)}\b", subject, question, count=1, flags=re.IGNORECASE)
    if word.startswith("它"):
        return _GLUED_IT.sub(subject, question)  # every 它 (哪种它是以它来…), not the 它 of 其它
    # `word` is folded (这个); the question may write it in Traditional script (這個).
    folded = fold(question).casefold()
    at = folded.find(word) if len(folded) == len(question) else question.find(word)
    return question[:at] + subject + question[at + len(word) :] if at >= 0 else question


# --- the generating model's rewrite -------------------------------------------------------------------

REWRITE_SYSTEM = (
    "You rewrite the user's last question into one standalone question that can be searched without the "
    "conversation: resolve pronouns and omissions from the earlier turns, keep the user's language, add "
    "nothing else. If the question already stands on its own, repeat it unchanged. Reply with the question "
    "only.\n把用户最后的问题改写成一个脱离对话也能理解的完整问题：补全代词和省略的内容，保持用户的语言，"
    "不要添加别的内容；问题本身已经完整时原样重复。只输出问题。"
)
_REWRITE_TURN_CHARS = (
    400  # each earlier turn is cut to this in the rewrite prompt: its subject is near the start
)
_PREFIX = re.compile(r"^\s*(?:standalone question|question|问题|改写后?的?问题)\s*[:：]\s*", re.IGNORECASE)

# Rewrites run on these threads, so a slow model is left behind after `timeout_s` (its reply discarded).
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="kbqa-rewrite")


def rewrite_messages(question: str, history: Sequence[Message], max_turns: int = 3) -> list[Message]:
    """Return the fixed rewrite prompt: the instruction, the recent turns, then the question."""
    recent = [m for m in history if m.role in ("user", "assistant")][-2 * max_turns :]
    lines = [
        f"{'User' if m.role == 'user' else 'Assistant'}: {' '.join(m.content.split())[:_REWRITE_TURN_CHARS]}"
        for m in recent
    ]
    conversation = "\n".join(lines)
    return [
        Message("system", REWRITE_SYSTEM),
        Message("user", f"Conversation / 对话:\n{conversation}\n\nLast question / 最后的问题: {question}"),
    ]


def model_rewrite(
    model: ChatModel, question: str, history: Sequence[Message], config: FollowupConfig
) -> str | None:
    """Return the model's standalone question, or None on an error, a timeout or an unusable reply."""
    params = GenerationParams(max_new_tokens=config.max_new_tokens, temperature=0.0)
    future = _EXECUTOR.submit(model.generate, rewrite_messages(question, history, config.max_turns), params)
    try:
        generation = future.result(timeout=config.timeout_s)
    except concurrent.futures.TimeoutError:
        future.cancel()
        log.warning("the model's follow-up rewrite timed out; the rules' rewrite is used")
        return None
    except Exception as error:  # any backend failure: the offline rewriter still answers
        log.warning(
            "the model's follow-up rewrite failed; the rules' rewrite is used", extra={"error": repr(error)}
        )
        return None
    text = _PREFIX.sub("", generation.text.strip().splitlines()[0] if generation.text.strip() else "")
    text = text.strip().strip("\"“”'")
    # An empty, truncated or rambling reply is no question to search.
    if not text or generation.finish_reason == "length" or len(text) > 4 * len(question) + 200:
        return None
    return text


# --- choosing what is searched ---------------------------------------------------------------------


def search_turn(
    question: str,
    history: Sequence[Message],
    search: Callable[[str], Retrieval],
    config: FollowupConfig,
    model: ChatModel | None = None,
    rarity: Rarity | None = None,
) -> Searched:
    """Return the question searched for a turn (a follow-up made standalone, or as typed) with its retrieval
    and the milliseconds the rewrite and the search took.

    `search` finds the chunks of one question; `model`, a generating backend's, rewrites the follow-up
    first when `config.model_rewrite` (the rules otherwise, or when it fails); `rarity` is the knowledge
    base's count of chunks holding each term (see `rule_rewrite`).
    """
    start = time.perf_counter()
    if not history or not config.enabled:
        return replace(Searched.as_written(question, search(question)), retrieval_ms=_ms_since(start))
    search = functools.cache(search)  # the rules and the choice may search the same question twice
    candidate = None
    if model is not None and config.model_rewrite:
        rewritten = model_rewrite(model, question, history, config)
        candidate = Candidate(rewritten, rewritten, "points-back", "model") if rewritten else None
    if candidate is None:  # the extractive backend, or the model failed: the rules

        def sources(asked: str) -> list[str]:
            return [hit.text for hit in search(asked).hits]

        candidate = rule_rewrite(question, history, config.max_turns, rarity, sources)
    rewritten_at = time.perf_counter()
    searched = choose(question, candidate, search, config)
    rewrite_ms = (rewritten_at - start) * 1000
    return replace(searched, rewrite_ms=rewrite_ms, retrieval_ms=_ms_since(rewritten_at))


def _ms_since(start: float) -> float:
    """Return the milliseconds since `start` (a `time.perf_counter()`)."""
    return (time.perf_counter() - start) * 1000


def choose(
    question: str,
    candidate: Candidate | None,
    search: Callable[[str], Retrieval],
    config: FollowupConfig,
) -> Searched:
    """Return the question to search, as written or rewritten, with its retrieval.

    A turn that points back (a pronoun, an ellipsis, a model's rewrite) searches the rewrite; a short one
    (one content term, or a demonstrative: 这个 may point back or start 这个月) searches the rewrite when
    that is clearly more answerable (`switch_margin`), or when it goes on with the previous question's
    passage (`_goes_on`, `continue_margin`), then read rewritten too; any other is tried rewritten only
    when it is answered poorly as written (`weak_below`), and kept only when more answerable: a question
    that stands on its own is not changed by the history. Without a calibration only a turn that points
    back, or a short one going on, is rewritten. A turn that points back searches its readings carrying
    the previous question's other names (`Candidate.fallbacks`) only when the best reading is answered
    poorly and the previous question well (`weak_below`), and keeps the most answerable.
    """
    if candidate is None or candidate.searched.strip() == question.strip():
        return Searched.as_written(question, search(question))
    if candidate.strength == "short":
        written = search(question)
        tried = _searched_readings(candidate, search)
        reading, rewritten = _most_answerable(tried)
        if _answerability(rewritten) > _answerability(written) + config.switch_margin:
            return Searched(reading.searched, reading.read, rewritten, reading.method)
        floor = _answerability(written) - config.continue_margin
        before = search(candidate.previous).hits if candidate.previous else []
        for reading, found in tried:
            if _answerability(found) >= floor and _goes_on(question, before, found, written):
                return Searched(reading.searched, reading.searched, found, reading.method)
        return Searched.as_written(question, written)
    if candidate.strength == "points-back":
        # As written it names nothing (它分布在哪些地区？): question words alone match many chunks well,
        # so its answerability says nothing, and a follow-up the documents cannot answer must be refused.
        reading, rewritten = _most_answerable(_searched_readings(candidate, search))
        # The previous question's other names are worth trying only when it was answered well: after one
        # the knowledge base cannot answer they found words of it elsewhere (地区, 公司) and made
        # follow-ups about an article it does not hold look answerable (CMRC: 0.87 refused, 0.65 then).
        poor = rewritten.answerability is not None and rewritten.answerability < config.weak_below
        if candidate.fallbacks and poor and _answerability(search(candidate.previous)) >= config.weak_below:
            fallbacks = [(other, search(other.searched)) for other in candidate.fallbacks]
            reading, rewritten = _most_answerable([(reading, rewritten), *fallbacks])
        return Searched(reading.searched, reading.read, rewritten, reading.method)
    written = search(question)
    if written.answerability is None or written.answerability >= config.weak_below:
        return Searched.as_written(question, written)
    rewritten = search(candidate.searched)
    if rewritten.answerability is not None and rewritten.answerability > written.answerability:
        return Searched(candidate.searched, candidate.read, rewritten, candidate.method)
    return Searched.as_written(question, written)


def _goes_on(question: str, before: Sequence[SearchHit], found: Retrieval, written: Retrieval) -> bool:
    """Return whether a reading finds first the chunk the previous question found first (`before`), which
    holds the turn's own terms, while the turn as written finds another first: the short turn then goes on
    with what was being read (密码是多少？ after 怎么连接访客 Wi-Fi？ asks the guest Wi-Fi's password, not the
    password rules that 密码是多少？ alone finds first). A new topic (报销款多久到账？ after a question about
    laptops) is not in that chunk, though carrying the old topic finds it."""
    if not before or not found.hits or not written.hits:
        return False
    top = found.hits[0]
    own = content_terms(question)
    held = fold(top.text).casefold()
    return (
        before[0].chunk_id == top.chunk_id != written.hits[0].chunk_id
        and bool(own)
        and all(t in held for t in own)
    )


def _searched_readings(
    candidate: Candidate, search: Callable[[str], Retrieval]
) -> list[tuple[Candidate, Retrieval]]:
    """Return each reading of a turn (`candidate`, then its alternatives) with what its search found."""
    return [(reading, search(reading.searched)) for reading in (candidate, *candidate.alternatives)]


def _most_answerable(tried: Sequence[tuple[Candidate, Retrieval]]) -> tuple[Candidate, Retrieval]:
    """Return the reading whose search is the most answerable, the first on a tie, with what it found."""
    return max(tried, key=lambda pair: _answerability(pair[1]))


def _answerability(found: Retrieval) -> float:
    """Return a search's answerability, 0 when unknown (no calibration)."""
    return found.answerability or 0.0
