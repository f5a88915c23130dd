"""What the sync and async clients share: each route as a `Call` (method, path, body, how to read the
answer), the retry rule, the error check and the server-sent-event reader; they only differ in waiting."""

from __future__ import annotations

import contextlib
import email.utils
import json
import mimetypes
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from app.client.errors import KbqaError, StreamCut, TransportError, api_error
from app.client.types import (
    Answer,
    AnswerEvent,
    Delta,
    Document,
    Done,
    Job,
    KnowledgeBase,
    Retrieval,
    Sources,
    turns,
)

# A file to upload: a path, or (name, bytes).
Upload = str | Path | tuple[str, bytes]
RETRY_STATUSES = (429, 503)


@dataclass
class Call:
    """One request to a route and how its answer is read."""

    method: str
    path: str
    read: Callable[[httpx.Response], Any]
    json: Any = None
    params: dict[str, Any] | None = None
    files: Sequence[Upload] = ()
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def build(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """Return the request afresh (files are read again, so a retry sends them whole)."""
        files = [("files", _file(upload)) for upload in self.files] or None
        return http.build_request(
            self.method,
            self.path,
            json=self.json,
            params=self.params,
            files=files,
            data=self.data,
            headers=self.headers or None,
        )


def _file(upload: Upload) -> tuple[str, bytes, str]:
    """Return (name, bytes, content type) of a file to upload."""
    if isinstance(upload, tuple):
        name, body = upload
    else:
        path = Path(upload)
        name, body = path.name, path.read_bytes()
    return name, body, mimetypes.guess_type(name)[0] or "application/octet-stream"


def _kb(kb: str) -> str:
    return quote(kb, safe="")


def _data(kind: type) -> Callable[[httpx.Response], list]:
    return lambda response: [kind.model_validate(item) for item in response.json()["data"]]


def _one(kind: type) -> Callable[[httpx.Response], Any]:
    return lambda response: kind.model_validate(response.json())


def _nothing(response: httpx.Response) -> None:
    return None


def connection(url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    """Return the settings of an httpx client for a kbqa server at `url`."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return {"base_url": url, "headers": headers, "timeout": timeout}


class ClientBase:
    """What both clients keep of their server: its address, their retry rule and their httpx client (of the
    class `HTTP`, blocking or async)."""

    HTTP: type[httpx.Client] | type[httpx.AsyncClient]

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        max_wait: float = 30.0,
        http: httpx.Client | httpx.AsyncClient | None = None,
    ) -> None:
        self.url, self.retries, self.max_wait = url.rstrip("/"), retries, max_wait
        self._http = http or self.HTTP(**connection(self.url, api_key, timeout))


class JobWatch:
    """One wait for a job to finish: each poll's job goes to `progress`; KbqaError once `timeout` has passed."""

    def __init__(self, job_id: str, progress: Callable[[Job], None] | None, timeout: float) -> None:
        self.job_id, self.progress, self.timeout = job_id, progress, timeout
        self.deadline = time.monotonic() + timeout

    def finished(self, job: Job) -> bool:
        """Return whether the polled job has finished (after showing it to `progress`); raise after the timeout."""
        if self.progress is not None:
            self.progress(job)
        if job.finished:
            return True
        if time.monotonic() > self.deadline:
            raise KbqaError(
                f"job {self.job_id} not finished after {self.timeout:g} s ({job.status})", "timeout"
            )
        return False


# --- the routes ------------------------------------------------------------------------------------------


def list_knowledge_bases() -> Call:
    """Return the call that lists knowledge bases."""
    return Call("GET", "/v1/kbs", _data(KnowledgeBase))


def get_knowledge_base(kb: str) -> Call:
    """Return the call that gets one knowledge base."""
    return Call("GET", f"/v1/kbs/{_kb(kb)}", _one(KnowledgeBase))


def create_knowledge_base(name: str, store: str | None, uri: str | None) -> Call:
    """Return the call that creates a knowledge base."""
    body = {"name": name, **({"store": store} if store else {}), **({"uri": uri} if uri else {})}
    return Call("POST", "/v1/kbs", _one(KnowledgeBase), json=body)


def delete_knowledge_base(kb: str) -> Call:
    """Return the call that deletes a knowledge base."""
    return Call("DELETE", f"/v1/kbs/{_kb(kb)}", _nothing)


def upload(
    kb: str, files: Sequence[Upload], metadata: Mapping[str, str] | None, groups: Sequence[str] | None = None
) -> Call:
    """Return the call that uploads files, with these access groups when given (answered with the job that
    indexes them)."""
    if not files:
        raise ValueError("upload needs at least one file")
    data = {"metadata": json.dumps(dict(metadata), ensure_ascii=False)} if metadata else {}
    if groups is not None:
        data["groups"] = ",".join(groups)
    data = data or None
    read = lambda response: Job.model_validate(response.json()["job"])  # noqa: E731
    return Call("POST", f"/v1/kbs/{_kb(kb)}/documents", read, files=list(files), data=data)


def list_documents(kb: str) -> Call:
    """Return the call that lists a knowledge base's documents."""
    return Call("GET", f"/v1/kbs/{_kb(kb)}/documents", _data(Document))


def get_document(kb: str, document_id: int) -> Call:
    """Return the call that gets one document."""
    return Call("GET", f"/v1/kbs/{_kb(kb)}/documents/{int(document_id)}", _one(Document))


def document_file(kb: str, document_id: int) -> Call:
    """Return the call that downloads a document's original file (its bytes)."""
    return Call("GET", f"/v1/kbs/{_kb(kb)}/documents/{int(document_id)}/file", lambda r: r.content)


def delete_document(kb: str, document_id: int) -> Call:
    """Return the call that deletes one document."""
    return Call("DELETE", f"/v1/kbs/{_kb(kb)}/documents/{int(document_id)}", _nothing)


def reindex_document(kb: str, document_id: int) -> Call:
    """Return the call that re-indexes one document (answered with its job)."""
    read = lambda response: Job.model_validate(response.json()["job"])  # noqa: E731
    return Call("POST", f"/v1/kbs/{_kb(kb)}/documents/{int(document_id)}/reindex", read)


def get_job(job_id: str) -> Call:
    """Return the call that gets an ingestion job."""
    return Call("GET", f"/v1/jobs/{quote(job_id, safe='')}", _one(Job))


def list_jobs(kb: str | None, limit: int) -> Call:
    """Return the call that lists jobs, newest first."""
    params = {"limit": limit, **({"kb": kb} if kb else {})}
    return Call("GET", "/v1/jobs", _data(Job), params=params)


def cancel_job(job_id: str) -> Call:
    """Return the call that cancels a job."""
    return Call("POST", f"/v1/jobs/{quote(job_id, safe='')}/cancel", _one(Job))


def search(kb: str, query: str, options: Mapping[str, Any]) -> Call:
    """Return the call that searches a knowledge base (`options`: k, mode, score_threshold, source, …),
    read as a `Retrieval` (hits and answerability)."""
    body = {"query": query, **{key: value for key, value in options.items() if value is not None}}
    return Call("POST", f"/v1/kbs/{_kb(kb)}/search", _one(Retrieval), json=body)


def ask(
    kb: str,
    question: str,
    history: Any,
    retrieval: Mapping[str, Any] | None,
    generation: Mapping[str, Any] | None,
    stream: bool,
) -> Call:
    """Return the call that asks a question (streamed as server-sent events when `stream`)."""
    body: dict[str, Any] = {"question": question, "history": turns(history), "stream": stream}
    if retrieval:
        body["retrieval"] = {key: value for key, value in retrieval.items() if value is not None}
    if generation:
        body["generation"] = {key: value for key, value in generation.items() if value is not None}
    headers = {"Accept": "text/event-stream"} if stream else {}
    return Call("POST", f"/v1/kbs/{_kb(kb)}/chat", _one(Answer), json=body, headers=headers)


def ready() -> Call:
    """Return the call that asks whether the server's models are loaded."""
    return Call("GET", "/readyz", lambda response: response.json())


# --- retries, errors, events -----------------------------------------------------------------------------


def retry_delay(response: httpx.Response, attempt: int, retries: int, longest: float) -> float | None:
    """Return how long to wait before trying again (the server's Retry-After, else 1, 2, 4 … s, at most
    `longest`), or None when the response is final: not a 429/503, or the retries are spent."""
    if response.status_code not in RETRY_STATUSES or attempt >= retries:
        return None
    given = response.headers.get("retry-after", "").strip()
    delay: float = 2.0**attempt
    if given.isdigit():
        delay = float(given)
    elif given:
        with contextlib.suppress(TypeError, ValueError):  # an HTTP date; unreadable: back off
            delay = email.utils.parsedate_to_datetime(given).timestamp() - time.time()
    return min(max(delay, 0.0), longest)


def check(response: httpx.Response) -> httpx.Response:
    """Return the (read) response when it succeeded; raise the server's error otherwise."""
    if response.is_success:
        return response
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    raise api_error(response.status_code, body)


def transport_error(error: httpx.TransportError, url: object) -> TransportError:
    """Return the client error of a connection that failed or broke."""
    return TransportError(f"kbqa at {url}: {type(error).__name__}: {error}", "connection_error")


class EventReader:
    """Turns the lines of a `/chat` event stream into `Sources`, `Delta` and `Done` events."""

    def __init__(self) -> None:
        self.name = "message"
        self.data: list[str] = []
        self.done = False

    def line(self, line: str) -> AnswerEvent | None:
        """Return the event a blank line completes, else None; raise StreamCut on an `error` event."""
        if line.startswith(":"):
            return None
        if line:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                self.name = value
            elif key == "data":
                self.data.append(value)
            return None
        if not self.data:
            return None
        name, data = self.name, json.loads("\n".join(self.data))
        self.name, self.data = "message", []
        if name == "error":
            error = data.get("error", {})
            raise StreamCut(error.get("message", "the server reported an error"), error.get("code", "error"))
        if name == "citations":
            return Sources.model_validate(data)
        if name == "delta":
            return Delta.model_validate(data)
        if name == "done":
            self.done = True
            return Done(answer=Answer.model_validate(data))
        return None  # an event a newer server adds

    def end(self) -> None:
        """Raise StreamCut when the stream ended before its `done` event."""
        if not self.done:
            raise StreamCut("the answer stream ended before it was done (the server cut it)", "stream_cut")
