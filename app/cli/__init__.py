"""The `kbqa` command line: one module per command group, what they share in `common`.

Heavy libraries are imported inside commands so `kbqa --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from app.cli.ask import ask
from app.cli.common import Options
from app.cli.eval import eval_app
from app.cli.finetune import finetune_app
from app.cli.index import index_app
from app.cli.kb import kb_app
from app.cli.llm import llm_app
from app.cli.mcp import mcp
from app.cli.runtime import runtime_app
from app.cli.search import search
from app.cli.serve import serve
from app.cli.worker import worker

app = typer.Typer(help="kbqa: local knowledge-base question answering.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")
app.add_typer(llm_app, name="llm")
app.add_typer(finetune_app, name="finetune")
app.add_typer(runtime_app, name="runtime")
app.command("search")(search)
app.command("ask")(ask)
app.command("serve")(serve)
app.command("mcp")(mcp)
app.command("worker")(worker)


@app.callback()
def main_options(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML settings file (default: $KBQA_CONFIG, else built-in)."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Data directory (default: $KBQA_DATA_DIR, else ./data).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "warning",
    server: Annotated[
        str | None,
        typer.Option(
            "--server", help="A running kbqa (http://host:8000): `ask` and `search` use it instead."
        ),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="The --server's API key, if it has keys.")
    ] = None,
) -> None:
    """kbqa: local knowledge-base question answering."""
    Options.config = config
    Options.data_dir = data_dir
    Options.log_level = log_level
    Options.server = server
    Options.api_key = api_key


def main() -> None:
    """Run the command line."""
    from retrieval.errors import DatabaseError, DatabaseUnavailable

    try:
        app()
    except (DatabaseUnavailable, DatabaseError) as error:
        # The PostgreSQL store down, unreachable or unusable, met wherever a command first asks it: one line.
        from app.cli.common import errors

        errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())
