"""Follow-up questions measured: does a question that leans on the turn before it get the same answer?

From a SQuAD-format dataset (DRCD, CMRC 2018) the knowledge base and the answerable and held-out
questions are chosen as `kbqa eval answers` chooses them (`answer_set`). A *follow-up* is made from a
question that names its article's title: the title becomes a pronoun (它, "it"), and the question is asked
after another question of the same article and that question's gold answer. Each is asked, through the
service's own answer path, four ways: the follow-up with that history, the follow-up alone, the question
as written, and the question as written after an unrelated turn (a question of another article and its
answer). The held-out ones (the knowledge base does not hold their answer) are asked as follow-ups and as
written, to compare refusals.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.answer_evaluation import AnswerCase, AnswerSet, Asked, ask, summary
from app.evaluation import Paragraph, Question

if TYPE_CHECKING:
    from app.services import KnowledgeService

PRONOUN = "它"
# The follow-ups of a set split by article, so a rewriter can be tuned on one part and reported on the
# other: "tune" holds the articles of even index in the file, "report" those of odd index, "all" both.
PARTS = ("all", "tune", "report")


@dataclass(frozen=True)
class FollowUp:
    """A question of the set, the same question leaning on an earlier turn, and the turns to ask it after."""

    original: AnswerCase  # the question as written; its kind says whether the knowledge base holds the answer
    followup: str  # the question with its article's title replaced by a pronoun
    first: Question  # another question of the same article, asked (and answered) before the follow-up
    unrelated: Question  # a question of another article, asked before the question as written


def article_titles(dataset: Path) -> dict[int, str]:
    """Return each article's title by its index in a SQuAD-format file (articles without one are left out)."""
    import json

    from finetune.squad import squad_paragraphs

    data = json.loads(Path(dataset).read_text(encoding="utf-8"))
    return {p.article: p.title for p in squad_paragraphs(data) if p.title}


def conversation_set(
    chosen: AnswerSet,
    paragraphs: Sequence[Paragraph],
    titles: dict[int, str],
    seed: int = 0,
    limit: int = 200,
    part: str = "all",
) -> list[FollowUp]:
    """Return at most `limit` answerable and `limit` held-out follow-ups of an answer set made from
    `paragraphs` (indexed and held out), whose articles' titles are `titles`; `part` (`PARTS`) keeps
    only the questions of even-index ("tune") or odd-index ("report") articles."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, not {part!r}")
    article_of = {q: p.article for p in paragraphs for q in p.questions}
    asked_in: dict[int, list[Question]] = {}
    for paragraph in paragraphs:
        usable = [q for q in paragraph.questions if q.text.strip() and q.answers]
        asked_in.setdefault(paragraph.article, []).extend(usable)
    articles = sorted(asked_in)
    pick = random.Random(seed)
    answerable: list[FollowUp] = []
    held_out: list[FollowUp] = []
    for case in chosen.cases + chosen.more_answerable:
        article = article_of[case.question]
        if part != "all" and article % 2 != (part == "report"):
            continue
        title = titles.get(article, "")
        others = [q for q in asked_in[article] if q != case.question]
        if len(title) < 2 or title not in case.question.text or not others:
            continue
        other_article = pick.choice([a for a in articles if a != article])
        # The earlier turn names the title when a question of the article does, as a person's would.
        naming = [q for q in others if title in q.text]
        followup = FollowUp(
            case,
            case.question.text.replace(title, PRONOUN),
            (naming or others)[0],
            pick.choice(asked_in[other_article]),
        )
        (answerable if case.kind == "answerable" else held_out).append(followup)
    return answerable[:limit] + held_out[:limit]


def _after(question: Question) -> list:
    """Return the history of one earlier turn: the question and its gold answer."""
    from llm import Message

    return [Message("user", question.text), Message("assistant", question.answers[0])]


def ask_conversations(
    service: KnowledgeService,
    kb: str,
    followups: Sequence[FollowUp],
    advance: Callable[[], None] | None = None,
) -> dict[str, list[Asked]]:
    """Return the answers of every follow-up asked the four ways (held-out ones: two), by way."""
    answerable = [f for f in followups if f.original.kind == "answerable"]
    held_out = [f for f in followups if f.original.kind != "answerable"]

    def as_followup(items: Sequence[FollowUp]) -> list[AnswerCase]:
        return [AnswerCase(Question(f.followup, f.original.question.answers), f.original.kind) for f in items]

    def run(cases, histories) -> list[Asked]:
        return ask(service, kb, cases, advance, histories)

    return {
        "followup_with_history": run(as_followup(answerable), [_after(f.first) for f in answerable]),
        "followup_without_history": run(as_followup(answerable), None),
        "original": run([f.original for f in answerable], None),
        "original_after_unrelated": run(
            [f.original for f in answerable], [_after(f.unrelated) for f in answerable]
        ),
        "held_out_followup": run(as_followup(held_out), [_after(f.first) for f in held_out]),
        "held_out_original": run([f.original for f in held_out], None),
    }


def conversation_summary(asked: dict[str, list[Asked]]) -> dict[str, float | int | None]:
    """Return the answer hits of each way, the held-out refusals, and the figures the targets compare."""

    def hit(way: str) -> float:
        return float(summary(asked[way])["answer_hit"])

    def refused(way: str) -> float:
        items = asked[way]
        return sum(a.answer.refused for a in items) / len(items) if items else float("nan")

    def rewritten(way: str) -> float:
        items = asked[way]
        changed = [a.answer.searched_question != a.case.question.text for a in items]
        return sum(changed) / len(items) if items else float("nan")

    original = hit("original")
    with_history = hit("followup_with_history")
    return {
        "answerable_followups": len(asked["original"]),
        "held_out_followups": len(asked["held_out_original"]),
        "followup_hit_with_history": with_history,
        "followup_hit_without_history": hit("followup_without_history"),
        "original_hit": original,
        "original_hit_after_unrelated": hit("original_after_unrelated"),
        "followup_to_original": with_history / original if original else None,
        "unrelated_turn_shift": abs(hit("original_after_unrelated") - original),
        "held_out_followup_refused": refused("held_out_followup"),
        "held_out_original_refused": refused("held_out_original"),
        "held_out_refusal_gap": abs(refused("held_out_followup") - refused("held_out_original")),
        "followups_rewritten": rewritten("followup_with_history"),
        "unrelated_rewritten": rewritten("original_after_unrelated"),
        "p50_ms_followup": summary(asked["followup_with_history"])["p50_ms"],
    }
