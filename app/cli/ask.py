"""`kbqa ask`: answer a question from a knowledge base, streaming the answer, then its citations."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.common import KbOption, Options, console, fail, run_or_fail, service, valid_or_fail
from app.cli.output import print_sources

if TYPE_CHECKING:
    from rich.text import Text

    from app.server.schemas import Turn
    from llm.answer_types import Span


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
    history_file: Annotated[
        Path | None,
        typer.Option(
            "--history",
            help="JSON file of the earlier turns, oldest first, as the chat route's `history`: "
            '[{"role": "user", "content": "…"}, {"role": "assistant", "content": "…"}, …]. '
            "The question is then a follow-up, made standalone before it is searched.",
        ),
    ] = None,
) -> None:
    """Answer a question from a knowledge base, streaming the answer, then listing its citations."""
    history = read_history(question, history_file) if history_file else []
    if Options.server:  # a remote kbqa: the same options and output, through the client
        from app.cli.remote import ask_remote

        generation = {"adapter": adapter, "max_new_tokens": max_new_tokens, "temperature": temperature}
        retrieval = {"k": k, "mode": mode, "score_threshold": threshold}
        turns = [turn.model_dump() for turn in history]
        return ask_remote(kb, question, turns, retrieval, generation, as_json)
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
    messages = [turn.message() for turn in history]
    stream = run_or_fail(lambda: svc.ask(kb, question, messages, options))
    if as_json:
        answer = run_or_fail(stream.read)
        print(json.dumps(asdict(answer), ensure_ascii=False, indent=2))
        return

    def print_deltas():
        if svc.settings.llm.backend == "extractive":  # one piece, whose answering words are known: bold them
            answer = stream.read()
            console.print(marked(answer.text, answer.spans), highlight=False, soft_wrap=True)
            return answer
        for delta in stream:
            console.print(delta, end="", highlight=False, markup=False, soft_wrap=True)
        console.print()
        return stream.answer

    answer = run_or_fail(print_deltas)
    print_sources(answer, question, answer.timings.total_ms)


def read_history(question: str, path: Path) -> list[Turn]:
    """Return the turns of a `--history` file, bounded as the chat route bounds them."""
    from app.server.schemas import ChatRequest

    try:
        turns = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        fail(f"cannot read the history file {path}: {error}", code=2)
    request = valid_or_fail(lambda: ChatRequest.model_validate({"question": question, "history": turns}))
    return request.history


def marked(text: str, spans: Sequence[Span]) -> Text:
    """Return the answer as rich text with the words that answer in bold."""
    from rich.text import Text

    shown = Text(text)
    for span in spans:
        shown.stylize("bold", span.start, span.end)
    return shown
