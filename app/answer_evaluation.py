"""Answers people can trust, measured: questions the knowledge base can and cannot answer, and calibration.

From a SQuAD-format dataset (DRCD, CMRC 2018) a knowledge base is built leaving paragraphs out:
`holdout` whole articles (their questions are *off-topic*) and the last paragraph of `holdout` other
articles of several paragraphs (*same-topic*: the rest of the article is there, not the facts asked
about; CMRC 2018's articles have one paragraph each, so it has none). Answerable questions are those
of indexed paragraphs, as many as the unanswerable ones, so both kinds weigh the same.

`fit_calibration` fits the answerability model on such sets (one or several draws of the held-out
articles) and the reader on every answerable question of their indexed paragraphs; `ask` runs every question
through the service's own answer path (any backend) and `summary` reports what a user would see.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from app.evaluation import Paragraph, Question, percentile

if TYPE_CHECKING:
    from app.services import KnowledgeService
    from llm import Answer, Message
    from retrieval import Calibration, Retrieval

Kind = Literal["answerable", "same-topic", "off-topic"]
TOP_K = 5  # chunks retrieved per question, as the answer path does by default
_MARKER = re.compile(r"\s?\[\d{1,3}\]")


@dataclass(frozen=True)
class AnswerCase:
    """A question, whether the knowledge base can answer it, and why not when it cannot."""

    question: Question
    kind: Kind

    @property
    def label(self) -> int:
        """Return 1 when the knowledge base holds the answer, else 0: what answerability predicts."""
        return int(self.kind == "answerable")


@dataclass(frozen=True)
class AnswerSet:
    """The paragraphs to index and the questions to ask."""

    paragraphs: list[Paragraph]
    cases: list[AnswerCase]  # as many answerable as unanswerable
    more_answerable: list[AnswerCase] = field(default_factory=list)  # the indexed paragraphs' other questions


def answer_set(paragraphs: Sequence[Paragraph], holdout: int, seed: int = 0) -> AnswerSet:
    """Return the paragraphs to index and the answerable and unanswerable questions (see the module doc)."""
    articles: dict[int, list[Paragraph]] = {}
    for paragraph in paragraphs:
        usable = tuple(q for q in paragraph.questions if q.text.strip() and q.answers)  # datasets have blanks
        articles.setdefault(paragraph.article, []).append(replace(paragraph, questions=usable))
    order = sorted(articles)
    random.Random(seed).shuffle(order)
    if len(order) <= holdout:
        raise ValueError(f"holding out {holdout} articles needs more than {holdout} articles")
    indexed: list[Paragraph] = []
    answerable: list[AnswerCase] = []
    unanswerable: list[AnswerCase] = []
    same_topic = [a for a in order[holdout:] if len(articles[a]) > 1][:holdout]
    for article in order:
        group = articles[article]
        if article in order[:holdout]:
            unanswerable += [AnswerCase(q, "off-topic") for p in group for q in p.questions]
            continue
        if article in same_topic:
            unanswerable += [AnswerCase(q, "same-topic") for q in group[-1].questions]
            group = group[:-1]
        indexed += group
        answerable += [AnswerCase(q, "answerable") for p in group for q in p.questions]
    random.Random(seed).shuffle(answerable)
    kept = len(unanswerable)
    return AnswerSet(indexed, answerable[:kept] + unanswerable, answerable[kept:])


def _first_sentence(answer: str) -> str:
    """Return an answer's first sentence: up to its first citation, or its first sentence when it cites none."""
    from retrieval import split_sentences

    cited = _MARKER.split(answer, maxsplit=1)
    return cited[0] if len(cited) > 1 else next(iter(split_sentences(answer)), "")


# --- fitting --------------------------------------------------------------------------------------


@dataclass
class Observations:
    """What the searches of a set of questions said, with the labels to fit on."""

    cases: list[AnswerCase] = field(default_factory=list)
    found: list[Retrieval] = field(default_factory=list)

    def extend(self, other: Observations) -> None:
        """Add another set's questions (another draw of held-out articles) to these."""
        self.cases += other.cases
        self.found += other.found


def observe(
    service: KnowledgeService,
    kb: str,
    cases: Sequence[AnswerCase],
    rerank: bool = False,
    advance: Callable[[], None] | None = None,
) -> Observations:
    """Return the retrieval of every question, as the answer path retrieves it."""
    from retrieval import SearchOptions

    options = SearchOptions(k=TOP_K, rerank=rerank)
    seen = Observations()
    for case in cases:
        found = service.retrieve(kb, case.question.text, options)
        seen.cases.append(case)
        seen.found.append(found)
        if advance:
            advance()
    return seen


def fit_calibration(
    service: KnowledgeService,
    seen: Observations,
    more_answerable: Observations | None = None,
    reranker: str | None = None,
    advance: Callable[[], None] | None = None,
) -> Calibration:
    """Return the answerability and reader models fitted on the observed questions, with a report.

    Answerability is fitted on `seen`, as many answerable questions as unanswerable ones. The reader learns
    from every answerable question whose answer lies within one retrieved sentence: those of `seen` and
    `more_answerable` (the indexed paragraphs' other questions), several times the balanced set's.
    """
    from llm.extractive import READER_FEATURES
    from retrieval import Calibration, LogisticModel
    from retrieval.answerability import SIGNALS

    features = SIGNALS + (("rerank",) if reranker else ())

    def signals(observed: Observations) -> np.ndarray:
        return np.array([found.signals.values(features) for found in observed.found])

    y = np.array([case.label for case in seen.cases])
    answerability = LogisticModel.fit(features, signals(seen), y)
    read = Observations()  # what the reader learns from: `seen` first, then `more_answerable`
    read.extend(seen)
    if more_answerable:
        read.extend(more_answerable)
    probabilities = answerability.probabilities(signals(read))

    reader = service.extractive_reader()
    rows, labels = [], []
    for case, found, probability in zip(read.cases, read.found, probabilities, strict=True):
        sentences = reader.sentences(found.hits)
        holds = [any(a in s.text for a in case.question.answers) for s in sentences]
        if case.label and any(holds):  # only questions whose answer lies within one retrieved sentence
            rows.append(reader.features(case.question.text, sentences, found.term_weights, probability))
            labels.append(np.array(holds, dtype=float))
        if advance:
            advance()
    reader_model = LogisticModel.fit_ranking(READER_FEATURES, rows, labels)
    report = {
        "questions": len(y),
        "answerable_share": float(y.mean()),
        "ece": expected_calibration_error(probabilities[: len(y)], y),
        "reader_questions": len(rows),
    }
    return Calibration(service.embedding_model, answerability, reader_model, reranker, report)


def expected_calibration_error(
    probabilities: Sequence[float], labels: Sequence[int], bins: int = 10
) -> float:
    """Return the expected calibration error: the gap between mean probability and the share of positives,
    averaged over `bins` equal-width probability bins weighted by how many questions fall in each."""
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(labels, dtype=float)
    if not len(p):
        return 0.0
    which = np.minimum((p * bins).astype(int), bins - 1)
    gap = sum(
        abs(p[which == b].mean() - y[which == b].mean()) * (which == b).sum()
        for b in range(bins)
        if (which == b).any()
    )
    return float(gap / len(p))


# --- asking ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Asked:
    """One question put through the answer path, and what came back."""

    case: AnswerCase
    answer: Answer
    seconds: float


def ask(
    service: KnowledgeService,
    kb: str,
    cases: Sequence[AnswerCase],
    advance: Callable[[], None] | None = None,
    histories: Sequence[Sequence[Message]] | None = None,
) -> list[Asked]:
    """Return every question's answer from the service's answer path, timed; `histories`, when given,
    holds the earlier turns each question is asked after."""
    from llm import AnswerOptions
    from retrieval import SearchOptions

    options = AnswerOptions(retrieval=SearchOptions(k=TOP_K), generation=service.generation_params())
    asked = []
    for i, case in enumerate(cases):
        started = time.perf_counter()
        history = histories[i] if histories is not None else ()
        answer = service.ask(kb, case.question.text, history, options=options).read()
        seconds = time.perf_counter() - started
        asked.append(Asked(case, answer, seconds))
        if advance:
            advance()
    return asked


def summary(asked: Sequence[Asked]) -> dict[str, float | int | None]:
    """Return what a user would see: answer hits, refusals per kind, calibration error and latency."""
    answerable = [a for a in asked if a.case.kind == "answerable"]
    off = [a for a in asked if a.case.kind == "off-topic"]
    same = [a for a in asked if a.case.kind == "same-topic"]

    def share(items: Sequence[Asked], test: Callable[[Asked], bool]) -> float:
        return sum(map(test, items)) / len(items) if items else math.nan

    def hit(a: Asked, first_only: bool) -> bool:
        if a.answer.refused:
            return False
        text = _first_sentence(a.answer.text) if first_only else _MARKER.sub("", a.answer.text)
        return any(answer in text for answer in a.case.question.answers)

    scored = [a for a in asked if a.answer.answerability is not None]
    seconds = [a.seconds for a in asked]
    return {
        "answerable": len(answerable),
        "off_topic": len(off),
        "same_topic": len(same),
        "answer_hit": share(answerable, lambda a: hit(a, False)),
        "first_sentence_hit": share(answerable, lambda a: hit(a, True)),
        "answerable_refused": share(answerable, lambda a: a.answer.refused),
        "off_topic_refused": share(off, lambda a: a.answer.refused),
        "same_topic_refused": share(same, lambda a: a.answer.refused),
        "ece": expected_calibration_error(
            [a.answer.answerability for a in scored], [a.case.label for a in scored]
        )
        if scored
        else None,
        "p50_ms": 1000 * percentile(seconds, 0.5),
        "p95_ms": 1000 * percentile(seconds, 0.95),
    }
