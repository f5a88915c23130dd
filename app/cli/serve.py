"""`kbqa serve`: the web service under uvicorn."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import Options, errors, fail, settings

# Seconds `kbqa serve` waits, after SIGTERM, for open requests (a long stream) before cutting them off.
GRACEFUL_SHUTDOWN_S = 10


def serve(
    host: Annotated[str | None, typer.Option("--host", help="Address (default: server.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default: server.port).")] = None,
    sample_kb: Annotated[
        str | None,
        typer.Option(
            "--sample-kb", help="Build this knowledge base from server.sample_docs if it is missing."
        ),
    ] = None,
) -> None:
    """Run the web service: REST API, OpenAI-compatible API and the web page."""
    import uvicorn

    from app.server import create_app
    from app.server.announcing import AnnouncingServer

    chosen = settings("INFO" if Options.log_level.upper() == "WARNING" else Options.log_level)
    overrides = {"host": host, "port": port, "sample_kb": sample_kb}
    server = chosen.server.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    chosen = chosen.model_copy(update={"server": server})
    if chosen.store.backend == "sqlite":  # on PostgreSQL the nodes share the database, not a data directory
        _check_data_dir_free(chosen.data_dir)
    url = f"http://{'127.0.0.1' if server.host in ('0.0.0.0', '::') else server.host}:{server.port}"
    # One address a line, never wrapped: a terminal narrower than a line cuts nothing in the middle of a URL.
    banner = (
        f"kbqa: web page {url}/\n      API docs {url}/docs\n      data in  {chosen.data_dir.resolve()}\n"
        f"      loading the models ({url}/readyz shows progress); Ctrl-C stops"
    )
    web = create_app(chosen)
    # On SIGTERM, requests still open after this long are cut off; the ingestion worker then stops within
    # its batch at hand (docs/usage.md, "The web service").
    config = uvicorn.Config(
        web,
        host=server.host,
        port=server.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    say = partial(errors.print, soft_wrap=True, highlight=False, markup=False)
    AnnouncingServer(config, banner, web.state.loading, say).run()


def _check_data_dir_free(data_dir: Path) -> None:
    """Exit with a clear message, before any model loads, when another server runs on `data_dir`."""
    from app.jobs import DataDirectoryInUse, ServerLock

    claim = ServerLock(data_dir)
    try:
        claim.acquire()  # held for real by the server's ingestion jobs once it starts
    except DataDirectoryInUse as error:
        fail(str(error))
    claim.release()
