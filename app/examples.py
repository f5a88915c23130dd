"""Example questions for an empty conversation, made from a knowledge base's headings: a heading that is
a question already is taken as it is, any other is asked as itself ("Hotel limits?", "服务时间？"), the
form the answerer found answerable most often on the sample documents (more than "Tell me about …" or
"介绍一下…")."""

from __future__ import annotations

import re
from collections.abc import Sequence

from retrieval import CJK_CHAR

# "2.1 视频会议" -> "视频会议": a section number says nothing to a reader.
_NUMBERING = re.compile(r"^\s*(?:第?[\d.]+[章节条]?|[一二三四五六七八九十]+[、.])\s*")
# An example is answered surely, not just above the refusal line: the first answer a newcomer sees.
EXAMPLE_ANSWERABILITY = 0.5
# Longer headings are sentences of their own, poor as a prompt to click.
_MAX_CHARS = 40


def example_questions(headings: Sequence[tuple[int, tuple[str, ...]]], count: int) -> list[str]:
    """Return up to `count` distinct questions from (document id, heading path) pairs, taking from one
    document after another, the headings that are questions first."""
    by_document: dict[int, list[tuple[bool, str]]] = {}
    for document_id, path in headings:
        by_document.setdefault(document_id, []).append((len(path) > 1, path[-1] if path else ""))
    queues = []
    for entries in by_document.values():
        # A document's top heading is its title, too broad to ask about when it has sections.
        sections = [leaf for deep, leaf in entries if deep] or [leaf for _, leaf in entries]
        phrased = [question for leaf in sections if (question := _question(leaf))]
        queues.append(sorted(phrased, key=lambda q: not q.endswith(("?", "？"))))
    chosen: list[str] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count and (question := queue.pop(0)) not in chosen:
                chosen.append(question)
    return chosen


def _question(heading: str) -> str | None:
    """Return the question a heading suggests, or None for one too short or too long to make one."""
    leaf = _NUMBERING.sub("", heading).strip()
    if not 2 <= len(leaf) <= _MAX_CHARS:
        return None
    if leaf.endswith(("?", "？")):
        return leaf
    return f"{leaf}？" if CJK_CHAR.search(leaf) else f"{leaf}?"
