"""`kbqa index …`: build knowledge bases from files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import IngestionProgress, KbOption, metadata_or_fail, print_report, run_or_fail, service

index_app = typer.Typer(help="Build knowledge bases from files.", no_args_is_help=True)


@index_app.command("build")
def index_build(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to index.")],
    kb: KbOption,
    meta: Annotated[
        list[str] | None,
        typer.Option(
            "--meta",
            metavar="KEY=VALUE",
            help="Metadata for every file of this run (repeatable). It replaces the files' metadata, "
            "unchanged files included (without embedding them again); without it, files keep theirs.",
        ),
    ] = None,
    groups: Annotated[
        str | None,
        typer.Option(
            "--groups",
            help="Comma-separated access groups of every file of this run: only keys sharing one see them "
            "(unchanged files get them in place; '' for none). Without it, files keep theirs.",
        ),
    ] = None,
) -> None:
    """Index files and folders into a knowledge base (created if missing).

    Unchanged files are skipped, changed ones replaced. Exits 1 if any file failed.
    """
    metadata = metadata_or_fail(meta)
    group_list = None if groups is None else [g.strip() for g in groups.split(",") if g.strip()]
    svc = service()
    with IngestionProgress() as progress:
        report = run_or_fail(lambda: svc.ingest(kb, paths, progress, metadata, group_list))
    print_report(report)
    if report.failures:
        raise typer.Exit(1)
