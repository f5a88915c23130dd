"""Web-service load benchmark: `kbqa serve` under N concurrent clients, against retrieval in-process.

The real server runs in a subprocess on loopback (`kbqa --data-dir DIR serve --sample-kb demo`, which
builds the demo knowledge base from examples/docs on first start into a temporary data directory, or uses
the one under `--data-dir`). Once /readyz says ready, each level is driven by a separate client process
(this script again, with `--client`): N asyncio workers over one httpx connection pool, each sending its
next request as soon as its last one is answered, with questions in Chinese and English about the sample
documents taken in turn. Endpoints, each at every N of `--concurrency`, for `--seconds` (or `--requests`):

- `POST /v1/kbs/demo/search` `{"query"}`: latency to the whole JSON body.
- `POST /v1/kbs/demo/chat` `{"question", "stream": true}` with the configured backend (extractive by
  default): the server-sent events are read to the end; latency is to the `done` event, and the time to
  the first `delta` event is recorded too.

A request fails on a status other than 200, an `error` event, a stream without `done`, or an exception
(a timeout, a dropped connection); the failures column counts them all and the most common messages are
printed below the table. One warm-up pass over the questions on each endpoint comes first. After the
server has stopped, this process opens the same data directory with `KnowledgeService` and runs the
same searches sequentially, so the ratio of HTTP `/search` p50 at N=1 to in-process p50 is what HTTP,
JSON and a second process add to one search. Client and server share the machine's cores, so at high N
the client's own CPU (a column) is taken from the server. The server inherits the environment: on a small
machine busy with other work, the embedding engine's OpenMP threads stall each other (single searches
taking seconds), and OMP_NUM_THREADS=1 steadies the figures. The server keeps the vectors of recent queries
(`query_batching.cache_size`), so after the warm-up the questions in turn are all answered from it; with
`--distinct` each request's question is made unique (its turn and a per-level salt added), so none is: the
figures of users who never repeat a question. Run from the repository root:

    .venv/bin/python bench/serve.py --seconds 10
    OMP_NUM_THREADS=1 .venv/bin/python bench/serve.py --seconds 10
    .venv/bin/python bench/serve.py --concurrency 1,16 --requests 500 --json
    OMP_NUM_THREADS=1 .venv/bin/python bench/serve.py --seconds 10 --distinct
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import aligned_table

from app.evaluation import percentile
from app.services import KnowledgeService
from app.settings import load_settings
from retrieval import SearchOptions

REPO_ROOT = Path(__file__).resolve().parent.parent
ENDPOINTS = ("search", "chat")
# Questions the sample documents answer (see examples/README.md), in the languages they are written in.
QUESTIONS = (
    "年假有几天？",
    "报销需要多久到账？",
    "星河X1 的麦克风拾音距离是多少？",
    "账号被锁定了怎么办？",
    "国庆节放几天假，哪天调休上班？",
    "What is the hotel limit in Tokyo?",
    "星河X1 Pro 的价格是多少？",
    "How much is the per diem for meals on a business trip?",
    "密码多久过期？",
    "在家如何连接公司内网？",
    "Who approves an expense claim first, and when is it paid?",
    "公司有多少员工？研发人员占比多少？",
    "星河X1 的保修期是多久？",
    "Which flights allow business class?",
    "办公室 Wi-Fi 叫什么？",
    "病假每年有几天？",
)
ERRORS_SHOWN = 3


@dataclass
class Level:
    """One endpoint driven by one number of concurrent clients, and what came of it."""

    endpoint: str
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    first_deltas: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    server_cpu_seconds: float = 0.0
    client_cpu_seconds: float = 0.0

    @property
    def requests(self) -> int:
        """Return how many requests finished, failed ones included."""
        return len(self.latencies) + self.failed

    @property
    def failed(self) -> int:
        """Return how many requests failed."""
        return sum(self.errors.values())

    def figures(self) -> dict[str, Any]:
        """Return the level's figures (milliseconds, requests/s, CPU cores busy) for the table and JSON."""
        figures: dict[str, Any] = {
            "endpoint": self.endpoint,
            "clients": self.clients,
            "requests": self.requests,
            "failed": self.failed,
            "requests_per_second": round(self.requests / self.seconds, 2),
            "server_cpu_cores": round(self.server_cpu_seconds / self.seconds, 2),
            "client_cpu_cores": round(self.client_cpu_seconds / self.seconds, 2),
        }
        figures |= latency_figures("", self.latencies)
        if self.endpoint == "chat":
            figures |= latency_figures("first_delta_", self.first_deltas)
        return figures | {"errors": dict(self.errors.most_common())}


def question(turn: int, salt: str | None) -> str:
    """Return the question of a request: the questions in turn, each made unique by its turn and `salt` if given."""
    asked = QUESTIONS[turn % len(QUESTIONS)]
    return f"{asked} (#{turn}-{salt})" if salt else asked


def latency_figures(prefix: str, seconds: list[float]) -> dict[str, float]:
    """Return the p50, p95 and p99 of `seconds` in milliseconds, keyed `<prefix>p50_ms` and so on."""
    return {f"{prefix}p{q}_ms": round(1000 * percentile(seconds, q / 100), 2) for q in (50, 95, 99)}


# --- the client process -----------------------------------------------------------------------------


async def search_once(client: httpx.AsyncClient, kb: str, question: str) -> tuple[float, None]:
    """Search once; return (seconds to the whole body, None), raising RuntimeError on a non-200."""
    started = time.perf_counter()
    response = await client.post(f"/v1/kbs/{kb}/search", json={"query": question})
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    response.json()  # a body that is not JSON fails the request
    return time.perf_counter() - started, None


async def chat_once(client: httpx.AsyncClient, kb: str, question: str) -> tuple[float, float | None]:
    """Ask once with streaming; return (seconds to `done`, seconds to the first `delta`), raising on failure."""
    started = time.perf_counter()
    first_delta = None
    body = {"question": question, "stream": True}
    async with client.stream("POST", f"/v1/kbs/{kb}/chat", json=body) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            raise RuntimeError(f"HTTP {response.status_code}: {text[:300]}")
        event = None
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                if event == "delta" and first_delta is None:
                    first_delta = time.perf_counter() - started
                elif event == "error":
                    raise RuntimeError(f"error event: {line.removeprefix('data:').strip()[:300]}")
                elif event == "done":
                    return time.perf_counter() - started, first_delta
    raise RuntimeError("the stream ended without a done event")


async def drive(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one level as `spec` says; return its samples, wall seconds and this process's CPU seconds."""
    clients = spec["clients"]
    ask = search_once if spec["endpoint"] == "search" else chat_once
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    turns = itertools.count()
    salt = os.urandom(4).hex() if spec["distinct"] else None  # unique to this level
    samples: list[tuple[float | None, float | None, str | None]] = []
    async with httpx.AsyncClient(base_url=spec["url"], timeout=spec["timeout"], limits=limits) as client:
        started, cpu_started = time.perf_counter(), time.process_time()
        deadline = started + spec["seconds"] if spec["requests"] is None else float("inf")

        async def worker() -> None:
            last_turn = spec["requests"] or sys.maxsize
            while (turn := next(turns)) < last_turn and time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    latency, first_delta = await ask(client, spec["kb"], question(turn, salt))
                    samples.append((latency, first_delta, None))
                except Exception as error:  # every way a request can fail is a figure here
                    # Timeouts carry no message, so the seconds waited say which limit was hit.
                    message = f"{type(error).__name__} after {time.perf_counter() - sent:.0f}s: {error}"
                    samples.append((None, None, message))

        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"seconds": seconds, "cpu_seconds": cpu, "samples": samples}


# --- the benchmark process --------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Server:
    """The server process, its base URL and its log file."""

    process: subprocess.Popen
    url: str
    log: Path


@contextmanager
def running_server(
    data_dir: Path, kb: str | None, config: Path | None, log: Path, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Start `kbqa serve` on a free loopback port (building `kb` from the sample documents unless None),
    with `env` added to this process's environment, logging to `log`; yield it; stop it on exit."""
    kbqa = Path(sys.executable).parent / "kbqa"
    port = free_port()
    options = ["--data-dir", str(data_dir)] + (["--config", str(config)] if config else [])
    command = [str(kbqa), *options, "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--sample-kb", kb] if kb else []
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=output, stderr=output, env=os.environ | (env or {})
        )
    try:
        yield Server(process, f"http://127.0.0.1:{port}", log)
    finally:
        process.terminate()  # uvicorn shuts down gracefully on SIGTERM
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(server: Server, timeout: float) -> dict[str, Any]:
    """Poll /readyz until it says ready; return its body (SystemExit with the log if the server fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            status = server.process.returncode
            sys.exit(f"the server exited with status {status}:\n{server.log.read_text()[-3000:]}")
        try:
            response = httpx.get(f"{server.url}/readyz", timeout=5)
            body = response.json()
            if response.status_code == 200:
                return body
            if body.get("status") == "failed":
                sys.exit(f"the server could not load its models: {body.get('error')}")
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    sys.exit(f"the server was not ready within {timeout:.0f}s:\n{server.log.read_text()[-3000:]}")


def run_level(
    server: Server, endpoint: str, clients: int, args: argparse.Namespace, requests: int | None
) -> Level:
    """Drive one level from a client process while watching the server's CPU; return its figures."""
    spec = {
        "url": server.url,
        "kb": args.kb,
        "endpoint": endpoint,
        "clients": clients,
        "seconds": args.seconds,
        "requests": requests,
        "timeout": args.timeout,
        "distinct": args.distinct,
    }
    process = psutil.Process(server.process.pid)
    before = process.cpu_times()
    finished = subprocess.run(
        [sys.executable, __file__, "--client", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    after = process.cpu_times()
    if finished.returncode != 0:
        sys.exit(f"the client process failed:\n{finished.stderr[-3000:]}")
    result = json.loads(finished.stdout)
    level = Level(endpoint, clients, result["seconds"], client_cpu_seconds=result["cpu_seconds"])
    level.server_cpu_seconds = (after.user + after.system) - (before.user + before.system)
    for latency, first_delta, error in result["samples"]:
        if error is not None:
            level.errors[error] += 1
            continue
        level.latencies.append(latency)
        if first_delta is not None:
            level.first_deltas.append(first_delta)
    return level


def in_process_search(
    data_dir: Path, kb: str, config: Path | None, seconds: float, requests: int | None, distinct: bool
) -> list[float]:
    """Return the seconds of each `KnowledgeService.search` over the questions in turn, after a warm-up."""
    service = KnowledgeService(load_settings(config, data_dir=data_dir))
    options = SearchOptions()  # what the HTTP body {"query"} asks for
    for asked in QUESTIONS:
        service.search(kb, asked, options)
    latencies: list[float] = []
    salt = os.urandom(4).hex() if distinct else None
    deadline = time.perf_counter() + seconds
    for turn in itertools.count():
        if (requests is not None and turn >= requests) or (
            requests is None and time.perf_counter() > deadline
        ):
            break
        started = time.perf_counter()
        service.search(kb, question(turn, salt), options)
        latencies.append(time.perf_counter() - started)
    return latencies


def machine(load_at_start: list[float]) -> dict[str, Any]:
    """Return what the figures were measured on, and how busy it was at the start and the end."""
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "load_average_1_5_15_min_at_start": load_at_start,
        "load_average_1_5_15_min_at_end": [round(load, 2) for load in os.getloadavg()],
    }


def format_table(levels: list[dict[str, Any]]) -> str:
    """Return the levels' figures as an aligned plain-text table."""
    header = ("endpoint", "N", "requests", "failed", "req/s", "p50 ms", "p95 ms", "p99 ms")
    header += ("1st delta p50", "1st delta p95", "server CPU", "client CPU")
    rows = [header]
    for f in levels:
        chat = f["endpoint"] == "chat"
        rows.append(
            (
                f"/{f['endpoint']}",
                str(f["clients"]),
                str(f["requests"]),
                str(f["failed"]),
                f"{f['requests_per_second']:.1f}",
                f"{f['p50_ms']:.1f}",
                f"{f['p95_ms']:.1f}",
                f"{f['p99_ms']:.1f}",
                f"{f['first_delta_p50_ms']:.1f}" if chat else "-",
                f"{f['first_delta_p95_ms']:.1f}" if chat else "-",
                f"{f['server_cpu_cores']:.2f}",
                f"{f['client_cpu_cores']:.2f}",
            )
        )
    return aligned_table(rows)


def parse_args() -> argparse.Namespace:
    """Return the command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,8,32,64", help="client counts, comma-separated")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--seconds", type=float, default=10.0, help="seconds per level (default 10)")
    amount.add_argument("--requests", type=int, default=None, help="requests per level, instead of seconds")
    parser.add_argument("--kb", default="demo", help="knowledge base (built from examples/docs if missing)")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="data directory (default: a temporary one)"
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML settings file, for both sides")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a request fails")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for /readyz")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--distinct",
        action="store_true",
        help="make every question unique (its turn number added), so no query embedding is cached",
    )
    parser.add_argument("--client", metavar="SPEC", help=argparse.SUPPRESS)  # one level, in a child process
    return parser.parse_args()


COLUMN_NOTES = """\
N             concurrent clients (asyncio workers in one client process), each with one request in flight
req/s         requests finished (failed ones included) per second of the level's wall time
p50/95/99 ms  latency per request: /search to the whole JSON body, /chat to the `done` event
1st delta     /chat only: milliseconds to the first `delta` event
server CPU    CPU seconds of the server process (all threads) per wall second: cores it kept busy
client CPU    the same for the client process, which competes with the server for the same cores"""


def server_problems(log: str) -> list[str]:
    """Return the server log's lines at warning level or above (JSON lines, or text on a terminal)."""
    problems = []
    for line in log.splitlines():
        try:
            level = json.loads(line).get("level", "")
        except (ValueError, AttributeError):
            level = line.split(" ", 1)[0].lower()
        if level in ("warning", "error", "critical"):
            problems.append(line)
    return problems


def print_report(figures: dict[str, Any]) -> None:
    """Print the setup, the table, the failures' messages and the HTTP-overhead ratio."""
    info, server, overhead = figures["machine"], figures["server"], figures["http_overhead"]
    print(
        f"machine: {info['platform']}, {info['cpu_count']} CPUs ({info['usable_cpus']} usable), "
        f"OMP_NUM_THREADS={info['omp_num_threads']}, Python {info['python']}; load average (1/5/15 min) "
        f"{' '.join(map(str, info['load_average_1_5_15_min_at_start']))} at the start, "
        f"{' '.join(map(str, info['load_average_1_5_15_min_at_end']))} at the end"
    )
    print(
        f"server: ready in {server['startup_seconds']}s, embedder {server['readyz'].get('embedding')}, "
        f"llm {server['readyz'].get('llm')}; knowledge base {server['kb']['name']}: "
        f"{server['kb']['documents']} documents, {server['kb']['chunks']} chunks; "
        f"{figures['questions']} questions in turn{', each made unique' if figures['distinct'] else ''}"
    )
    print()
    print(format_table(figures["levels"]))
    print()
    total = sum(f["requests"] for f in figures["levels"])
    failed = sum(f["failed"] for f in figures["levels"])
    print(f"failed requests: {failed} of {total}")
    for f in figures["levels"]:
        for message, count in list(f["errors"].items())[:ERRORS_SHOWN]:
            print(f"  /{f['endpoint']} N={f['clients']}: {count} x {message}")
    problems = figures["server_log_warnings_and_errors"]
    print(f"server log lines at warning or above: {len(problems)}")
    for line in problems[:ERRORS_SHOWN]:
        print(f"  {line[:500]}")
    local = figures["in_process_search"]
    print(
        f"in-process KnowledgeService.search: {local['requests']} sequential, p50 {local['p50_ms']:.1f} ms, "
        f"p95 {local['p95_ms']:.1f} ms"
    )
    print(
        f"HTTP /search p50 at N={overhead['clients']} / in-process p50: {overhead['http_p50_ms']:.1f} / "
        f"{overhead['in_process_p50_ms']:.1f} ms = {overhead['ratio']:.2f}x "
        f"(+{overhead['http_p50_ms'] - overhead['in_process_p50_ms']:.1f} ms)"
    )
    print()
    print(COLUMN_NOTES)


def main() -> None:
    """Start the server, drive every level from client processes, time in-process search, print figures."""
    args = parse_args()
    if args.client:
        print(json.dumps(asyncio.run(drive(json.loads(args.client)))))
        return
    counts = [int(n) for n in args.concurrency.split(",")]
    load_at_start = [round(load, 2) for load in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="kbqa-bench-serve-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        started = time.perf_counter()
        with running_server(data_dir, args.kb, args.config, Path(tmp) / "server.log") as server:
            ready = wait_ready(server, args.startup_timeout)
            startup = time.perf_counter() - started
            print(f"server ready in {startup:.1f}s: {ready}", file=sys.stderr)
            kb = httpx.get(f"{server.url}/v1/kbs/{args.kb}", timeout=10)
            if kb.status_code != 200:
                sys.exit(f"no knowledge base {args.kb!r} in {data_dir}: {kb.text}")
            for endpoint in ENDPOINTS:
                run_level(server, endpoint, 1, args, len(QUESTIONS))  # warm-up, not reported
            levels = []
            for endpoint, clients in itertools.product(ENDPOINTS, counts):
                levels.append(run_level(server, endpoint, clients, args, args.requests).figures())
                print(f"/{endpoint} N={clients}: {levels[-1]['requests']} requests", file=sys.stderr)
        server_log = server.log.read_text(errors="replace")
        # After the server has stopped, so the two do not share the cores.
        in_process = in_process_search(
            data_dir, args.kb, args.config, args.seconds, args.requests, args.distinct
        )

    base = min(counts)
    http_p50 = next(f["p50_ms"] for f in levels if f["endpoint"] == "search" and f["clients"] == base)
    local = {"requests": len(in_process)} | latency_figures("", in_process)
    figures = {
        "machine": machine(load_at_start),
        "server": {"startup_seconds": round(startup, 1), "readyz": ready, "kb": kb.json()},
        "questions": len(QUESTIONS),
        "distinct": args.distinct,
        "levels": levels,
        "in_process_search": local,
        "http_overhead": {
            "clients": base,
            "http_p50_ms": http_p50,
            "in_process_p50_ms": local["p50_ms"],
            "ratio": round(http_p50 / local["p50_ms"], 2),
        },
        "server_log_warnings_and_errors": server_problems(server_log),
    }
    if args.json:
        print(json.dumps(figures, ensure_ascii=False, indent=2))
    else:
        print_report(figures)


if __name__ == "__main__":
    main()
