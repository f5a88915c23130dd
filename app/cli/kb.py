"""`kbqa kb …`: create, list, inspect, check, migrate and delete knowledge bases."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from app.cli.common import JsonOption, console, fail, run_or_fail, service

kb_app = typer.Typer(help="Create, list, inspect and delete knowledge bases.", no_args_is_help=True)

NameArgument = Annotated[str, typer.Argument(help="Knowledge-base name.")]


@kb_app.command("create")
def kb_create(
    name: Annotated[str, typer.Argument(help="Name: letters (Chinese too), digits, '-', '_'.")],
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Vector store: faiss (files in the folder) or milvus [default: the vector_store.backend setting].",
        ),
    ] = None,
    uri: Annotated[
        str | None,
        typer.Option(
            "--uri",
            help="Milvus: a server URI (http://host:19530) or a Milvus Lite file in the folder "
            "[default: the vector_store.milvus_uri setting, milvus.db].",
        ),
    ] = None,
) -> None:
    """Create an empty knowledge base with the configured embedding model and splitter."""
    svc = service()
    kb = run_or_fail(lambda: svc.create(name, store, uri))
    kb.close()
    if kb.directory is None:  # the PostgreSQL store: rows of the shared database, no folder
        console.print(f"created knowledge base [bold]{name}[/] (pgvector) in {svc.database.where}")
        return
    where = kb.manifest.store.uri or "files"
    console.print(
        f"created knowledge base [bold]{name}[/] ({kb.manifest.store.backend}, {where}) in {kb.directory}"
    )


@kb_app.command("migrate")
def kb_migrate(
    name: NameArgument,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="The vector store to move to (faiss or milvus), or the whole knowledge base's store: postgres "
            "(store.dsn) or back to sqlite (the data directory); ids, metadata and vectors are kept.",
        ),
    ],
    uri: Annotated[str | None, typer.Option("--uri", help="Milvus: server URI or Milvus Lite file.")] = None,
) -> None:
    """Rebuild a knowledge base's vectors in another store from its SQLite copy, then switch to it; or move it
    between SQLite and PostgreSQL without embedding anything again."""
    svc = service()
    run_or_fail(lambda: svc.migrate(name, to, uri))
    console.print(f"knowledge base [bold]{name}[/] now uses {to}")


@kb_app.command("list")
def kb_list(as_json: JsonOption = False) -> None:
    """List the knowledge bases with their sizes."""
    svc = service()
    infos = [run_or_fail(lambda n=n: svc.info(n)) for n in svc.names()]
    if as_json:
        print(json.dumps([info_dict(info) for info in infos], ensure_ascii=False, indent=2))
        return
    if not infos:
        console.print(f"no knowledge bases in {svc.root}")
        return
    # Long values fold onto more lines rather than end in "…": a model name cut short names no model.
    table = Table()
    for column in ("name", "documents", "chunks", "embedding model", "store", "created"):
        table.add_column(
            column, overflow="fold", justify="right" if column in ("documents", "chunks") else "left"
        )
    for info in infos:
        table.add_row(
            info.name,
            str(info.documents),
            str(info.chunks),
            info.embedding.model,
            info.store.backend,
            _when(info.created_at),
        )
    console.print(table)


@kb_app.command("info")
def kb_info(name: NameArgument, as_json: JsonOption = False) -> None:
    """Show a knowledge base's documents, chunks, embedding model, splitter and size."""
    svc = service()
    info = run_or_fail(lambda: svc.info(name))
    if as_json:
        print(json.dumps(info_dict(info), ensure_ascii=False, indent=2))
        return
    table = Table(show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in _readable(info).items():
        table.add_row(key, value)
    console.print(table)


@kb_app.command("delete")
def kb_delete(
    name: NameArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a knowledge base and all its documents."""
    svc = service()
    if not run_or_fail(lambda: svc.exists(name)):
        fail(f"knowledge base '{name}' does not exist")
    if not yes and not typer.confirm(f"Delete knowledge base '{name}' and all its documents?"):
        raise typer.Exit(1)
    run_or_fail(lambda: svc.delete(name))
    console.print(f"deleted knowledge base [bold]{name}[/]")


@kb_app.command("check")
def kb_check(name: NameArgument) -> None:
    """Check that the FAISS index and the chunk store agree; exit 1 if they do not."""
    svc = service()
    report = run_or_fail(lambda: svc.check(name))
    if not report.ok:
        fail(
            f"knowledge base '{name}' is inconsistent: {len(report.ids_without_chunk)} vectors without a chunk, "
            f"{len(report.chunks_without_vector)} chunks without a vector"
        )
    console.print(f"knowledge base [bold]{name}[/] is consistent")


def _when(timestamp: str) -> str:
    """Return an ISO timestamp as date and minute (2026-12-04 07:08), as a person reads it."""
    return timestamp[:16].replace("T", " ")


def _readable(info) -> dict[str, str]:
    """Return a knowledge base's summary as lines a person reads (`--json` has every field as it is)."""
    embedding, store, splitter = info.embedding, info.store, info.splitter
    where = ", ".join(
        f"{key} {value}" for key, value in (("uri", store.uri), ("collection", store.collection)) if value
    )
    unit = splitter.get("length_unit", "chars")
    chunking = f"{splitter.get('chunk_size')} {unit}, overlap {splitter.get('chunk_overlap')}"
    if splitter.get("context_prefix"):
        chunking += ", headings prefixed"
    metadata = "\n".join(f"{key}: {', '.join(values)}" for key, values in info.metadata.items())
    return {
        "name": info.name,
        "documents": str(info.documents),
        "chunks": str(info.chunks),
        "embedding": f"{embedding.model} ({embedding.backend}, {embedding.dimension} dimensions)",
        "splitter": chunking,
        "store": store.backend + (f" ({where})" if where else ""),
        "created": _when(info.created_at),
        "size": _size(info.size_bytes),
        "metadata": metadata or "none",
        "answerability": info_dict(info)["answerability"],
    }


def _size(count: int) -> str:
    """Return a byte count as bytes, KiB, MiB or GiB."""
    size = float(count)
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def info_dict(info) -> dict:
    """Return a knowledge base's summary as JSON-ready data."""
    return {
        "name": info.name,
        "documents": info.documents,
        "chunks": info.chunks,
        "embedding": info.embedding.model_dump(),
        "splitter": info.splitter,
        "store": info.store.model_dump(),
        "created_at": info.created_at,
        "size_bytes": info.size_bytes,
        "metadata": info.metadata,
        "answerability": "calibrated"
        if info.calibrated
        else "not calibrated for this embedding model: answers are not refused on answerability "
        "(fit one with `kbqa eval calibrate`)",
    }
