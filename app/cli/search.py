"""`kbqa search`: the best chunks of a knowledge base for a query, with their scores."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from app.cli.common import (
    JsonOption,
    KbOption,
    Options,
    RerankOption,
    metadata_or_fail,
    run_or_fail,
    service,
    valid_or_fail,
)
from app.cli.output import print_hits


def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    kb: KbOption,
    k: Annotated[int, typer.Option("-k", "--top-k", help="How many chunks to return.")] = 5,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode", help="dense, lexical (BM25 over jieba words) or hybrid (both, fused); default hybrid."
        ),
    ] = None,
    rerank: RerankOption = False,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="Keep hits whose cosine similarity to the query is >= this. Cosines lie in [-1, 1]; "
            "higher is more similar. Applies in every mode.",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option("--source", help="Only documents whose source matches this glob, e.g. 'docs/hr/*'."),
    ] = None,
    meta: Annotated[
        list[str] | None,
        typer.Option(
            "--meta",
            metavar="KEY=VALUE",
            help="Only documents whose metadata has this key with this value (repeatable: all must match).",
        ),
    ] = None,
    neighbours: Annotated[
        int, typer.Option("--neighbours", help="Also show this many chunks before and after each hit.")
    ] = 0,
    as_json: JsonOption = False,
) -> None:
    """Search a knowledge base: the best chunks, each with its cosine score in [-1, 1] (higher is better)."""
    if Options.server:  # a remote kbqa, through the client
        from app.cli.remote import search_remote

        options = {"k": k, "mode": mode, "rerank": rerank, "score_threshold": threshold, "source": source}
        options |= {"metadata": metadata_or_fail(meta), "neighbours": neighbours}
        return search_remote(kb, query, options, as_json)
    from retrieval import SearchOptions

    metadata = metadata_or_fail(meta)
    options = valid_or_fail(
        lambda: SearchOptions(
            k=k,
            mode=mode,
            rerank=rerank,
            score_threshold=threshold,
            source=source,
            metadata=metadata,
            neighbours=neighbours,
        )
    )
    svc = service()
    hits = run_or_fail(lambda: svc.search(kb, query, options))
    if as_json:
        print(json.dumps([asdict(hit) for hit in hits], ensure_ascii=False, indent=2))
        return
    print_hits(hits, neighbours)
