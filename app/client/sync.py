"""`Client`: the kbqa HTTP API from Python, blocking (httpx)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx

from app.client import _calls
from app.client._calls import Call, Upload
from app.client.errors import StreamCut
from app.client.types import Answer, AnswerEvent, Document, Hit, Job, KnowledgeBase, Retrieval


class Client(_calls.ClientBase):
    """A kbqa server at `url`, with an API key when it needs one; 429 and 503 answers are tried again
    after the server's Retry-After (at most `retries` times, waiting at most `max_wait` seconds each)."""

    HTTP = httpx.Client
    _http: httpx.Client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections; return nothing."""
        self._http.close()

    def _send(self, call: Call, stream: bool = False) -> httpx.Response:
        """Return the successful response to `call` (open, when `stream`), after the retries."""
        attempt = 0
        while True:
            try:
                response = self._http.send(call.build(self._http), stream=stream)
            except httpx.TransportError as error:
                raise _calls.transport_error(error, self.url) from error
            delay = _calls.retry_delay(response, attempt, self.retries, self.max_wait)
            if delay is None:
                break
            response.close()
            time.sleep(delay)
            attempt += 1
        if stream and not response.is_success:
            response.read()
            response.close()
        return _calls.check(response)

    def _call(self, call: Call) -> Any:
        return call.read(self._send(call))

    # --- knowledge bases ---------------------------------------------------------------------------------

    def knowledge_bases(self) -> list[KnowledgeBase]:
        """Return every knowledge base with its counts."""
        return self._call(_calls.list_knowledge_bases())

    def knowledge_base(self, kb: str) -> KnowledgeBase:
        """Return one knowledge base (NotFound when there is none of that name)."""
        return self._call(_calls.get_knowledge_base(kb))

    def create_knowledge_base(
        self, name: str, store: str | None = None, uri: str | None = None
    ) -> KnowledgeBase:
        """Return the knowledge base created (Conflict when it exists)."""
        return self._call(_calls.create_knowledge_base(name, store, uri))

    def delete_knowledge_base(self, kb: str) -> None:
        """Delete a knowledge base with its documents; return nothing."""
        self._call(_calls.delete_knowledge_base(kb))

    # --- documents and jobs ------------------------------------------------------------------------------

    def upload(
        self,
        kb: str,
        files: Sequence[Upload],
        metadata: Mapping[str, str] | None = None,
        wait: bool = False,
        progress: Callable[[Job], None] | None = None,
        timeout: float = 600.0,
        groups: Sequence[str] | None = None,
    ) -> Job:
        """Return the job indexing `files` (paths, or (name, bytes)), with these access `groups` when given;
        with `wait`, the finished job, calling `progress(job)` at each poll."""
        job = self._call(_calls.upload(kb, files, metadata, groups))
        return self.wait(job.id, progress, timeout) if wait else job

    def wait(
        self,
        job_id: str,
        progress: Callable[[Job], None] | None = None,
        timeout: float = 600.0,
        poll: float = 0.5,
    ) -> Job:
        """Return the job once it has finished, calling `progress(job)` at each poll (KbqaError after `timeout`)."""
        watch = _calls.JobWatch(job_id, progress, timeout)
        while not watch.finished(job := self.job(job_id)):
            time.sleep(poll)
        return job

    def job(self, job_id: str) -> Job:
        """Return an ingestion job with its progress."""
        return self._call(_calls.get_job(job_id))

    def jobs(self, kb: str | None = None, limit: int = 50) -> list[Job]:
        """Return the newest jobs first (of `kb` only, when given)."""
        return self._call(_calls.list_jobs(kb, limit))

    def cancel_job(self, job_id: str) -> Job:
        """Return the job after asking it to stop (Conflict when it has finished)."""
        return self._call(_calls.cancel_job(job_id))

    def documents(self, kb: str) -> list[Document]:
        """Return the knowledge base's documents, oldest first."""
        return self._call(_calls.list_documents(kb))

    def document(self, kb: str, document_id: int) -> Document:
        """Return one document."""
        return self._call(_calls.get_document(kb, document_id))

    def document_file(self, kb: str, document_id: int) -> bytes:
        """Return the original file of a document uploaded over HTTP."""
        return self._call(_calls.document_file(kb, document_id))

    def delete_document(self, kb: str, document_id: int) -> None:
        """Delete one document with its chunks and original; return nothing."""
        self._call(_calls.delete_document(kb, document_id))

    def reindex_document(self, kb: str, document_id: int) -> Job:
        """Return the job that indexes the document's original again."""
        return self._call(_calls.reindex_document(kb, document_id))

    # --- search and answers ------------------------------------------------------------------------------

    def search(self, kb: str, query: str, k: int = 5, **options: Any) -> list[Hit]:
        """Return the best chunks for `query`; `options` are the API's (mode, score_threshold, source, metadata, …)."""
        return (self.retrieve(kb, query, k, **options)).hits

    def retrieve(self, kb: str, query: str, k: int = 5, **options: Any) -> Retrieval:
        """Return the best chunks for `query` with the probability that they hold its answer."""
        return self._call(_calls.search(kb, query, {"k": k, **options}))

    def ask(
        self,
        kb: str,
        question: str,
        history: Sequence[Any] = (),
        retrieval: Mapping[str, Any] | None = None,
        generation: Mapping[str, Any] | None = None,
    ) -> Answer:
        """Return the answer with its citations; `history` is the conversation so far, oldest first."""
        return self._call(_calls.ask(kb, question, list(history), retrieval, generation, stream=False))

    def ask_stream(
        self,
        kb: str,
        question: str,
        history: Sequence[Any] = (),
        retrieval: Mapping[str, Any] | None = None,
        generation: Mapping[str, Any] | None = None,
    ) -> Iterator[AnswerEvent]:
        """Yield the answer as it is made: `Sources`, `Delta`s, then `Done` with the whole answer; raise
        StreamCut when the server reports an error or the stream ends early."""
        call = _calls.ask(kb, question, list(history), retrieval, generation, stream=True)
        response = self._send(call, stream=True)
        reader = _calls.EventReader()
        try:
            for line in response.iter_lines():
                if (event := reader.line(line)) is not None:
                    yield event
        except httpx.TransportError as error:  # the connection broke mid-answer
            raise StreamCut(f"the answer stream broke off: {error}", "stream_cut") from error
        finally:
            response.close()
        reader.end()

    def ready(self) -> dict:
        """Return the server's readiness (`{"status": "ready", …}`; Unavailable while loading)."""
        return self._call(_calls.ready())
