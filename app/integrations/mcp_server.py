"""kbqa as a Model Context Protocol server (the official `mcp` SDK; the `mcp` extra).

Tools: `list_knowledge_bases`, `search` (chunks with their sources, pages and cosines) and `ask` (the
answer with its citations and answerability; a refusal says it is one). Each document is a resource,
`kbqa://<kb>/documents/<id>`, whose text is its chunks in reading order. `kbqa mcp` serves it over
stdio; `kbqa serve` mounts it at `/mcp` (streamable HTTP) behind the API keys (`app/server/mcp.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from mcp.server import MCPServer

    from app.services import KnowledgeService

from app.request_limits import MAX_HISTORY_TURNS, MAX_QUERY_CHARS, MAX_QUESTION_CHARS, MAX_TURN_CHARS

MAX_K = 20  # an assistant reads every passage a tool returns; the HTTP API allows more
DOCUMENT_URI = "kbqa://{kb}/documents/{document_id}"
INSTRUCTIONS = (
    "kbqa answers questions from local knowledge bases of documents, with citations. Call "
    "list_knowledge_bases first; then search for passages or ask for a cited answer. When ask says "
    "refused, the documents do not hold the answer: say so instead of guessing."
)


class Passage(BaseModel):
    """A chunk found or cited: where it comes from and how close it is."""

    n: int | None = Field(None, description="The [n] an answer cites it as.")
    source: str
    page: int | None
    heading: str = Field(description="The titles above it, joined by ' > '.")
    cosine: float = Field(description="Cosine similarity to the question, in [-1, 1].")
    document_uri: str
    text: str


class SearchResult(BaseModel):
    """The best passages for a query."""

    passages: list[Passage]
    answerability: float | None = Field(description="Probability in [0, 1] that they hold the answer.")


class AskResult(BaseModel):
    """An answer from the documents, or a refusal."""

    status: Literal["answered", "refused"]
    answer: str = Field(description="The answer, citing passages as [n]; a refusal says so.")
    citations: list[Passage]
    closest: list[Passage] = Field(description="When refused: the closest passages, which did not answer.")
    answerability: float | None
    searched_question: str | None = Field(
        None, description="The question actually searched, when a follow-up was rewritten with the history."
    )


class KnowledgeBaseSummary(BaseModel):
    """A knowledge base."""

    name: str
    documents: int
    chunks: int


class Turn(BaseModel):
    """An earlier turn of the conversation."""

    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_TURN_CHARS)


def build_server(service: KnowledgeService) -> MCPServer:
    """Return the MCP server over `service`'s knowledge bases (its tools run in worker threads)."""
    from mcp.server import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import Resource

    from llm import AnswerOptions, LLMError, Message
    from retrieval import KnowledgeBaseError, SearchOptions

    class KbqaMCP(MCPServer):
        async def list_resources(self) -> list[Resource]:
            """Return the static resources and one resource per document of every knowledge base."""
            from anyio import to_thread

            return [*await super().list_resources(), *await to_thread.run_sync(_document_resources, service)]

    server = KbqaMCP("kbqa", instructions=INSTRUCTIONS, version="0.1.0", log_level="WARNING")

    def user_error(action: Callable[[], Any]) -> Any:
        try:
            return action()
        except (KnowledgeBaseError, LLMError, ValueError) as error:  # what a caller can mend
            raise ToolError(str(error)) from error

    @server.tool(annotations={"readOnlyHint": True})
    def list_knowledge_bases() -> list[KnowledgeBaseSummary]:
        """List the knowledge bases with their document and chunk counts."""
        infos = [service.info(name) for name in service.names()]
        return [KnowledgeBaseSummary(name=i.name, documents=i.documents, chunks=i.chunks) for i in infos]

    @server.tool(annotations={"readOnlyHint": True})
    def search(
        kb: str,
        query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)],
        k: Annotated[int, Field(ge=1, le=MAX_K)] = 5,
        source: Annotated[
            str | None, Field(description="Only documents whose source matches this glob.")
        ] = None,
    ) -> SearchResult:
        """Search a knowledge base: the best passages with their source, page and cosine similarity."""
        found = user_error(lambda: service.retrieve(kb, query, SearchOptions(k=k, source=source)))
        passages = [_passage(kb, asdict(hit)) for hit in found.hits]
        return SearchResult(passages=passages, answerability=found.answerability)

    @server.tool(annotations={"readOnlyHint": True})
    def ask(
        kb: str,
        question: Annotated[str, Field(min_length=1, max_length=MAX_QUESTION_CHARS)],
        history: Annotated[list[Turn] | None, Field(max_length=MAX_HISTORY_TURNS)] = None,
        k: Annotated[int, Field(ge=1, le=MAX_K)] = 5,
    ) -> AskResult:
        """Answer a question from a knowledge base with citations [n]; status `refused` when the documents
        do not hold the answer."""
        turns = [Message(turn.role, turn.content) for turn in history or []]
        options = AnswerOptions(retrieval=SearchOptions(k=k), generation=service.generation_params())
        answer = user_error(lambda: service.ask(kb, question, turns, options).read())
        return AskResult(
            status="refused" if answer.refused else "answered",
            answer=answer.text,
            citations=[_passage(kb, asdict(c)) for c in answer.citations],
            closest=[_passage(kb, asdict(c)) for c in answer.closest],
            answerability=answer.answerability,
            # Answers say what was searched once follow-ups are rewritten (design.md, "Conversations").
            searched_question=getattr(answer, "searched_question", None),
        )

    @server.resource(DOCUMENT_URI, mime_type="text/plain")
    def document(kb: str, document_id: str) -> str:
        """Return a document's text: its chunks in reading order, with page marks."""
        from mcp.server.mcpserver.exceptions import ResourceError

        try:
            record = service.document(kb, int(document_id))
            chunks = service.document_chunks(kb, int(document_id))
        except (KnowledgeBaseError, ValueError) as error:
            raise ResourceError(str(error)) from error
        lines, page = [f"# {record.title or record.source}", f"source: {record.source}"], None
        for chunk in chunks:
            if chunk.page is not None and chunk.page != page:
                page = chunk.page
                lines.append(f"\n[page {page}]")
            lines.append(chunk.text)
        return "\n\n".join(lines)

    return server


def _passage(kb: str, hit: dict[str, Any]) -> Passage:
    """Return a search hit or a citation (as a dict) as a passage."""
    return Passage(
        n=hit.get("n"),
        source=hit["source"],
        page=hit.get("page"),
        heading=" > ".join(hit.get("heading_path") or ()),
        cosine=round(float(hit["score"]), 4),
        document_uri=DOCUMENT_URI.format(kb=kb, document_id=hit["document_id"]),
        text=hit["text"],
    )


def _document_resources(service: KnowledgeService) -> list[Any]:
    """Return one MCP resource per stored document."""
    from mcp.types import Resource

    return [
        Resource(
            uri=DOCUMENT_URI.format(kb=kb, document_id=record.id),
            name=f"{kb}/{record.source}",
            title=record.title or record.source,
            description=f"{record.chunk_count} chunks in knowledge base {kb}",
            mime_type="text/plain",
        )
        for kb in service.names()
        for record in service.documents(kb)
    ]
