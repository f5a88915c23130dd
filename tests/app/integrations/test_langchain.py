"""KbqaRetriever under LangChain's own standard retriever tests (langchain-tests), against a live
`kbqa serve` and in process, and LangChain's ChatOpenAI against /v1/chat/completions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.documents import Document
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import RetrieversIntegrationTests
from servers import Server, serve_small_kb

from app.integrations.langchain_retriever import KbqaRetriever
from app.services import KnowledgeService
from app.settings import load_settings

pytestmark = pytest.mark.slow
QUERY = "年假有几天？"


@pytest.fixture(scope="module")
def kbqa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One kbqa server for the module, extractive answers, knowledge base `demo`."""
    running = serve_small_kb(tmp_path_factory.mktemp("langchain"))
    yield running
    running.stop()


@pytest.mark.anyio
class TestKbqaRetrieverOverHTTP(RetrieversIntegrationTests):
    """The standard suite, each retriever searching the live server."""

    url: str = ""

    @pytest.fixture(autouse=True)
    def _server(self, kbqa: Server) -> None:
        type(self).url = kbqa.url

    @property
    def retriever_constructor(self) -> type[KbqaRetriever]:
        return KbqaRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"kb": "demo", "url": self.url}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


@pytest.fixture(scope="module")
def service(kbqa: Server, e5_embedder) -> Iterator[KnowledgeService]:
    """A knowledge service in this process over a copy of the server's data."""
    import shutil

    copy = kbqa.data_dir.parent / "copy"
    shutil.copytree(kbqa.data_dir, copy)
    svc = KnowledgeService(load_settings(data_dir=copy))
    svc.embedder = e5_embedder
    yield svc
    svc.close()


@pytest.mark.anyio
class TestKbqaRetrieverInProcess(RetrieversIntegrationTests):
    """The standard suite again, each retriever searching a knowledge service in this process."""

    svc: KnowledgeService | None = None

    @pytest.fixture(autouse=True)
    def _service(self, service: KnowledgeService) -> None:
        type(self).svc = service

    @property
    def retriever_constructor(self) -> type[KbqaRetriever]:
        return KbqaRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"kb": "demo", "service": self.svc}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


def test_documents_carry_source_page_heading_cosine_and_answerability(kbqa: Server) -> None:
    retriever = KbqaRetriever(kb="demo", url=kbqa.url, k=2, mode="hybrid")
    best = retriever.invoke(QUERY)[0]
    assert isinstance(best, Document) and "十天" in best.page_content
    meta = best.metadata
    assert meta["source"] == "leave.md" and meta["page"] is None and meta["heading"] == "年假制度"
    assert -1 <= meta["cosine"] <= 1 and 0 <= meta["answerability"] <= 1
    assert [d.metadata["source"] for d in retriever.invoke(QUERY, source="vpn*")] == ["vpn.md"]
    assert retriever.invoke(QUERY, score_threshold=0.99) == []
    with pytest.raises(TypeError, match="does not take"):
        retriever.invoke(QUERY, top_n=2)
    with pytest.raises(ValueError, match="either url"):
        KbqaRetriever(kb="demo")


def test_a_rag_chain_on_the_retriever(kbqa: Server) -> None:
    """The chain of docs/usage.md ("LangChain"), with kbqa's own OpenAI-compatible endpoint as the chat model."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    retriever = KbqaRetriever(kb="demo", url=kbqa.url, k=3)
    prompt = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")

    def format_docs(docs: list[Document]) -> str:
        return "\n\n".join(f"[{d.metadata['source']}] {d.page_content}" for d in docs)

    llm = ChatOpenAI(base_url=f"{kbqa.url}/v1", api_key="unused", model="demo")
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm
    assert (chain | StrOutputParser()).invoke(QUERY)


def test_chat_openai_whole_and_streamed(kbqa: Server) -> None:
    llm = ChatOpenAI(base_url=f"{kbqa.url}/v1", api_key="unused", model="demo", temperature=0)
    whole = llm.invoke([("user", QUERY)])
    assert "十天" in whole.content
    assert whole.response_metadata["finish_reason"] == "stop"
    chunks = list(llm.stream([("user", QUERY)]))
    assert len(chunks) > 1 and "".join(c.content for c in chunks).strip() == whole.content.strip()
    refused = llm.invoke([("user", "公司食堂几点开门？")])
    assert refused.content and "十天" not in refused.content
