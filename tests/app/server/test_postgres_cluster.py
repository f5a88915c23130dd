"""Several nodes on one PostgreSQL, as a team scaling out runs them: two `kbqa serve` API nodes without an
ingestion worker of their own and two `kbqa worker` processes, all on one database and nothing else shared.

An upload through one node is searchable through the other once its job is done; a worker killed with -9
in the middle of a job leaves it to the other, which finishes it with every file stored once; a cancel
through either node stops a running job; the originals are read back through either node; and a
database restart makes requests fail fast with a 503 and recover by themselves; and an API node killed
with -9 right after it accepted an upload loses none of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from servers import KBQA, Server, clean_env, generated_files, upload, wait_until

from retrieval.postgres import WRITER_LOCK_CLASS

pytestmark = pytest.mark.slow

LEASE_S = 3


class Worker:
    """A `kbqa worker` subprocess."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = data_dir.parent / f"{data_dir.name}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [KBQA, "--data-dir", str(data_dir), "worker"],
                env=clean_env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_claiming(self) -> None:
        deadline = time.monotonic() + 120
        while "claiming ingestion jobs" not in self.output():
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def cluster(pg_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("cluster")
    env = {
        "KBQA_STORE__BACKEND": "postgres",
        "KBQA_STORE__DSN": pg_server.new_database(),
        "KBQA_STORE__JOB_LEASE_S": str(LEASE_S),
        "KBQA_STORE__CONNECT_TIMEOUT_S": "2",
        "KBQA_SERVER__INGEST_WORKER": "false",
        "KBQA_INGESTION__BATCH_CHUNKS": "4",
    }
    workers = [Worker(root / f"worker{i}", env) for i in (1, 2)]
    nodes: list[Server] = []
    clients: list[httpx.Client] = []
    try:
        with ThreadPoolExecutor(2) as starting:  # the two nodes load their models side by side
            nodes += starting.map(lambda i: Server(root / f"node{i}", env), (1, 2))
        for worker in workers:
            worker.wait_claiming()
        clients += [httpx.Client(base_url=node.url, timeout=30) for node in nodes]
        assert clients[0].post("/v1/kbs", json={"name": "shared"}).status_code == 201
        yield {"nodes": nodes, "http": clients, "workers": workers, "pg": pg_server, "env": env}
    finally:  # every process started here ends here, whatever failed
        for client in clients:
            client.close()
        for node in nodes:
            node.stop()
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
                try:
                    worker.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    worker.process.kill()
                    worker.process.wait()


def documents(http: httpx.Client) -> list[dict]:
    return http.get("/v1/kbs/shared/documents").json()["data"]


def test_an_upload_through_one_node_is_searchable_through_the_other(cluster: dict) -> None:
    first, second = cluster["http"]
    job = upload(
        first, "shared", [("vpn.md", b"# VPN\n\nConnect with the FortiClient app and your badge number.")]
    )
    done = wait_until(second, job["id"], seconds=120)  # the job is seen through the other node too
    assert done["status"] == "succeeded", done
    hits = second.post("/v1/kbs/shared/search", json={"query": "FortiClient VPN", "k": 1}).json()["data"]
    assert hits and hits[0]["source"] == "vpn.md"
    # The original is kept in the database: the other node hands it back as uploaded.
    (document,) = [d for d in documents(second) if d["source"] == "vpn.md"]
    original = second.get(f"/v1/kbs/shared/documents/{document['id']}/file")
    assert original.status_code == 200 and b"FortiClient" in original.content


def test_a_worker_killed_mid_job_leaves_it_to_the_other_and_every_file_is_stored_once(cluster: dict) -> None:
    first, second = cluster["http"]
    files = generated_files(24, seed=25)
    job = upload(first, "shared", files)
    running = wait_until(
        second, job["id"], lambda j: j["chunks_done"] > 0 or j["status"] != "queued", seconds=120
    )
    assert running["status"] == "running", running
    holder = _holder(cluster, job["id"])
    holder.process.send_signal(signal.SIGKILL)
    holder.process.wait()
    started = time.monotonic()
    done = wait_until(first, job["id"], seconds=240)
    assert done["status"] == "succeeded", done
    # Taken over within the lease (and a poll) of the kill, give or take the rest of the work.
    assert time.monotonic() - started < 240
    stored = [d["source"] for d in documents(first)]
    names = [name for name, _ in files]
    assert sorted(s for s in stored if s in names) == sorted(names), "each file stored exactly once"
    check = subprocess.run(
        [KBQA, "kb", "check", "shared"],
        env=clean_env(**cluster["env"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # A worker started again in its place joins the queue (for the tests after this one).
    cluster["workers"][cluster["workers"].index(holder)] = replacement = Worker(
        holder.log.parent / (holder.log.stem + "-again"), cluster["env"]
    )
    replacement.wait_claiming()


def test_a_running_job_is_cancelled_through_the_other_node(cluster: dict) -> None:
    first, second = cluster["http"]
    before = {d["source"] for d in documents(first)}
    # The job is held running, its worker waiting for the knowledge base's writer lock, taken here as another
    # node's writer holds it: the cancel lands while the job runs on a machine of any speed (a job of 24 small
    # files could end before a cancel on a fast one, and the test then failed by chance).
    with psycopg.connect(cluster["env"]["KBQA_STORE__DSN"], autocommit=True) as writer:
        (kb_id,) = writer.execute("SELECT id FROM knowledge_bases WHERE name = 'shared'").fetchone()
        writer.execute("SELECT pg_advisory_lock(%s, %s)", (WRITER_LOCK_CLASS, kb_id))
        job = upload(first, "shared", generated_files(24, seed=26))
        wait_until(
            first,
            job["id"],
            lambda j: j["status"] == "running" and "another writer" in (j.get("reading") or ""),
            seconds=120,
        )
        cancelled = second.post(f"/v1/jobs/{job['id']}/cancel")
        assert cancelled.status_code == 202, cancelled.text
        done = wait_until(
            first, job["id"], lambda j: j["status"] in ("cancelled", "succeeded", "failed"), seconds=60
        )
    assert done["status"] == "cancelled", done
    assert {d["source"] for d in documents(first)} == before  # nothing of the cancelled job was stored


def test_a_database_restart_fails_requests_fast_with_503_and_they_recover(cluster: dict) -> None:
    first, second = cluster["http"]
    pg = cluster["pg"]
    pg.stop()
    try:
        started = time.monotonic()
        response = first.post("/v1/kbs/shared/search", json={"query": "VPN"})
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "database_unavailable"
        assert time.monotonic() - started < 15
        assert second.get("/readyz").status_code == 503
        assert second.get("/v1/kbs").status_code == 503
    finally:
        pg.start()
    deadline = time.monotonic() + 60
    while (response := first.post("/v1/kbs/shared/search", json={"query": "VPN"})).status_code != 200:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.5)
    assert second.get("/readyz").status_code == 200
    # The workers come back too: a new upload is ingested.
    job = upload(second, "shared", [("after.md", b"# After\n\nThe database came back.")])
    assert wait_until(first, job["id"], seconds=120)["status"] == "succeeded"


def test_an_api_node_killed_after_accepting_an_upload_loses_none_of_it(cluster: dict) -> None:
    first, second = cluster["http"]
    files = generated_files(6, seed=27)
    job = upload(first, "shared", files)  # 202: the job and its files are committed in the database
    cluster["nodes"][0].kill()
    done = wait_until(second, job["id"], seconds=120)
    assert done["status"] == "succeeded", done
    stored = {d["source"] for d in documents(second)}
    assert {name for name, _ in files} <= stored


def _holder(cluster: dict, job_id: str) -> Worker:
    """Return the worker process that holds the job's lease (its pid is in the job row's worker)."""
    import psycopg

    with psycopg.connect(cluster["env"]["KBQA_STORE__DSN"]) as conn:
        (worker,) = conn.execute("SELECT worker FROM jobs WHERE id = %s", (job_id,)).fetchone()
    pid = int(worker.split(":")[1])
    (holder,) = [w for w in cluster["workers"] if w.process.pid == pid]
    assert os.getpid() != pid
    return holder
