"""The offline answerer: no model generates; the answer is the retrieved sentences that best match the question.

Each chunk is cut into sentences by the shared rules (`retrieval.text_rules.split_sentences`; a sentence
longer than `max_sentence_chars` is cut at its commas). Sentences not seen before are embedded in one
batch (their vectors are kept for later questions). With the embedding model's calibration, a logistic
regression learned on CMRC 2018 gives each sentence the probability that it holds the answer, from its
cosine with the question, its coverage of the question's rarer terms, the kind of value it holds
(`llm/answer_types.py`), its place and its chunk's rank; without one, a sentence scores its cosine plus
small bonuses for shared words and the kind of value asked for (weights in `llm.config.ExtractiveConfig`).
The best sentence leads the answer; others follow, in the order of the source (hit rank, then position) and each with the
citation [n] of its hit, only when the best is not clearly the answer (`confident`) and they come close
(`runner_up_share`).
"""

from __future__ import annotations

import re
import statistics
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from llm.answer_types import Span, answer_spans, holds_answer
from llm.config import ExtractiveConfig
from retrieval.answerability import coverage
from retrieval.bilingual import is_chinese
from retrieval.lexical import content_terms
from retrieval.text_rules import (
    CJK_CHAR,
    CJK_RUN,
    ENGLISH_FUNCTION_WORDS,
    FUNCTION_CHARS,
    fold,
    split_sentences,
)

if TYPE_CHECKING:
    from retrieval import Embedder, SearchHit
    from retrieval.calibration import LogisticModel

_WORD = re.compile(r"[a-z0-9]+(?:['.][a-z0-9]+)*")


# What the learned reader knows of each (question, sentence) pair; see `ExtractiveReader.features`.
READER_FEATURES = (
    "cosine",
    "cosine_gap",
    "focus_cosine",
    "focus_gap",
    "coverage",
    "coverage_gap",
    "answer_type",
    "first_in_chunk",
    "hit_rank",
    "answerability",
    "full_coverage",
    "full_rank",
    "previous_coverage",
    "type_rank",
    "char_overlap",
)
_CACHED_SENTENCES = 20_000  # sentence vectors kept between questions (about 30 MB at 384 dimensions)


@dataclass(frozen=True)
class Extract:
    """An extractive answer: sentences each followed by its citation, and the hits they came from."""

    text: str  # e.g. "差旅费用应在出差结束后三十天内提交报销申请。[1]"
    cited: list[int]  # 1-based positions of the hits used, in order of first citation
    spans: list[Span] = field(default_factory=list)  # the words of `text` that answer, in order


@dataclass(frozen=True)
class Sentence:
    """A sentence of a retrieved chunk."""

    hit: int  # 0-based rank of the hit it came from
    position: int  # order within the hit
    text: str


class ExtractiveReader:
    """Answers a question with the sentences of the retrieved chunks that hold the answer, cited.

    With a fitted `model` (a logistic regression over `READER_FEATURES`, from the embedding model's
    calibration) each sentence gets the probability that it holds the answer; without one, the
    hand-weighted score of `ExtractiveConfig` (cosine plus small lexical and answer-type bonuses).
    """

    def __init__(
        self, embedder: Embedder, config: ExtractiveConfig | None = None, model: LogisticModel | None = None
    ) -> None:
        self.embedder = embedder
        self.config = config or ExtractiveConfig()
        self.model = model
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._vectors_lock = threading.Lock()

    def read(
        self,
        question: str,
        hits: Sequence[SearchHit],
        term_weights: Mapping[str, float] | None = None,
        answerability: float | None = None,
    ) -> Extract | None:
        """Return the cited answer sentences, or None when the hits hold no sentence worth answering with.

        `term_weights` (the question's content terms and their idf, from retrieval) and `answerability`
        inform the learned model; without them every content term weighs the same.
        """
        sentences = self.sentences(hits)
        if not sentences or not question.strip():
            return None
        if self.model is None:
            return self._read_by_score(question, sentences)
        features = self.features(question, sentences, term_weights, answerability, self.model.features)
        probabilities = self.model.probabilities(features)
        order = sorted(range(len(sentences)), key=lambda i: -probabilities[i])
        best = order[0]
        chosen = [sentences[best]]
        if probabilities[best] < self.config.confident:  # no clear answer: show the close runners-up too
            floor = self.config.runner_up_share * probabilities[best]
            others = [i for i in order[1:] if probabilities[i] >= floor][: self.config.max_sentences - 1]
            chosen += sorted((sentences[i] for i in others), key=lambda s: (s.hit, s.position))
        return _write(question, _marked_first(question, chosen))

    def sentences(self, hits: Sequence[SearchHit]) -> list[Sentence]:
        """Return the distinct sentences of the hits, in hit order; a repeated one is kept from its best hit."""
        seen: set[str] = set()
        sentences: list[Sentence] = []
        for rank, hit in enumerate(hits):
            for position, text in enumerate(split_sentences(hit.text, self.config.max_sentence_chars)):
                key = "".join(text.split())
                if key not in seen:
                    seen.add(key)
                    sentences.append(Sentence(rank, position, text))
        return sentences

    def features(
        self,
        question: str,
        sentences: Sequence[Sentence],
        term_weights: Mapping[str, float] | None = None,
        answerability: float | None = None,
        names: Sequence[str] = READER_FEATURES,
    ) -> np.ndarray:
        """Return one row per sentence of the features `names` (of `READER_FEATURES`, which a model learnt on).

        cosine: the sentence's cosine with the question; cosine_gap: how far below the best sentence's it
        lies; focus_cosine, focus_gap: the same with the question less the terms several sentences share
        (the topic, 报销 in 报销需要多久到账), which leaves what is asked about (多久到账); coverage: the
        idf-weighted share of the question's other content terms it holds; coverage_gap: how far below the
        best coverage; answer_type: it holds the kind of value asked for (a duration, money, a date, a count, a
        place, a person; a count only where it would be marked, `answer_spans`); first_in_chunk: it opens its chunk; hit_rank: 1/(rank + 1) of its chunk;
        answerability: the question's, the same for every sentence (0.5 when unknown); full_coverage: the
        idf-weighted share of all the question's terms, the shared ones too, that it holds: 病假一年有几天
        has 病假 in several sentences, so `coverage` leaves it out, and 病假：… ties with 年假：… (both hold
        a duration) without it. The rest place a sentence among the others (`_context_columns`).
        """
        vectors = self._vectors_of(sentences)
        cosines = vectors @ self.embedder.embed_query(question)
        weights = term_weights if term_weights is not None else dict.fromkeys(content_terms(question), 1.0)
        shared = _shared_terms(weights, sentences)
        focus = _without(question, shared)
        focused = cosines if focus == question else vectors @ self.embedder.embed_query(focus)
        asked = {t: w for t, w in weights.items() if t not in shared}  # none left: every sentence covers all
        # A sentence in the other language than the question holds a term through its translation.
        chinese = is_chinese(question)
        covered = np.array([coverage(s.text, asked, chinese) for s in sentences])
        typed = [float(holds_answer(question, s.text)) for s in sentences]
        columns = {
            "cosine": cosines,
            "cosine_gap": cosines.max() - cosines,
            "focus_cosine": focused,
            "focus_gap": focused.max() - focused,
            "coverage": covered,
            "coverage_gap": covered.max() - covered,
            "answer_type": typed,
            "first_in_chunk": [float(s.position == 0) for s in sentences],
            "hit_rank": [1.0 / (s.hit + 1) for s in sentences],
            "answerability": np.full(len(sentences), 0.5 if answerability is None else answerability),
            "full_coverage": [coverage(s.text, weights, chinese) if weights else 0.0 for s in sentences],
        }
        columns.update(_context_columns(question, sentences, columns))
        return np.column_stack([columns[name] for name in names])

    def _read_by_score(self, question: str, sentences: list[Sentence]) -> Extract | None:
        cosines = (self._vectors_of(sentences) @ self.embedder.embed_query(question)).tolist()
        asked = _terms(question)
        shares = [len(asked & _terms(s.text)) / len(asked) if asked else 0.0 for s in sentences]
        typed = [float(holds_answer(question, s.text)) for s in sentences]
        scores = [
            cosine + self.config.lexical_weight * share + self.config.answer_type_weight * has_type
            for cosine, share, has_type in zip(cosines, shares, typed, strict=True)
        ]
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
        return _write(question, chosen)

    def _vectors_of(self, sentences: Sequence[Sentence]) -> np.ndarray:
        """Return the sentences' vectors; those not seen before are embedded in one batch and kept."""
        texts = [s.text for s in sentences]
        with self._vectors_lock:
            known = {t: self._vectors[t] for t in texts if t in self._vectors}
            for text in known:
                self._vectors.move_to_end(text)
        new = list(dict.fromkeys(t for t in texts if t not in known))
        if new:
            for text, vector in zip(new, self.embedder.embed_documents(new), strict=True):
                known[text] = vector
            with self._vectors_lock:
                for text in new:
                    self._vectors[text] = known[text]
                while len(self._vectors) > _CACHED_SENTENCES:
                    self._vectors.popitem(last=False)
        return np.stack([known[t] for t in texts])


def _context_columns(
    question: str, sentences: Sequence[Sentence], columns: Mapping[str, Sequence[float]]
) -> dict[str, np.ndarray]:
    """Return the features that place a sentence among the question's others, from its own `columns`.

    full_rank: 1/(rank + 1) of its full coverage (tied sentences share the best rank: a cosine a
    thousandth higher must not move one a whole rank); type_rank: the same with the
    sentences that hold the asked-for kind of value ranked above the rest; previous_coverage: the coverage
    of the sentence before it in its chunk (the answer often follows the sentence naming the subject, 他
    standing for it); char_overlap: the share of the question's distinct Chinese characters it holds,
    which counts what the segmenter cut differently.
    """
    full = np.asarray(columns["full_coverage"], dtype=np.float64)
    typed = np.asarray(columns["answer_type"], dtype=np.float64)
    covered = np.asarray(columns["coverage"], dtype=np.float64)
    where = {(s.hit, s.position): i for i, s in enumerate(sentences)}
    before = [where.get((s.hit, s.position - 1)) for s in sentences]
    asked = set(CJK_CHAR.findall(question))
    return {
        "full_rank": _inverse_rank(full),
        "previous_coverage": np.array([0.0 if i is None else covered[i] for i in before]),
        "type_rank": _inverse_rank(10 * typed + full),
        "char_overlap": np.array(
            [len(asked & set(s.text)) / len(asked) if asked else 0.0 for s in sentences]
        ),
    }


def _inverse_rank(values: np.ndarray) -> np.ndarray:
    """Return 1/(rank + 1) of each value, the highest ranked 0; equal values share the best rank."""
    ranks = np.searchsorted(np.sort(-values), -values, side="left")
    return 1.0 / (ranks + 1)


def _shared_terms(weights: Mapping[str, float], sentences: Sequence[Sentence]) -> set[str]:
    """Return the terms two or more of the sentences hold: the topic they share, not what is asked.

    A single character (账 of 到账) is left out: as part of other words (账号) it is in many sentences.
    """
    folded = [fold(s.text).casefold() for s in sentences]
    return {t for t in weights if len(t) > 1 and sum(t in text for text in folded) >= 2}


def _without(question: str, shared: set[str]) -> str:
    """Return the question less the shared terms; the question itself when nothing would be left of it."""
    focus = fold(question)  # the terms are folded (Simplified), so the question is too
    for term in sorted(shared, key=len, reverse=True):
        focus = re.sub(re.escape(term), "", focus, flags=re.I)
    return focus if _terms(focus) else question


def _terms(text: str) -> set[str]:
    """Return the text's content words (English, lowercased, plural s dropped) and Chinese character bigrams."""
    lowered = fold(text).lower()
    terms = {_singular(w) for w in _WORD.findall(lowered) if w not in ENGLISH_FUNCTION_WORDS}
    for run in CJK_RUN.findall(lowered):
        grams = {run} if len(run) == 1 else {run[i : i + 2] for i in range(len(run) - 1)}
        terms.update(g for g in grams if not all(c in FUNCTION_CHARS for c in g))
    return terms


def _singular(word: str) -> str:
    """Return the word without a plural s, so "claims" matches "claim"."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _marked_first(question: str, chosen: list[Sentence]) -> list[Sentence]:
    """Return the chosen sentences with the first that holds a value answering the question (`answer_spans`)
    leading, when the best one holds none: 星河X1 多少钱？ opens with the price row (价格: 2999), not the
    product's description the reader ranked a little higher."""
    if answer_spans(question, chosen[0].text):
        return chosen
    marked = next((s for s in chosen[1:] if answer_spans(question, s.text)), None)
    return chosen if marked is None else [marked, *(s for s in chosen if s is not marked)]


def _write(question: str, sentences: list[Sentence]) -> Extract:
    """Return the answer text with one citation after each sentence, the hits cited and the spans that answer."""
    parts: list[str] = []
    spans: list[Span] = []
    offset = 0
    for sentence in sentences:
        spans += [
            Span(offset + start, offset + end, sentence.text[start:end])
            for start, end in answer_spans(question, sentence.text)
        ]
        # After Chinese punctuation the marker follows directly and no space separates sentences.
        wide = not sentence.text[-1].isascii()
        parts.append(sentence.text + ("" if wide else " ") + f"[{sentence.hit + 1}]" + ("" if wide else " "))
        offset += len(parts[-1])
    return Extract("".join(parts).rstrip(), list(dict.fromkeys(s.hit + 1 for s in sentences)), spans)
