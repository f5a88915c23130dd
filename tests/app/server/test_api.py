"""The HTTP API in process (FastAPI's TestClient runs the real app, its lifespan and background worker):
every endpoint's happy path and each error status, with the offline backends."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from documents import image_pdf, text_page_image
from fastapi.testclient import TestClient
from servers import LoadedTestClient, sse_events, wait_until

from app.server import create_app
from app.settings import load_settings
from ingestion.loaders.ocr import ocr_installed

POLICY = (
    "# 报销制度\n\n差旅费用应在出差结束后三十天内提交报销申请。审核通过后，报销款在五个工作日内打到工资卡。\n"
)
LEAVE = "# 休假制度\n\n员工工作满一年后享有带薪年假，每年十天。\n"


def make_client(data_dir: Path, e5_embedder, store: dict | None = None, **server: object) -> LoadedTestClient:
    app = create_app(load_settings(data_dir=data_dir, server=server, store=store))
    app.state.service.embedder = e5_embedder  # the session's loaded model, not a second copy
    return LoadedTestClient(app)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, e5_embedder
) -> Iterator[TestClient]:
    """The API over each store: SQLite files, or a database of its own on the session's PostgreSQL."""
    store = {"backend": "sqlite"}
    if request.param == "postgres":
        store = {"backend": "postgres", "dsn": request.getfixturevalue("pg_server").new_database()}
    data_dir = tmp_path_factory.mktemp("data")
    with make_client(data_dir, e5_embedder, store=store, max_upload_mb=0.05) as client:
        assert client.post("/v1/kbs", json={"name": "hr"}).status_code == 201
        job = upload(client, "hr", {"expenses.md": POLICY, "leave.md": LEAVE})
        assert wait(client, job)["status"] == "succeeded"
        yield client


def upload(client: TestClient, kb: str, files: dict[str, str | bytes], **form: str) -> dict:
    parts = [
        ("files", (name, io.BytesIO(c.encode() if isinstance(c, str) else c))) for name, c in files.items()
    ]
    response = client.post(f"/v1/kbs/{kb}/documents", files=parts, data=form)
    assert response.status_code == 202, response.text
    return response.json()["job"]


def wait(client: TestClient, job: dict, timeout: float = 60) -> dict:
    """Return the job once it has finished."""
    return wait_until(client, job["id"], seconds=timeout, poll=0.05)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["request_id"]
    assert response.headers["x-request-id"] == error["request_id"]
    return error


def documents(client: TestClient, kb: str) -> dict[str, dict]:
    return {d["source"]: d for d in client.get(f"/v1/kbs/{kb}/documents").json()["data"]}


# --- health -------------------------------------------------------------------------------------------


def test_health_readiness_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["embedding"] == "multilingual-e5-small"
    client.post("/v1/kbs/hr/search", json={"query": "年假"})
    text = client.get("/metrics").text
    assert 'kbqa_requests_total{method="POST",route="/v1/kbs/{kb}/search",status="200"}' in text
    assert "kbqa_ingestion_queue_depth 0.0" in text
    assert 'kbqa_ingested_files_total{status="added"}' in text


def test_request_ids_are_returned_and_taken_from_the_client(client: TestClient) -> None:
    assert len(client.get("/healthz").headers["x-request-id"]) == 32
    response = client.get("/v1/kbs/nope", headers={"X-Request-ID": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"
    assert assert_error(response, 404, "knowledge_base_not_found")["request_id"] == "trace-42"


# --- knowledge bases ----------------------------------------------------------------------------------


def test_knowledge_base_lifecycle(client: TestClient) -> None:
    created = client.post("/v1/kbs", json={"name": "手册-2025"})
    assert created.status_code == 201 and created.json()["documents"] == 0
    assert created.json()["embedding_model"] == "multilingual-e5-small"
    assert_error(client.post("/v1/kbs", json={"name": "手册-2025"}), 409, "knowledge_base_exists")
    names = [kb["name"] for kb in client.get("/v1/kbs").json()["data"]]
    assert {"hr", "手册-2025"} <= set(names)
    hr = client.get("/v1/kbs/hr").json()
    assert hr["documents"] == 2 and hr["chunks"] >= 2 and hr["size_bytes"] > 0
    assert client.delete("/v1/kbs/手册-2025").status_code == 204
    assert_error(client.get("/v1/kbs/手册-2025"), 404, "knowledge_base_not_found")
    assert_error(client.delete("/v1/kbs/手册-2025"), 404, "knowledge_base_not_found")


def test_a_knowledge_base_being_written_is_not_deleted(client: TestClient) -> None:
    assert client.post("/v1/kbs", json={"name": "busy"}).status_code == 201
    assert wait(client, upload(client, "busy", {"leave.md": LEAVE}))["status"] == "succeeded"
    service = client.app.state.service
    with service.open("busy").writing():  # as the ingestion worker holds it while indexing an upload
        assert_error(client.delete("/v1/kbs/busy"), 409, "knowledge_base_busy")
        assert client.get("/v1/kbs/busy").json()["documents"] == 1
    assert client.delete("/v1/kbs/busy").status_code == 204


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "", "x" * 65, "a b"])
def test_bad_knowledge_base_names_are_refused(client: TestClient, name: str) -> None:
    assert_error(client.post("/v1/kbs", json={"name": name}), 400, "invalid_name")


def test_malformed_and_invalid_bodies(client: TestClient) -> None:
    bad_json = client.post("/v1/kbs", content=b"{bad", headers={"content-type": "application/json"})
    assert_error(bad_json, 422, "invalid_request")
    assert_error(client.post("/v1/kbs", json={"name": "x", "extra": 1}), 422, "invalid_request")
    assert_error(client.post("/v1/kbs/hr/search", json={"query": "x", "k": 0}), 422, "invalid_request")
    assert_error(client.post("/v1/kbs/hr/search", json={"query": ""}), 422, "invalid_request")
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")


# --- documents and jobs -------------------------------------------------------------------------------


def test_upload_list_download_reindex_and_delete(client: TestClient) -> None:
    client.post("/v1/kbs", json={"name": "docs"})
    job = upload(
        client, "docs", {"backup.txt": "机房说明\n\n数据库每天凌晨两点自动备份。"}, metadata='{"team": "it"}'
    )
    assert job["status"] in ("queued", "running") and job["files_total"] == 1
    done = wait(client, job)
    assert done["status"] == "succeeded" and done["files_done"] == 1 and done["chunks_done"] >= 1
    assert done["files"] == [
        {"source": "backup.txt", "status": "added", "chunks": done["chunks_done"], "reason": None}
    ]
    document = documents(client, "docs")["backup.txt"]
    assert document["metadata"] == {"team": "it"} and document["chunk_count"] >= 1
    assert client.get(f"/v1/kbs/docs/documents/{document['id']}").json()["source"] == "backup.txt"
    original = client.get(f"/v1/kbs/docs/documents/{document['id']}/file")
    assert original.content.decode() == "机房说明\n\n数据库每天凌晨两点自动备份。"
    assert "backup.txt" in original.headers["content-disposition"]

    again = client.post(f"/v1/kbs/docs/documents/{document['id']}/reindex")
    assert again.status_code == 202 and again.json()["job"]["kind"] == "reindex"
    redone = wait(client, again.json()["job"])
    assert redone["status"] == "succeeded" and redone["files"][0]["status"] == "replaced"
    assert [j["id"] for j in client.get("/v1/jobs", params={"kb": "docs"}).json()["data"]] == [
        redone["id"],
        done["id"],
    ]

    new_id = documents(client, "docs")["backup.txt"]["id"]
    assert client.delete(f"/v1/kbs/docs/documents/{new_id}").status_code == 204
    assert documents(client, "docs") == {}
    assert_error(client.get(f"/v1/kbs/docs/documents/{new_id}"), 404, "document_not_found")
    assert_error(client.get(f"/v1/kbs/docs/documents/{new_id}/file"), 404, "document_not_found")
    assert client.post("/v1/kbs/docs/search", json={"query": "备份"}).json()["data"] == []


def test_upload_errors_leave_the_knowledge_base_as_it_was(client: TestClient) -> None:
    before = documents(client, "hr")
    assert_error(
        client.post("/v1/kbs/hr/documents", files=[("files", ("tool.exe", b"MZ"))]), 415, "unsupported_type"
    )
    assert_error(
        client.post("/v1/kbs/hr/documents", files=[("files", ("empty.txt", b""))]), 400, "empty_file"
    )
    big = ("big.txt", b"x" * 60_000)  # the module's app allows 0.05 MiB
    assert_error(client.post("/v1/kbs/hr/documents", files=[("files", big)]), 413, "file_too_large")
    mixed = [("files", ("fine.txt", b"fine text")), ("files", big)]
    assert_error(client.post("/v1/kbs/hr/documents", files=mixed), 413, "file_too_large")
    assert_error(
        client.post("/v1/kbs/nope/documents", files=[("files", ("a.txt", b"text"))]),
        404,
        "knowledge_base_not_found",
    )
    bad_meta = client.post(
        "/v1/kbs/hr/documents", files=[("files", ("a.txt", b"t"))], data={"metadata": "[1]"}
    )
    assert_error(bad_meta, 400, "invalid_metadata")
    assert_error(client.post("/v1/kbs/hr/documents"), 422, "invalid_request")
    assert documents(client, "hr") == before
    assert not list((client.app.state.settings.data_dir / "uploads").iterdir())  # nothing left staged


def test_a_broken_pdf_fails_its_job_and_changes_nothing(client: TestClient) -> None:
    before = client.get("/v1/kbs/hr").json()
    job = wait(
        client,
        upload(client, "hr", {"broken.pdf": b"%PDF-1.7\nthis is not a pdf", "ok.md": "# 好\n\n正常的文件。"}),
    )
    assert job["status"] == "failed" and "broken.pdf" in job["error"]
    outcomes = {f["source"]: f for f in job["files"]}
    assert outcomes["broken.pdf"]["status"] == "failed" and outcomes["broken.pdf"]["reason"]
    assert outcomes["ok.md"]["status"] == "added"
    after = client.get("/v1/kbs/hr").json()
    assert after["documents"] == before["documents"] + 1
    assert "broken.pdf" not in documents(client, "hr")
    client.delete(f"/v1/kbs/hr/documents/{documents(client, 'hr')['ok.md']['id']}")


@pytest.mark.skipif(not ocr_installed(), reason="needs the `ocr` extra")
def test_a_scan_shows_the_page_being_read_and_its_hits_are_marked_ocr(client: TestClient) -> None:
    pages = [
        text_page_image(["第一页：门禁卡遗失须当天报告。"]),
        text_page_image(["第二页：补办门禁卡收费二十元。"]),
    ]
    job = upload(client, "hr", {"scan.pdf": image_pdf(pages)})
    seen = set()
    deadline = time.monotonic() + 120
    while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job['id']}").json()
        seen.add(job["reading"])
        time.sleep(0.02)
    assert job["status"] == "succeeded" and job["reading"] is None, job
    assert seen & {"scan.pdf page 1/2", "scan.pdf page 2/2"}, seen  # OCR takes seconds a page
    hits = client.post("/v1/kbs/hr/search", json={"query": "补办门禁卡要多少钱", "k": 1}).json()["data"]
    assert (hits[0]["source"], hits[0]["page"], hits[0]["ocr"]) == ("scan.pdf", 2, True)
    assert "二十元" in hits[0]["text"]
    client.delete(f"/v1/kbs/hr/documents/{documents(client, 'hr')['scan.pdf']['id']}")


def test_path_tricks_in_file_names_are_reduced_to_the_name(client: TestClient) -> None:
    client.post("/v1/kbs", json={"name": "tricks"})
    job = wait(client, upload(client, "tricks", {"../../outside.md": "# 外面\n\n不应写到知识库之外。"}))
    assert job["status"] == "succeeded" and job["files"][0]["source"] == "outside.md"
    data_dir = client.app.state.settings.data_dir
    if client.app.state.settings.store.backend == "sqlite":
        assert (data_dir / "kbs" / "tricks" / "originals" / "outside.md").is_file()
    else:  # the original is kept in the database, under its reduced name
        assert client.app.state.service.catalog.original("tricks", "outside.md") is not None
    assert not (data_dir.parent / "outside.md").exists()
    response = client.post("/v1/kbs/tricks/documents", files=[("files", ("..", b"x"))])
    assert response.status_code in (400, 415)


def test_unknown_job_is_404(client: TestClient) -> None:
    assert_error(client.get("/v1/jobs/0123"), 404, "job_not_found")


# --- search and chat ----------------------------------------------------------------------------------


def test_search_returns_cosine_scores_and_honours_options(client: TestClient) -> None:
    hits = client.post("/v1/kbs/hr/search", json={"query": "报销款多久到账", "k": 2}).json()["data"]
    assert hits[0]["source"] == "expenses.md" and -1 <= hits[0]["score"] <= 1
    assert hits[0]["score"] >= hits[1]["score"]
    strict = client.post("/v1/kbs/hr/search", json={"query": "报销款多久到账", "score_threshold": 0.999})
    assert strict.json()["data"] == []
    only = client.post("/v1/kbs/hr/search", json={"query": "报销", "source": "leave*"}).json()["data"]
    assert {h["source"] for h in only} == {"leave.md"}
    assert_error(client.post("/v1/kbs/nope/search", json={"query": "x"}), 404, "knowledge_base_not_found")


def test_chat_answers_with_citations(client: TestClient) -> None:
    response = client.post("/v1/kbs/hr/chat", json={"question": "报销款多久能打到工资卡？"})
    body = response.json()
    assert response.status_code == 200 and "五个工作日" in body["answer"]
    assert (
        body["citations"][0]["source"] == "expenses.md" and f"[{body['citations'][0]['n']}]" in body["answer"]
    )
    assert body["grounded"] and not body["refused"] and body["timings"]["total_ms"] > 0


def test_chat_stream_sends_citations_deltas_and_done(client: TestClient) -> None:
    with client.stream(
        "POST", "/v1/kbs/hr/chat", json={"question": "年假有几天？", "stream": True}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.iter_lines())
    names = [n for n, _ in events]
    assert names[0] == "citations" and names[-1] == "done" and "delta" in names
    done = events[-1][1]
    assert done["answer"] == "".join(d["text"] for n, d in events if n == "delta")
    assert {c["chunk_id"] for c in done["citations"]} <= {c["chunk_id"] for c in events[0][1]["citations"]}


def test_chat_refuses_when_nothing_passes_the_threshold(client: TestClient) -> None:
    body = client.post(
        "/v1/kbs/hr/chat", json={"question": "公司的股票代码是多少？", "retrieval": {"score_threshold": 0.99}}
    ).json()
    assert body["answer"] == "根据已知信息无法回答该问题。" and body["refused"] and body["citations"] == []


def test_chat_refuses_what_the_documents_do_not_hold_and_shows_the_closest(client: TestClient) -> None:
    body = client.post("/v1/kbs/hr/chat", json={"question": "Who won the 2022 World Cup?"}).json()
    assert body["refused"] and body["answer"] == "The provided information does not answer this question."
    assert 0 <= body["answerability"] < 0.2 and body["citations"] == []
    assert body["closest"] and {c["source"] for c in body["closest"]} <= {"expenses.md", "leave.md"}
    answered = client.post("/v1/kbs/hr/chat", json={"question": "年假有几天？"}).json()
    assert not answered["refused"] and answered["answerability"] >= 0.2 and answered["closest"] == []
    info = client.get("/v1/kbs/hr").json()
    assert info["answerability_calibrated"] is True
    completion = client.post(
        "/v1/chat/completions",
        json={"model": "hr", "messages": [{"role": "user", "content": "Who won the 2022 World Cup?"}]},
    ).json()
    assert completion["refused"] and completion["answerability"] < 0.2 and completion["closest"]


def test_chat_errors(client: TestClient) -> None:
    assert_error(client.post("/v1/kbs/nope/chat", json={"question": "x"}), 404, "knowledge_base_not_found")
    assert_error(client.post("/v1/kbs/hr/chat", json={"question": ""}), 422, "invalid_request")
    bad_role = {"question": "x", "history": [{"role": "system", "content": "y"}]}
    assert_error(client.post("/v1/kbs/hr/chat", json=bad_role), 422, "invalid_request")


# --- OpenAI-compatible --------------------------------------------------------------------------------


def test_openai_models_completions_and_embeddings(client: TestClient) -> None:
    models = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert "hr" in models
    completion = client.post(
        "/v1/chat/completions",
        json={"model": "hr", "messages": [{"role": "user", "content": "年假有几天？"}]},
    ).json()
    assert completion["object"] == "chat.completion"
    assert "十天" in completion["choices"][0]["message"]["content"]
    assert completion["citations"][0]["source"] == "leave.md"
    assert_error(
        client.post(
            "/v1/chat/completions", json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}
        ),
        404,
        "model_not_found",
    )
    vectors = client.post("/v1/embeddings", json={"input": ["年假", "报销"], "model": "any"}).json()
    assert [len(v["embedding"]) for v in vectors["data"]] == [384, 384]
    assert abs(sum(x * x for x in vectors["data"][0]["embedding"]) - 1) < 1e-3


# --- settings: keys and CORS --------------------------------------------------------------------------


def test_api_keys_guard_writes(tmp_path: Path, e5_embedder) -> None:
    with make_client(tmp_path / "data", e5_embedder, api_keys=["k1"]) as client:
        assert_error(client.post("/v1/kbs", json={"name": "a"}), 401, "unauthorized")
        bad = client.post("/v1/kbs", json={"name": "a"}, headers={"Authorization": "Bearer k2"})
        assert_error(bad, 401, "unauthorized")
        ok = client.post("/v1/kbs", json={"name": "a"}, headers={"Authorization": "Bearer k1"})
        assert ok.status_code == 201
        assert client.get("/v1/kbs").status_code == 200  # reads stay open unless protect_reads


def test_cors_origins_from_settings(tmp_path: Path, e5_embedder) -> None:
    with make_client(tmp_path / "data", e5_embedder, cors_origins=["http://intranet"]) as client:
        preflight = client.options(
            "/v1/kbs", headers={"Origin": "http://intranet", "Access-Control-Request-Method": "POST"}
        )
        assert preflight.headers["access-control-allow-origin"] == "http://intranet"
        other = client.get("/v1/kbs", headers={"Origin": "http://evil"})
        assert "access-control-allow-origin" not in other.headers


# --- a local model ------------------------------------------------------------------------------------


def test_a_local_model_answers_and_a_full_queue_is_503(
    tmp_path: Path, e5_embedder, tiny_lm_dir: Path
) -> None:
    from llm import GenerationParams, Message

    llm = {"backend": "transformers", "model": str(tiny_lm_dir), "device": "cpu", "queue_size": 0}
    app = create_app(load_settings(data_dir=tmp_path / "data", llm=llm))
    app.state.service.embedder = e5_embedder
    with LoadedTestClient(app) as client:
        client.post("/v1/kbs", json={"name": "hr"})
        assert wait(client, upload(client, "hr", {"expenses.md": POLICY}))["status"] == "succeeded"
        question = {"question": "报销款多久到账？", "generation": {"max_new_tokens": 4}}
        answer = client.post("/v1/kbs/hr/chat", json=question).json()
        assert answer["grounded"] and 0 < answer["usage"]["completion_tokens"] <= 4
        assert answer["usage"]["prompt_tokens"] > 20

        held = app.state.service.answerer.model.stream(
            [Message("user", "hi")], GenerationParams(max_new_tokens=64)
        )
        next(held)  # the model is busy and nobody may wait
        busy = client.post("/v1/kbs/hr/chat", json=question)
        assert_error(busy, 503, "model_busy")
        assert busy.headers["retry-after"]
        held.close()

        bare = tiny_lm_dir.name
        assert bare in [m["id"] for m in client.get("/v1/models").json()["data"]]
        plain = client.post(
            "/v1/chat/completions",
            json={"model": bare, "messages": [{"role": "user", "content": "你好"}], "max_tokens": 3},
        ).json()
        assert plain["usage"]["completion_tokens"] <= 3 and "citations" not in plain
        generated = [
            line
            for line in client.get("/metrics").text.splitlines()
            if line.startswith("kbqa_generated_tokens")
        ]
        assert (
            float(generated[0].split()[-1])
            == answer["usage"]["completion_tokens"] + plain["usage"]["completion_tokens"]
        )


def test_an_oversized_upload_is_refused_before_its_body_is_read(tmp_path: Path, e5_embedder) -> None:
    with make_client(tmp_path / "data", e5_embedder, max_upload_mb=0.01, max_upload_files=2) as client:
        client.post("/v1/kbs", json={"name": "hr"})
        files = [("files", (f"{i}.txt", b"x" * 400_000)) for i in range(4)]
        assert_error(client.post("/v1/kbs/hr/documents", files=files), 413, "upload_too_large")
        assert_error(client.post("/v1/kbs/hr/documents", files=files[:1]), 413, "file_too_large")
