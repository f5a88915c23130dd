"""`kbqa ask`: answer a question from a knowledge base, streaming the answer, then its citations."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer

from app.cli.common import KbOption, Options, console, errors, run_or_fail, service, valid_or_fail


def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    kb: KbOption,
    adapter: Annotated[
        str | None,
        typer.Option("--adapter", help="LoRA adapter by name (from llm.adapters); 'base' for none."),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", help="How many chunks to retrieve.")] = 5,
    mode: Annotated[str | None, typer.Option("--mode", help="dense, lexical or hybrid.")] = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Use only chunks with cosine similarity >= this (in [-1, 1])."),
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", help="Most tokens to generate.")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", help="Sampling temperature; 0 is greedy.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer and citations as JSON.")] = False,
) -> None:
    """Answer a question from a knowledge base, streaming the answer, then listing its citations."""
    if Options.server:  # a remote kbqa: the same options and output, through the client
        from app.cli.remote import ask_remote

        generation = {"adapter": adapter, "max_new_tokens": max_new_tokens, "temperature": temperature}
        retrieval = {"k": k, "mode": mode, "score_threshold": threshold}
        return ask_remote(kb, question, retrieval, generation, as_json)
    from llm import AnswerOptions
    from retrieval import SearchOptions

    svc = service()
    options = valid_or_fail(
        lambda: AnswerOptions(
            retrieval=SearchOptions(k=k, mode=mode, score_threshold=threshold),
            generation=svc.generation_params(
                adapter=adapter, max_new_tokens=max_new_tokens, temperature=temperature
            ),
        )
    )
    stream = run_or_fail(lambda: svc.ask(kb, question, options=options))
    if as_json:
        answer = run_or_fail(stream.read)
        print(json.dumps(asdict(answer), ensure_ascii=False, indent=2))
        return

    def print_deltas():
        for delta in stream:
            console.print(delta, end="", highlight=False, markup=False, soft_wrap=True)
        console.print()
        return stream.answer

    answer = run_or_fail(print_deltas)
    print_sources(answer, answer.timings.total_ms)


def print_sources(answer: Any, total_ms: float) -> None:
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
    found = "" if answer.answerability is None else f"answerability {answer.answerability:.2f}, "
    errors.print(f"[dim]{found}{usage}{total_ms:.0f} ms[/]", highlight=False)
