"""What the `ask` and `search` commands print, the same for a local service and a remote kbqa (`--server`)."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from app.cli.common import console, errors


def print_sources(answer: Any, question: str, total_ms: float) -> None:
    """Print an answer's citations, the closest passages of a refusal, and its counts (local or remote)."""
    for citation in answer.citations:
        place = citation.source + (f", page {citation.page}" if citation.page else "")
        console.print(f"[{citation.n}] {place} (cosine {citation.score:.3f})", highlight=False, markup=False)
    if answer.closest:
        console.print("closest passages (not used):", style="dim", highlight=False)
    for passage in answer.closest:
        place = passage.source + (f", page {passage.page}" if passage.page else "")
        snippet = " ".join(passage.text.split())[:80]
        console.print(f"  {place}: {snippet}…", style="dim", highlight=False, markup=False)
    usage = (
        f"{answer.usage.prompt_tokens}+{answer.usage.completion_tokens} tokens, "
        if answer.usage.total_tokens
        else ""
    )
    if answer.searched_question and answer.searched_question != question:
        errors.print(f"searched: {answer.searched_question}", style="dim", highlight=False, markup=False)
    found = "" if answer.answerability is None else f"answerability {answer.answerability:.2f}, "
    errors.print(f"[dim]{found}{usage}{total_ms:.0f} ms[/]", highlight=False)


def print_hits(hits: list[Any], neighbours: int) -> None:
    """Print search hits with their cosine, place and text (local or remote)."""
    if not hits:
        console.print("no matching chunks")
    for rank, hit in enumerate(hits, 1):
        place = hit.source + (f", page {hit.page}" if hit.page else "")
        if hit.heading_path:
            place += " — " + " > ".join(hit.heading_path)
        if hit.metadata:
            place += " [" + ", ".join(f"{key}={value}" for key, value in hit.metadata.items()) + "]"
        if hit.ocr:
            place += " (OCR)"
        why = f"cosine {hit.score:.3f}"
        if hit.lexical_score is not None:
            why += f" · bm25 {hit.lexical_score:.2f}"
        if hit.rerank_score is not None:
            why += f" · rerank {hit.rerank_score:.3f}"
        console.print(f"[bold]{rank}.[/] [green]{why}[/]", highlight=False)
        text = "\n".join([*hit.context_before, hit.text, *hit.context_after]).strip()
        _indented(Text(place, style="cyan"))
        _indented(Text(text[: 300 * (1 + 2 * neighbours)]))
        console.print()


def _indented(text: Text, indent: int = 3) -> None:
    """Print `text` with every line, wrapped ones too, under the hit's number (no trailing spaces)."""
    for line in text.wrap(console, max(20, console.width - indent)):
        line.rstrip()
        console.print(Text(" " * indent) + line, highlight=False, soft_wrap=True)
