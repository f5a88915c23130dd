"""The offline answerer: no model generates; the answer is the retrieved sentences that best match the question.

Each chunk is cut into sentences (Chinese 。！？；and line ends, English . ! ? before a new sentence; a
markdown table row becomes "header: cell" pairs; a sentence longer than `max_sentence_chars` is cut at
its commas). Every sentence is embedded in one batch and scored by its cosine with the question plus a
small lexical bonus for the question's words (English) and character bigrams (Chinese) it contains.
The best sentence leads the answer; up to `max_sentences - 1` others that score close to it follow in
the order of the source (hit rank, then position), each with the citation [n] of its hit.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from retrieval import Embedder, SearchHit

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_CHAR = re.compile(f"[{_CJK}]")
_CJK_RUN = re.compile(f"[{_CJK}]+")
_WORD = re.compile(r"[a-z0-9]+(?:['.][a-z0-9]+)*")
_HEADING = re.compile(r"^\s{0,3}#{1,6}(\s|$)")
_LIST_MARK = re.compile(
    r"^\s*(?:[-*+•·]\s+|\d{1,3}[.)]\s+|\d{1,3}、|[（(][一二三四五六七八九十\d]{1,3}[)）]|[一二三四五六七八九十]{1,3}、)"
)
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
# A sentence ends at Chinese 。！？；(plus closing quotes), or at English . ! ? followed by a space and
# something other than a lowercase letter, so "e.g. the" and "3.5" stay whole.
_SENTENCE = re.compile(
    r"\S.*?(?:[。！？；]+[”’」』）)\"']*|[.!?]+[”’\"')]*(?=\s+[^\sa-z])|$)",
)
_CLAUSE_END = re.compile(r"(?<=[，,、：:；;])")
_EMPHASIS = re.compile(r"\*\*|__|`")
# English words that say nothing about what is asked.
_STOPWORD_TEXT = (
    "a an the is are was were be been do does did to of in on at for by with from and or not can could "
    "i we you my our your it its this that these those what which who whom when where why how much many "
    "long should would will shall may must have has had there their they me us if as into than then"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())

# Chinese characters of question words and grammar: a bigram made only of them (需要, 多久, 什么, 可以)
# says nothing about what is asked, while one with a content character (到账, 会议) does.
_FUNCTION_CHARS = frozenset(
    "的了吗呢吧啊是在有和与及或要需多少久什么怎如何几哪谁可以能会这那个些一我你他她们该应请问"
)


_NUMBER = r"(?:\d+(?:\.\d+)?|[一二两三四五六七八九十百千万半]+)"
_ANSWER_TYPES = [
    (
        re.compile(
            r"多久|多长时间|几天|几个?(?:小时|月|周|星期|工作日)|什么时候|何时|how long|how many days|when",
            re.I,
        ),
        re.compile(
            _NUMBER
            + r"\s*(?:个)?\s*(?:工作日|天|日|小时|周|星期|个?月|年|分钟|(?:working |business )?days?|hours?|weeks?|months?|years?)",
            re.I,
        ),
    ),
    (
        re.compile(r"多少钱|多少元|费用是多少|标准是多少|how much", re.I),
        re.compile(_NUMBER + r"\s*(?:元|块|万元|美元|RMB|CNY|USD)|[¥$￥]\s*\d", re.I),
    ),
    (re.compile(r"几|多少|how many", re.I), re.compile(_NUMBER)),
]


class ExtractiveConfig(BaseModel):
    """How the extractive answerer picks and writes sentences."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    max_sentences: int = Field(3, ge=1, le=20, description="Most sentences in an answer.")
    min_relative_score: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Keep a further sentence only if its score lies at least this far from the median "
        "sentence's score towards the best one's (1 keeps only the best sentence). Scale-free, so it "
        "means the same with any embedding model.",
    )
    min_score: float = Field(
        -1.0,
        ge=-1.0,
        le=2.0,
        description="Answer nothing when the best sentence scores below this (cosine plus lexical bonus). "
        "Model-specific: e5 models score unrelated sentences around 0.8-0.88.",
    )
    lexical_weight: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Weight of the share of the question's words/bigrams a sentence contains, added to "
        "its cosine; it breaks the near-ties that embeddings leave between sentences of one topic.",
    )
    answer_type_weight: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description="Added to a sentence that holds the kind of value the question asks for: a duration for "
        "多久/几天/how long, an amount of money for 多少钱/how much, a number for 几/多少/how many.",
    )
    max_sentence_chars: int = Field(
        240, ge=20, description="Longer sentences are cut at commas (or hard) into pieces of at most this."
    )


@dataclass(frozen=True)
class Extract:
    """An extractive answer: sentences each followed by its citation, and the hits they came from."""

    text: str  # e.g. "差旅费用应在出差结束后三十天内提交报销申请。[1]"
    cited: list[int]  # 1-based positions of the hits used, in order of first citation


@dataclass(frozen=True)
class _Sentence:
    hit: int  # 0-based rank of the hit it came from
    position: int  # order within the hit
    text: str


class ExtractiveReader:
    """Answers a question with the best-matching sentences of the retrieved chunks, cited."""

    def __init__(self, embedder: Embedder, config: ExtractiveConfig | None = None) -> None:
        self.embedder = embedder
        self.config = config or ExtractiveConfig()

    def read(self, question: str, hits: Sequence[SearchHit]) -> Extract | None:
        """Return the cited answer sentences, or None when the hits hold no sentence worth answering with."""
        sentences = self._candidates(hits)
        if not sentences or not question.strip():
            return None
        scores = self._scores(question, sentences)
        order = sorted(
            range(len(sentences)), key=lambda i: (-scores[i], sentences[i].hit, sentences[i].position)
        )
        best = order[0]
        if scores[best] < self.config.min_score:
            return None
        # How far a sentence lies from the median towards the best: a scale-free closeness to the best.
        baseline = statistics.median(scores)
        lead = scores[best] - baseline
        close = [
            i
            for i in order[1:]
            if lead > 0 and (scores[i] - baseline) / lead >= self.config.min_relative_score
        ]
        others = close[: self.config.max_sentences - 1]
        chosen = [sentences[best]] + sorted((sentences[i] for i in others), key=lambda s: (s.hit, s.position))
        return _write(chosen)

    def _candidates(self, hits: Sequence[SearchHit]) -> list[_Sentence]:
        seen: set[str] = set()
        sentences: list[_Sentence] = []
        for rank, hit in enumerate(hits):
            for position, text in enumerate(split_sentences(hit.text, self.config.max_sentence_chars)):
                key = "".join(text.split())
                if key not in seen:  # a sentence repeated across chunks is cited from its best hit
                    seen.add(key)
                    sentences.append(_Sentence(rank, position, text))
        return sentences

    def _scores(self, question: str, sentences: list[_Sentence]) -> list[float]:
        vectors = self.embedder.embed_documents([s.text for s in sentences])
        cosines = (vectors @ self.embedder.embed_query(question)).tolist()
        asked = _terms(question)
        shares = [len(asked & _terms(s.text)) / len(asked) if asked else 0.0 for s in sentences]
        wanted = answer_type(question)
        typed = [1.0 if wanted and wanted.search(s.text) else 0.0 for s in sentences]
        return [
            cosine + self.config.lexical_weight * share + self.config.answer_type_weight * has_type
            for cosine, share, has_type in zip(cosines, shares, typed, strict=True)
        ]


def answer_type(question: str) -> re.Pattern[str] | None:
    """Return a pattern for the kind of value `question` asks for (a duration, money, a count), or None.

    Classic answer-type matching: embeddings of a small model rank "who to ask about reimbursements"
    close to "reimbursement takes 3 working days" for 报销需要多久到账; the sentence holding a duration wins.
    """
    for asks, holds in _ANSWER_TYPES:
        if asks.search(question):
            return holds
    return None


def split_sentences(text: str, max_chars: int = 240) -> list[str]:
    """Return the readable sentences of a chunk, in order, without headings, list marks and empty fragments."""
    sentences: list[str] = []
    for line in _lines(text):
        for match in _SENTENCE.finditer(line):
            sentence = match.group().strip()
            if any(c.isalnum() for c in sentence):
                sentences.extend(_pieces(sentence, max_chars))
    return sentences


def _lines(text: str) -> Iterator[str]:
    """Yield the text's logical lines: headings dropped, list marks removed, wrapped English lines joined."""
    header: list[str] | None = None
    pending = ""
    for raw in _EMPHASIS.sub("", text).splitlines():
        line = raw.strip()
        if line.startswith("|") or _TABLE_RULE.match(line):
            if pending:
                yield pending
                pending = ""
            if _TABLE_RULE.match(line):
                continue
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if header is None:
                header = cells
                continue
            yield _table_row(header, cells)
            continue
        header = None
        if not line or _HEADING.match(line):
            if pending:
                yield pending
            pending = ""
            continue
        line = _LIST_MARK.sub("", line, count=1)
        if pending and _continues(pending, raw):
            pending = f"{pending} {line}"
        else:
            if pending:
                yield pending
            pending = line
    if pending:
        yield pending


def _continues(previous: str, raw_next: str) -> bool:
    """Return whether a line carries on the previous one's English sentence (a hard-wrapped paragraph)."""
    following = raw_next.strip()
    return (
        re.search(r"[A-Za-z0-9,;:(\-–]$", previous) is not None
        and re.match(r"[A-Za-z0-9(]", following) is not None
        and not _LIST_MARK.match(following)
    )


def _table_row(header: list[str], cells: list[str]) -> str:
    """Return a table row as "header: cell" pairs, so the row reads on its own."""
    separator = "，" if _CJK_CHAR.search("".join(header + cells)) else ", "
    colon = "：" if separator == "，" else ": "
    pairs = [
        f"{name}{colon}{cell}" if name else cell for name, cell in zip(header, cells, strict=False) if cell
    ]
    return separator.join(pairs)


def _pieces(sentence: str, max_chars: int) -> list[str]:
    """Return the sentence, or pieces of at most `max_chars` cut at its commas when it is longer."""
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    current = ""
    for clause in _CLAUSE_END.split(sentence):
        while len(clause) > max_chars:  # no comma for too long: cut hard
            if current:
                pieces.append(current)
                current = ""
            pieces.append(clause[:max_chars])
            clause = clause[max_chars:]
        if len(current) + len(clause) > max_chars:
            pieces.append(current)
            current = ""
        current += clause
    if current:
        pieces.append(current)
    # A piece that stops mid-sentence says so instead of ending on a comma.
    return [p.strip().rstrip("，,、：:；;") + "…" for p in pieces[:-1]] + [pieces[-1].strip()]


def _terms(text: str) -> set[str]:
    """Return the text's content words (English, lowercased, plural s dropped) and Chinese character bigrams."""
    lowered = text.lower()
    terms = {_singular(w) for w in _WORD.findall(lowered) if w not in _STOPWORDS}
    for run in _CJK_RUN.findall(lowered):
        grams = {run} if len(run) == 1 else {run[i : i + 2] for i in range(len(run) - 1)}
        terms.update(g for g in grams if not all(c in _FUNCTION_CHARS for c in g))
    return terms


def _singular(word: str) -> str:
    """Return the word without a plural s, so "claims" matches "claim"."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _write(sentences: list[_Sentence]) -> Extract:
    """Return the answer text with one citation after each sentence, and the hits cited."""
    parts: list[str] = []
    for sentence in sentences:
        # After Chinese punctuation the marker follows directly and no space separates sentences.
        wide = not sentence.text[-1].isascii()
        parts.append(sentence.text + ("" if wide else " ") + f"[{sentence.hit + 1}]" + ("" if wide else " "))
    return Extract("".join(parts).rstrip(), list(dict.fromkeys(s.hit + 1 for s in sentences)))
