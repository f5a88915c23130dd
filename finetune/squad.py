"""The one reader of SQuAD-format data (DRCD, CMRC 2018): `data[].paragraphs[].context` and `.qas[]`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SquadQuestion:
    """A question, its distinct non-empty answer texts in file order, and SQuAD 2.0's `is_impossible`."""

    text: str
    answers: tuple[str, ...]
    impossible: bool


@dataclass(frozen=True)
class SquadParagraph:
    """A paragraph with the index and title of its article, and its questions."""

    article: int
    title: str | None
    context: str
    questions: tuple[SquadQuestion, ...]


def squad_paragraphs(data: dict) -> Iterator[SquadParagraph]:
    """Yield the paragraphs of parsed SQuAD-format data in file order; KeyError or TypeError when malformed."""
    for article, entry in enumerate(data["data"]):
        title = entry.get("title")
        for paragraph in entry["paragraphs"]:
            questions = tuple(
                SquadQuestion(
                    qa["question"],
                    tuple(dict.fromkeys(a["text"] for a in qa.get("answers", []) if a.get("text"))),
                    bool(qa.get("is_impossible")),
                )
                for qa in paragraph["qas"]
            )
            yield SquadParagraph(article, str(title) if title else None, paragraph["context"], questions)
