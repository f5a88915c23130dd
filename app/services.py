"""The operations behind every command and every HTTP route, over one set of settings.

One job, so one module past 400 lines: `KnowledgeService` is the facade the faces call (knowledge bases,
documents, ingestion, search, answers, the models it loads once); each method hands the work to the
package that does it in a few lines, and splitting the facade would only scatter its one set of settings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from app.examples import EXAMPLE_ANSWERABILITY, example_questions
from app.settings import Settings
from app.uploads import original_file
from ingestion import IngestionPipeline, IngestionReport, Progress, RunOptions, SourceFile, collect_files
from llm import (
    Answerer,
    AnswerOptions,
    AnswerStream,
    ExtractiveReader,
    GenerationParams,
    Message,
    Searched,
    TextStream,
    load_chat_model,
    search_turn,
)
from retrieval import (
    BatchingEmbedder,
    Calibration,
    ChunkRecord,
    ConsistencyReport,
    DocumentNotFound,
    DocumentRecord,
    Embedder,
    EmbeddingIdentity,
    KnowledgeBase,
    KnowledgeBaseCatalog,
    KnowledgeBaseError,
    KnowledgeBaseInfo,
    LogisticModel,
    OpenKnowledgeBases,
    Retrieval,
    Retriever,
    SearchHit,
    SearchOptions,
    VectorStore,
    check_groups,
    check_metadata,
    find_calibration,
    groups_visible,
    load_embedder,
    new_store,
)
from retrieval.atomic import atomic_write

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


class KnowledgeService:
    """Knowledge bases under the configured data directory, with the configured embedding model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        stores = settings.vector_store
        self.database = None
        if settings.store.backend == "postgres":
            from retrieval.pg_catalog import PgKnowledgeBaseCatalog
            from retrieval.postgres import shared_database

            self.database = shared_database(settings.store)
            self.catalog = PgKnowledgeBaseCatalog(self.database, settings.data_dir)
        else:
            self.catalog = KnowledgeBaseCatalog(settings.data_dir, stores.token, stores.faiss_gpu)
        # Shared by every request; callers do not close what `open` returns.
        self.knowledge_bases = OpenKnowledgeBases(self.catalog, settings.server.open_knowledge_bases)

    def close(self) -> None:
        """Close the knowledge bases held open; return nothing."""
        self.knowledge_bases.close()

    def database_problem(self) -> str | None:
        """Return why the PostgreSQL store cannot be used now, or None when it can (or the store is SQLite)."""
        if self.database is None:
            return None
        try:
            self.database.check()
        except KnowledgeBaseError as error:
            return str(error)
        return None

    @cached_property
    def embedder(self) -> Embedder:
        """Return the embedding model, loaded on first use; concurrent queries share it in micro-batches."""
        return BatchingEmbedder(load_embedder(self.settings.embedding), self.settings.query_batching)

    @cached_property
    def calibration(self) -> Calibration | None:
        """Return the embedding model's answerability calibration (the data directory's, else the bundled one)."""
        found = find_calibration(self.settings.data_dir, self.embedder.model_name)
        if found is None:
            log.warning(
                "no answerability calibration for this embedding model: answers are not refused on it; "
                "only an explicit score_threshold filters chunks (fit one with `kbqa eval calibrate`)",
                extra={"embedding_model": self.embedder.model_name},
            )
        return found

    @cached_property
    def retriever(self) -> Retriever:
        """Return the retriever over the embedding model, with the configured reranker (loaded on first use)."""
        reranker = self.settings.retrieval.reranker.model
        reranked = (
            find_calibration(self.settings.data_dir, self.embedder.model_name, reranker) if reranker else None
        )
        return Retriever(self.embedder, self.settings.retrieval, self.calibration, reranked)

    def create(self, name: str, store: str | None = None, uri: str | None = None) -> KnowledgeBase:
        """Create an empty knowledge base for the configured embedder and splitter; return it open.

        `store` picks where its vectors are searched: faiss (files in its directory) or milvus (a
        server at `uri`, or a Milvus Lite file inside its directory); unset, the configured `vector_store`.
        """
        identity = EmbeddingIdentity.of(self.embedder)
        settings = self._new_store(name, store, uri)
        return self.catalog.create(name, identity, self.settings.splitter.model_dump(), settings)

    def migrate(self, name: str, store: str, uri: str | None = None) -> None:
        """Move the named knowledge base's vectors to the `store` backend (rebuilt from SQLite), or the whole
        knowledge base to the `postgres` or `sqlite` store (ids, metadata, vectors and originals kept); return nothing."""
        if store in ("postgres", "sqlite"):
            if uri is not None:
                raise ValueError("--uri is for a Milvus store; the PostgreSQL store is store.dsn")
            self._move_store(name, store)
            return
        self.open(name).switch_store(self._new_store(name, store, uri))

    def _move_store(self, name: str, to: str) -> None:
        """Move the named knowledge base between the data directory's SQLite files and the PostgreSQL store."""
        from retrieval.pg_catalog import PgKnowledgeBaseCatalog
        from retrieval.postgres import shared_database
        from retrieval.store_migration import move_knowledge_base

        if self.settings.store.dsn is None:
            raise ValueError(
                "moving a knowledge base to or from PostgreSQL needs store.dsn (KBQA_STORE__DSN)"
            )
        stores = self.settings.vector_store
        files = KnowledgeBaseCatalog(self.settings.data_dir, stores.token, stores.faiss_gpu)
        database = PgKnowledgeBaseCatalog(shared_database(self.settings.store), self.settings.data_dir)
        source, target = (files, database) if to == "postgres" else (database, files)

        def carry_originals(old: KnowledgeBase) -> None:
            for document in old.documents():
                kept = original_file(files.path(name), document.source)
                if to == "postgres" and kept.is_file():
                    database.put_original(name, document.source, kept.read_bytes())
                elif to == "sqlite" and (content := database.original(name, document.source)) is not None:
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(kept, lambda tmp, content=content: Path(tmp).write_bytes(content))

        move_knowledge_base(name, source, target, carry_originals).close()

    def _new_store(self, name: str, store: str | None, uri: str | None) -> VectorStore:
        if self.database is not None:
            if store not in (None, "pgvector") or uri is not None:
                raise ValueError(
                    "with store.backend postgres, a knowledge base keeps its vectors in pgvector "
                    "(no --store faiss/milvus or URI)"
                )
            return VectorStore(backend="pgvector")
        configured = self.settings.vector_store
        store = store or configured.backend
        if store == "milvus" and uri is None:
            uri = configured.milvus_uri
        return new_store(name, store, uri)

    def open(self, name: str) -> KnowledgeBase:
        """Return the named knowledge base, kept open for every caller (do not close it); refuse one built
        with another embedding model."""
        kb = self.knowledge_bases.get(name)
        kb.manifest.check_embedding(EmbeddingIdentity.of(self.embedder))
        return kb

    def info(self, name: str) -> KnowledgeBaseInfo:
        """Return a summary of the named knowledge base."""
        return self.catalog.info(name)

    def delete(self, name: str) -> None:
        """Delete the named knowledge base, its documents and their originals (KnowledgeBaseBusy while it is written)."""
        with self.knowledge_bases.removing(name):
            self.catalog.delete(name)

    def documents(self, name: str, groups: frozenset[str] | None = None) -> list[DocumentRecord]:
        """Return the documents of the named knowledge base a caller limited to `groups` may see, oldest first."""
        return [d for d in self.knowledge_bases.get(name).documents() if groups_visible(d.groups, groups)]

    def document(self, name: str, document_id: int, groups: frozenset[str] | None = None) -> DocumentRecord:
        """Return one document of the named knowledge base (DocumentNotFound if it has no such id, or one a
        caller limited to `groups` may not see: the two look the same)."""
        document = self.knowledge_bases.get(name).document(document_id)
        if not groups_visible(document.groups, groups):
            raise DocumentNotFound(f"no document with id {document_id}")
        return document

    def set_groups(self, name: str, document_id: int, groups: Sequence[str]) -> DocumentRecord:
        """Replace one document's access groups (its chunks stay as they are); return the document."""
        checked = check_groups(groups)
        with (kb := self.open(name)).writing():
            kb.set_groups(document_id, checked)
            return kb.document(document_id)

    def document_chunks(self, name: str, document_id: int) -> list[ChunkRecord]:
        """Return the chunks of one document in reading order (DocumentNotFound if it has no such id)."""
        kb = self.knowledge_bases.get(name)
        kb.document(document_id)
        ids = kb.chunk_ids_where([document_id], None)
        return sorted(kb.store.chunks(sorted(ids)).values(), key=lambda chunk: chunk.ordinal)

    def delete_document(self, name: str, document_id: int) -> None:
        """Delete one document, its chunks and its original file."""
        with (kb := self.open(name)).writing():
            source = kb.document(document_id).source
            kb.delete_documents([document_id])
        if self.database is not None:
            self.catalog.delete_original(name, source)
        self.original_path(name, source).unlink(missing_ok=True)

    def kb_folder(self, name: str) -> Path:
        """Return the folder of the named knowledge base on this node (its originals are below it)."""
        return self.catalog.path(name)

    def original_path(self, name: str, source: str) -> Path:
        """Return where the original file of a document uploaded over HTTP is kept (long names shortened).

        On the PostgreSQL store the originals are in the database: this node's copy is made afresh from it
        (or removed, when the database has none), so a file replaced through another node is never stale.
        """
        path = original_file(self.kb_folder(name), source)
        if self.database is not None:
            content = self.catalog.original(name, source)
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, lambda tmp: Path(tmp).write_bytes(content))
        return path

    def ingest(
        self,
        name: str,
        paths: Sequence[Path],
        progress: Progress | None = None,
        metadata: Mapping[str, str] | None = None,
        groups: Sequence[str] | None = None,
    ) -> IngestionReport:
        """Ingest files and folders into the named knowledge base (created if missing); return the report.

        `metadata` and `groups`, when given, are set on every file of this run (see `RunOptions`).
        """
        # Checked before a missing knowledge base is created for nothing.
        options = RunOptions(
            metadata=None if metadata is None else check_metadata(metadata),
            groups=None if groups is None else check_groups(groups),
        )
        files, outcomes = collect_files(paths)
        if not self.catalog.exists(name):
            self.create(name).close()
        report = self.ingest_files(name, files, progress, options)
        report.outcomes[:0] = outcomes
        return report

    def ingest_files(
        self,
        name: str,
        files: Sequence[SourceFile],
        progress: Progress | None = None,
        options: RunOptions | None = None,
    ) -> IngestionReport:
        """Ingest `files` (each with its source name) into the existing knowledge base `name`, with the run's
        `options` (its metadata already checked); return the report."""
        with (kb := self.open(name)).writing():
            pipeline = IngestionPipeline(kb, self.embedder, self.settings.ingestion)
            return pipeline.run(files, progress, options)

    @cached_property
    def answerer(self) -> Answerer:
        """Return the answerer of the configured `llm` backend, its model loaded on first use."""
        config = self.settings.llm
        common = {
            "prompt": config.prompt,
            "generation": config.generation,
            "min_answerability": config.min_answerability,
        }
        if config.backend == "extractive":
            reader = self.extractive_reader(self.calibration.reader if self.calibration else None)
            return Answerer(reader=reader, **common)
        return Answerer(model=load_chat_model(config), **common)

    def generation_params(self, **overrides: object) -> GenerationParams:
        """Return the configured generation defaults with a request's non-None overrides applied."""
        config = self.settings.llm
        params = config.generation.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        if params.adapter is None and config.default_adapter:
            params = params.model_copy(update={"adapter": config.default_adapter})
        return GenerationParams.model_validate(params.model_dump())

    def ask(
        self,
        name: str,
        question: str,
        history: Sequence[Message] = (),
        options: AnswerOptions | None = None,
    ) -> AnswerStream:
        """Return the answer to `question` from the named knowledge base, as a stream: the turn is searched
        here (`search_turn`), and the answerer answers from what was found."""
        options = options or AnswerOptions()
        searched = self.search_turn(name, question, history, options.retrieval)
        return self.answerer.stream(question, searched, history, options.generation)

    def search_turn(
        self, name: str, question: str, history: Sequence[Message], options: SearchOptions
    ) -> Searched:
        """Return the question searched for a turn of a conversation in the named knowledge base (a follow-up
        made standalone by the generating model or the rules, or as typed) with what its search found."""
        return search_turn(
            question,
            history,
            lambda query: self.retrieve(name, query, options),
            self.settings.llm.followup,
            self.answerer.model,
            lambda terms: self.term_counts(name, terms),
        )

    def search(self, name: str, query: str, options: SearchOptions) -> list[SearchHit]:
        """Return the best chunks of the named knowledge base for `query`."""
        return self.retriever.search(self.open(name), query, options)

    def retrieve(self, name: str, query: str, options: SearchOptions) -> Retrieval:
        """Return the best chunks of the named knowledge base for `query`, with their answerability."""
        return self.retriever.retrieve(self.open(name), query, options)

    def term_counts(self, name: str, terms: Sequence[str]) -> dict[str, int]:
        """Return how many chunks of the named knowledge base hold each of these search terms (0: none)."""
        _, counts = self.open(name).term_counts(terms)
        return {term: counts.get(term, 0) for term in terms}

    # --- what the faces (HTTP, CLI) ask besides answers, so none reaches past the service ---------------

    def example_questions(self, name: str, count: int = 4, groups: frozenset[str] | None = None) -> list[str]:
        """Return up to `count` questions a newcomer could ask the named knowledge base, made from its headings,
        each one its search finds an answer to (answerability at least EXAMPLE_ANSWERABILITY); for a caller
        limited to `groups`, from the documents it may see only."""
        headings = self.knowledge_bases.get(name).headings()
        if groups is not None:
            seen = {d.id for d in self.documents(name, groups)}
            headings = [(document_id, path) for document_id, path in headings if document_id in seen]
        kept = []
        for question in example_questions(headings, 2 * count):
            found = self.retrieve(name, question, SearchOptions().within_groups(groups))
            if found.hits and (found.answerability is None or found.answerability >= EXAMPLE_ANSWERABILITY):
                kept.append(question)
            if len(kept) == count:
                break
        return kept

    def names(self) -> list[str]:
        """Return the names of the knowledge bases."""
        return self.catalog.names()

    def exists(self, name: str) -> bool:
        """Return whether the named knowledge base exists."""
        return self.catalog.exists(name)

    def building(self, name: str, wait: Callable[[], None]) -> AbstractContextManager[None]:
        """Return the lock under which one process at a time (on any node sharing the store) builds the named
        knowledge base; `wait()` runs between tries to take it (it may raise to give up)."""
        return self.catalog.building(name, wait)

    @property
    def root(self) -> Path:
        """Return the folder that holds the knowledge bases."""
        return self.catalog.root

    def check(self, name: str) -> ConsistencyReport:
        """Return whether the named knowledge base's vector index and chunk store agree (read from disk afresh)."""
        kb = self.catalog.open(name)
        try:
            return kb.check()
        finally:
            kb.close()

    def load_models(self) -> None:
        """Load the embedding model and the answerer with its chat model, if any; return nothing."""
        _ = self.embedder
        _ = self.answerer

    @property
    def embedding_model(self) -> str:
        """Return the name of the embedding model."""
        return self.embedder.model_name

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Return the embedding model's passage vectors (L2-normalised) of `texts`."""
        return self.embedder.embed_documents(texts)

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Return how many tokens the embedding model reads of `texts`, together."""
        return sum(self.embedder.count_tokens(text) for text in texts)

    def extractive_reader(self, model: LogisticModel | None = None) -> ExtractiveReader:
        """Return the configured extractive reader over the embedding model, scoring sentences with `model`."""
        return ExtractiveReader(self.embedder, self.settings.llm.extractive, model)

    def chat(self, messages: list[Message], params: GenerationParams) -> TextStream:
        """Return the bare chat model's reply to `messages` (no knowledge base), as a stream."""
        model = self.answerer.model
        if model is None:
            raise ValueError(f"the {self.settings.llm.backend} backend has no chat model")
        return model.stream(messages, params)
