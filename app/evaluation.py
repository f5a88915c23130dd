"""Retrieval evaluation on SQuAD-format data (e.g. DRCD): the dataset, one knowledge-base document per
paragraph, and ranking metrics over binary relevance.

Two definitions of a relevant hit are scored: "answer" (the chunk contains one of the question's answer
texts) and "paragraph" (the chunk comes from the question's own paragraph).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.services import KnowledgeService
    from ingestion import IngestionReport, Progress
    from retrieval import SearchOptions

PARAGRAPH_FOLDER = "paragraphs"
DEFINITIONS = ("answer", "paragraph")
CUTOFFS = (1, 5, 10)


@dataclass(frozen=True)
class Question:
    """A question and the texts that answer it."""

    text: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Paragraph:
    """A dataset paragraph: its place in the dataset, its article, its text and its questions."""

    index: int
    article: int
    context: str
    questions: tuple[Question, ...]

    @property
    def file_name(self) -> str:
        """Return the stable file name of this paragraph, by its place in the dataset."""
        return f"p{self.index + 1:05d}.txt"

    @property
    def source(self) -> str:
        """Return the source name the knowledge base stores this paragraph under."""
        return f"{PARAGRAPH_FOLDER}/{self.file_name}"


@dataclass(frozen=True)
class Case:
    """One question to ask, with the paragraph it was written for."""

    question: Question
    paragraph: Paragraph


@dataclass
class Run:
    """Relevance flags of each question's ranking per definition, and each query's seconds."""

    rankings: dict[str, list[list[bool]]] = field(default_factory=lambda: {d: [] for d in DEFINITIONS})
    seconds: list[float] = field(default_factory=list)

    def add(self, hits: Sequence[tuple[str, str]], case: Case, seconds: float) -> None:
        """Record one query's hits as (text, source) pairs, best first, and its latency."""
        for definition, flags in relevance(hits, case).items():
            self.rankings[definition].append(flags)
        self.seconds.append(seconds)

    def metrics(self) -> dict[str, dict[str, float]]:
        """Return the metrics of each definition."""
        return {definition: metrics(flags) for definition, flags in self.rankings.items()}


def read_squad(path: Path) -> list[Paragraph]:
    """Return the paragraphs of a SQuAD-format JSON file, in file order, with their questions."""
    from finetune.squad import squad_paragraphs

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [
        Paragraph(index, p.article, p.context, tuple(Question(q.text, q.answers) for q in p.questions))
        for index, p in enumerate(squad_paragraphs(data))
    ]


def select(paragraphs: Sequence[Paragraph], limit: int | None) -> tuple[list[Paragraph], list[Case]]:
    """Return the paragraphs to index and the questions to ask.

    Without a limit: every paragraph and every question. With one: the first `limit` questions, and
    every paragraph of the articles they come from (so the other paragraphs of an article are distractors).
    """
    cases = [Case(q, p) for p in paragraphs for q in p.questions]
    if limit is None:
        return list(paragraphs), cases
    cases = cases[:limit]
    articles = {case.paragraph.article for case in cases}
    return [p for p in paragraphs if p.article in articles], cases


def write_paragraphs(paragraphs: Sequence[Paragraph], folder: Path) -> None:
    """Write each paragraph as a UTF-8 .txt file in `folder`, leaving files with the same text untouched
    and removing those of paragraphs not asked for (an earlier run's, which would be indexed too)."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {paragraph.file_name for paragraph in paragraphs}
    for stale in folder.glob("*.txt"):
        if stale.name not in wanted:
            stale.unlink()
    for paragraph in paragraphs:
        path = folder / paragraph.file_name
        if not path.is_file() or path.read_text(encoding="utf-8") != paragraph.context:
            path.write_text(paragraph.context, encoding="utf-8")


def build_knowledge_base(
    service: KnowledgeService, name: str, paragraphs: Sequence[Paragraph], progress: Progress | None = None
) -> IngestionReport:
    """Index `paragraphs` into knowledge base `name`, one document each, reusing what is already stored.

    Raises ValueError if the knowledge base holds documents that are not among these paragraphs, since
    they would change the scores.
    """
    folder = service.settings.data_dir / "eval" / name / PARAGRAPH_FOLDER
    write_paragraphs(paragraphs, folder)
    report = service.ingest(name, [folder], progress)
    stored = {document.source for document in service.documents(name)}
    extra = stored - {p.source for p in paragraphs}
    if extra:
        raise ValueError(
            f"knowledge base '{name}' holds {len(extra)} documents that are not among the evaluated "
            f"paragraphs (e.g. {sorted(extra)[0]}); use another --kb or delete it"
        )
    return report


def run_questions(
    service: KnowledgeService,
    name: str,
    cases: Sequence[Case],
    options: SearchOptions,
    advance: Callable[[], None] | None = None,
) -> Run:
    """Return the relevance of each question's hits and each search's latency in knowledge base `name`."""
    run = Run()
    for case in cases:
        started = time.perf_counter()
        hits = service.search(name, case.question.text, options)
        seconds = time.perf_counter() - started
        run.add([(hit.text, hit.source) for hit in hits], case, seconds)
        if advance:
            advance()
    return run


def relevance(hits: Sequence[tuple[str, str]], case: Case) -> dict[str, list[bool]]:
    """Return, per definition, whether each (text, source) hit is relevant to the case's question."""
    return {
        "answer": [any(answer in text for answer in case.question.answers) for text, _ in hits],
        "paragraph": [source == case.paragraph.source for _, source in hits],
    }


def metrics(rankings: Sequence[Sequence[bool]], k: int = 10) -> dict[str, float]:
    """Return mean recall@1/5/10, MRR@k and nDCG@k over the rankings' relevance flags, best hit first.

    recall@n is 1 when a relevant hit is among the first n. nDCG's ideal ranking puts the relevant hits
    that were retrieved first: how many relevant chunks the whole knowledge base holds is not known.
    """
    count = max(len(rankings), 1)
    totals = {f"recall@{n}": 0.0 for n in CUTOFFS} | {f"mrr@{k}": 0.0, f"ndcg@{k}": 0.0}
    for flags in rankings:
        top = list(flags[:k])
        for n in CUTOFFS:
            totals[f"recall@{n}"] += float(any(top[:n]))
        first = next((rank for rank, relevant in enumerate(top, 1) if relevant), None)
        totals[f"mrr@{k}"] += 1.0 / first if first else 0.0
        totals[f"ndcg@{k}"] += ndcg(top)
    return {key: value / count for key, value in totals.items()}


def ndcg(flags: Sequence[bool]) -> float:
    """Return the nDCG of one ranking's binary relevance flags, against their ideal reordering."""
    dcg = sum(1.0 / math.log2(rank + 1) for rank, relevant in enumerate(flags, 1) if relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, sum(map(bool, flags)) + 1))
    return dcg / ideal if ideal else 0.0


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the `fraction` quantile of `values` (nearest rank), or 0.0 when there are none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]
