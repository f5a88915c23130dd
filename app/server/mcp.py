"""The MCP server (`app.integrations.mcp_server`) mounted at /mcp: streamable HTTP behind the API keys, 503 while
the models load, as the API's routes."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.server.errors import error_body

if TYPE_CHECKING:
    from mcp.server import MCPServer

    from app.services import KnowledgeService

log = logging.getLogger(__name__)


def mcp_server(service: KnowledgeService) -> Any:
    """Return the MCP server to serve at /mcp, or None when the `mcp` extra is not installed."""
    if importlib.util.find_spec("mcp") is None:
        log.info("the mcp package is not installed: no MCP endpoint at /mcp")
        return None
    from app.integrations.mcp_server import build_server

    return build_server(service)


def mcp_routes(server: Any) -> list[Any]:
    """Return the /mcp route, for keys that read every document of every knowledge base (any request on a
    server without keys): its tools take any knowledge base."""
    from app.server.dependencies import reads_everything

    async def allowed(scope: Scope) -> bool:
        request = Request(scope)
        request.app.state.loading.refuse_while_loading()  # as the API's routes: 503 until the models load
        return reads_everything(request.scope["state"]["caller"])

    return http_routes(server, allowed)


@asynccontextmanager
async def mcp_running(server: Any) -> AsyncIterator[None]:
    """Run the MCP server's HTTP sessions while the app serves (nothing when there is no MCP server)."""
    if server is None:
        yield
        return
    async with session_manager(server):
        yield


class KeyedEndpoint:
    """The MCP endpoint behind the API keys: `allowed(scope)` says whether a request may pass, else 401
    with the API's JSON error body."""

    def __init__(self, app: ASGIApp, allowed: Callable[[Scope], Awaitable[bool]]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one request."""
        from fastapi.responses import JSONResponse

        if scope["type"] == "http" and not await self.allowed(scope):
            body = error_body("unauthorized", "a valid API key is required: Authorization: Bearer <key>")
            await JSONResponse(body, 401, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        await self.app(scope, receive, send)


def http_routes(server: MCPServer, allowed: Callable[[Scope], Awaitable[bool]]) -> list[Any]:
    """Return the route that serves `server` at /mcp (streamable HTTP, stateless), each request checked by
    `allowed`; run `session_manager(server)` for its lifetime."""
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.routing import Route

    # The service's own host checks and keys guard it; the SDK's DNS-rebinding guard would refuse any
    # Host header but localhost's, which breaks a server behind a proxy or on a LAN address.
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app = server.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True, transport_security=security
    )
    return [
        Route(route.path, KeyedEndpoint(route.app, allowed), methods=route.methods)  # type: ignore[attr-defined]
        for route in app.routes
        if getattr(route, "path", None) == "/mcp"
    ]


@asynccontextmanager
async def session_manager(server: MCPServer) -> AsyncIterator[None]:
    """Run the HTTP session manager of `server` (needed while /mcp serves)."""
    async with server.session_manager.run():
        yield
