"""The MCP server driven by the official SDK's client: over stdio (`kbqa mcp`) and over streamable HTTP at
`/mcp` of `kbqa serve`, where the API keys guard it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from servers import KBQA, Server, clean_env, serve_small_kb

pytestmark = pytest.mark.slow
KEY = "k1"
TOOLS = {"list_knowledge_bases", "search", "ask"}


@pytest.fixture(scope="module")
def kbqa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One kbqa server for the module; keys needed for reads too."""
    env = {"KBQA_SERVER__API_KEYS": f'["{KEY}"]', "KBQA_SERVER__PROTECT_READS": "true"}
    running = serve_small_kb(tmp_path_factory.mktemp("mcp"), env, api_key=KEY)
    yield running
    running.stop()


async def use(client: Client) -> None:
    """List the tools, the knowledge bases and the documents; search, ask, and be refused."""
    assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
    listed = await client.call_tool("list_knowledge_bases", {})
    assert not listed.is_error and "demo" in json.dumps(listed.structured_content)

    found = await client.call_tool("search", {"kb": "demo", "query": "年假有几天？", "k": 2})
    passages = found.structured_content["passages"]
    assert len(passages) == 2 and passages[0]["source"] == "leave.md" and "page" in passages[0]
    assert -1 <= passages[0]["cosine"] <= 1

    asked = await client.call_tool("ask", {"kb": "demo", "question": "年假有几天？"})
    answer = asked.structured_content
    assert answer["status"] == "answered" and "十天" in answer["answer"]
    assert answer["citations"][0]["source"] == "leave.md" and 0 <= answer["answerability"] <= 1
    assert "十天" in asked.content[0].text  # what a model reads

    refused = await client.call_tool("ask", {"kb": "demo", "question": "公司食堂几点开门？"})
    assert refused.structured_content["status"] == "refused" and not refused.structured_content["citations"]

    missing = await client.call_tool("search", {"kb": "nope", "query": "x"})
    assert missing.is_error and "nope" in missing.content[0].text

    resources = (await client.list_resources()).resources
    leave = next(r for r in resources if r.name == "demo/leave.md")
    text = (await client.read_resource(leave.uri)).contents[0].text
    assert "十天带薪年假" in text and "leave.md" in text


def test_over_stdio(kbqa: Server) -> None:
    """`kbqa mcp` reads the same data directory (the server only reads it meanwhile)."""
    params = StdioServerParameters(
        command=KBQA, args=["--data-dir", str(kbqa.data_dir), "mcp"], env=clean_env()
    )

    async def main() -> None:
        async with Client(params, read_timeout_seconds=120) as client:
            await use(client)

    anyio.run(main)


def test_over_http_with_a_key(kbqa: Server) -> None:
    async def main() -> None:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=120) as http,
            Client(streamable_http_client(f"{kbqa.url}/mcp", http_client=http)) as client,
        ):
            await use(client)

    anyio.run(main)


def test_http_without_a_key_is_refused(kbqa: Server) -> None:
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.post(f"{kbqa.url}/mcp", json=initialize, headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"
