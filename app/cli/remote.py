"""`kbqa --server URL ask|search`: the same commands against a running kbqa, through `app.client`."""

from __future__ import annotations

import json
from typing import Any

from app.cli.common import Options, console, fail


def ask_remote(
    kb: str,
    question: str,
    history: list[dict[str, str]],
    retrieval: dict[str, Any],
    generation: dict[str, Any],
    as_json: bool,
) -> None:
    """Print the remote answer as `kbqa ask` does: streamed, then its citations (or JSON)."""
    from app.cli.output import print_sources
    from app.client import Client, Delta, Done, KbqaError

    with Client(Options.server or "", Options.api_key) as client:
        try:
            if as_json:
                answer = client.ask(kb, question, history, retrieval=retrieval, generation=generation)
                print(json.dumps(answer.model_dump(), ensure_ascii=False, indent=2))
                return
            for event in client.ask_stream(kb, question, history, retrieval, generation):
                if isinstance(event, Delta):
                    console.print(event.text, end="", highlight=False, markup=False, soft_wrap=True)
                elif isinstance(event, Done):
                    console.print()
                    print_sources(event.answer, question, event.answer.timings.get("total_ms") or 0.0)
        except KbqaError as error:
            fail(str(error))


def search_remote(kb: str, query: str, options: dict[str, Any], as_json: bool) -> None:
    """Print the remote search's hits as `kbqa search` does (or JSON)."""
    from app.cli.output import print_hits
    from app.client import Client, KbqaError

    with Client(Options.server or "", Options.api_key) as client:
        try:
            hits = client.search(kb, query, **options)
        except KbqaError as error:
            fail(str(error))
    if as_json:
        print(json.dumps([hit.model_dump() for hit in hits], ensure_ascii=False, indent=2))
        return
    print_hits(hits, options["neighbours"])
