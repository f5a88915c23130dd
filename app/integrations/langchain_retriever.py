"""`KbqaRetriever`: a LangChain retriever over a kbqa server (by URL) or an in-process knowledge service.

Each `Document` carries the chunk's text and, in its metadata, where it comes from (`source`, `page`,
`heading`), how close it is (`cosine`, in [-1, 1]) and how likely the hits hold the answer
(`answerability`, in [0, 1], the same for every hit of one query; None without a calibration).
Needs the `langchain` extra (`pip install 'kbqa[langchain]'`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, SecretStr

if TYPE_CHECKING:
    from app.services import KnowledgeService

# The per-call overrides `invoke(query, k=…)` takes; anything else is refused, not ignored.
OVERRIDES = ("k", "mode", "score_threshold", "source", "metadata_filter", "rerank")


class KbqaRetriever(BaseRetriever):
    """The best chunks of a kbqa knowledge base for a query, as LangChain documents.

    Give `url` (and `api_key` when the server has keys) to search a running kbqa, or `service` (a
    `KnowledgeService`) to search in this process. `k`, `mode`, `score_threshold`, `source` (a glob) and
    `metadata_filter` shape every search; `invoke(query, k=3)` overrides them for one call.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kb: str = Field(description="The knowledge base to search.")
    k: int = Field(5, ge=1, description="How many chunks to return.")
    mode: Literal["dense", "lexical", "hybrid"] | None = Field(None, description="None: the server's.")
    score_threshold: float | None = Field(None, ge=-1.0, le=1.0, description="Least cosine kept.")
    source: str | None = Field(None, description="Only documents whose source matches this glob.")
    metadata_filter: dict[str, str] | None = Field(None, description="Only documents with these metadata.")
    rerank: bool = Field(False, description="Re-score with the server's cross-encoder.")
    url: str | None = Field(None, description="A kbqa server, e.g. http://127.0.0.1:8000.")
    api_key: SecretStr | None = Field(None, description="The server's API key, when it has keys.")
    timeout: float = Field(120.0, gt=0, description="Seconds to wait for the server.")
    service: Any = Field(None, exclude=True, description="A KnowledgeService, to search in this process.")

    def model_post_init(self, context: Any) -> None:
        """Check that exactly one of `url` and `service` is given."""
        if (self.url is None) == (self.service is None):
            raise ValueError("give KbqaRetriever either url (a kbqa server) or service (in process)")

    def _options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Return the search options of one call: the fields, then the call's overrides."""
        unknown = set(overrides) - set(OVERRIDES)
        if unknown:
            raise TypeError(f"KbqaRetriever does not take {', '.join(sorted(unknown))}; it takes {OVERRIDES}")
        options = {name: getattr(self, name) for name in OVERRIDES} | overrides
        options["metadata"] = options.pop("metadata_filter")
        return options

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **overrides: Any
    ) -> list[Document]:
        options = self._options(overrides)
        if self.service is not None:
            return _in_process(self.service, self.kb, query, options)
        from app.client import Client

        with Client(self.url, self._key(), timeout=self.timeout) as client:  # type: ignore[arg-type]
            found = client.retrieve(self.kb, query, **options)
        return [_document(hit.model_dump(), found.answerability) for hit in found.hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **overrides: Any
    ) -> list[Document]:
        options = self._options(overrides)
        if self.service is not None:
            from anyio import to_thread

            return await to_thread.run_sync(_in_process, self.service, self.kb, query, options)
        from app.client import AsyncClient

        async with AsyncClient(self.url, self._key(), timeout=self.timeout) as client:  # type: ignore[arg-type]
            found = await client.retrieve(self.kb, query, **options)
        return [_document(hit.model_dump(), found.answerability) for hit in found.hits]

    def _key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None


def _in_process(service: KnowledgeService, kb: str, query: str, options: dict[str, Any]) -> list[Document]:
    """Return the documents of a search run by `service` in this process."""
    from dataclasses import asdict

    from retrieval import SearchOptions

    found = service.retrieve(kb, query, SearchOptions(**options))
    return [_document(asdict(hit), found.answerability) for hit in found.hits]


def _document(hit: dict[str, Any], answerability: float | None) -> Document:
    """Return a search hit (the API's or the service's fields) as a LangChain document."""
    metadata = {
        "source": hit["source"],
        "page": hit.get("page"),
        "heading": " > ".join(hit.get("heading_path") or []),
        "title": hit.get("title", ""),
        "cosine": hit["score"],
        "answerability": answerability,
        "document_id": hit["document_id"],
        "chunk_id": hit["chunk_id"],
        **{f"meta_{key}": value for key, value in (hit.get("metadata") or {}).items()},
    }
    return Document(page_content=hit["text"], metadata=metadata, id=str(hit["chunk_id"]))
