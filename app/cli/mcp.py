"""`kbqa mcp`: the knowledge bases as a Model Context Protocol server over stdio, for assistants and editors."""

from __future__ import annotations

from app.cli.common import fail, run_or_fail, service


def mcp() -> None:
    """Serve the knowledge bases over MCP on stdin/stdout (tools: list_knowledge_bases, search, ask)."""
    import importlib.util

    if importlib.util.find_spec("mcp") is None:
        fail("the mcp package is missing: pip install 'kbqa[mcp]'", code=2)
    from app.integrations.mcp_server import build_server

    svc = service()
    # Before the first call, so a client's first question is not held up by loading the models.
    run_or_fail(svc.load_models)
    build_server(svc).run("stdio")
