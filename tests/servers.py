"""`kbqa serve` and `kbqa` in subprocesses, as users run them, and the helpers that speak to them over
HTTP: knowledge bases, uploads and the polling of ingestion jobs."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

KBQA = str(Path(sys.executable).parent / "kbqa")
READY_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 300.0
# uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
CLEAN_EXIT = (0, -signal.SIGTERM)

SMALL_DOCS = {
    "leave.md": "# 年假制度\n\n员工入职满一年后，每年享有十天带薪年假，年假需提前三个工作日在系统中申请。\n",
    "expense.md": "# 报销流程\n\n差旅费用报销单经部门经理审批后，财务部在五个工作日内将款项打入员工工资卡。\n",
    "vpn.md": "# VPN access\n\nConnect to the company VPN with the FortiClient app; your user name is your badge number.\n",
    "printer.md": "# 打印机\n\n三楼东侧的彩色打印机需要刷工卡才能打印，卡纸时请联系行政部。\n",
}


def kbqa(*args: str) -> subprocess.CompletedProcess:
    """Return the finished `kbqa` command, run with no KBQA_* variables of the caller's."""
    return subprocess.run(
        [KBQA, *args], capture_output=True, text=True, env=clean_env(), timeout=300, check=False
    )


def clean_env(**extra: str) -> dict[str, str]:
    """Return the environment without KBQA_* variables, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("KBQA_")}, **extra}


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A `kbqa serve` subprocess on a data directory."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = clean_env(**(env or {}))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"server-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [KBQA, "--data-dir", str(data_dir), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"kbqa serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.kill()
        pytest.fail(f"kbqa serve not ready after {READY_TIMEOUT_S:.0f} s:\n{self.output()}")

    def output(self) -> str:
        """Return what the server printed so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        """Stop the server as an operator does (SIGTERM) and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"kbqa serve ignored SIGTERM for 60 s:\n{self.output()}")
        return self.process.returncode

    def kill(self) -> None:
        """Kill the server at once, as a crash or an OOM killer does."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def build_small_kb(root: Path) -> Path:
    """Return a data directory holding knowledge base `demo`, built from SMALL_DOCS by `kbqa index build`."""
    docs = root / "docs"
    docs.mkdir(parents=True)
    for name, text in SMALL_DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    data = root / "data"
    built = kbqa("--data-dir", str(data), "index", "build", str(docs), "--kb", "demo")
    assert built.returncode == 0, built.stderr
    return data


def generated_files(count: int, seed: int, chars: int = 400) -> list[tuple[str, bytes]]:
    """Return `count` distinct Chinese Markdown files of about `chars` characters (one chunk) each, as
    (name, bytes); embedding one takes about half a second on a CPU core."""
    rng = random.Random(seed)
    teams = ["财务部", "人事部", "行政部", "研发中心", "销售部", "客服中心", "法务部", "采购部"]
    topics = ["报销", "考勤", "采购审批", "设备维护", "合同归档", "培训", "出差", "数据备份"]
    actions = ["提交申请", "完成审批", "登记台账", "通知主管", "上传凭证", "更新系统", "复核金额"]
    files = []
    for i in range(count):
        team, topic = rng.choice(teams), rng.choice(topics)
        lines = [f"# {team}{topic}规定（第{seed}-{i}号）", ""]
        while sum(len(line) for line in lines) < chars:
            lines.append(
                f"{rng.choice(teams)}在{topic}时须于{rng.randint(1, 30)}个工作日内{rng.choice(actions)}，"
                f"编号{rng.randint(1000, 9999)}的{rng.choice(topics)}记录保存{rng.randint(1, 10)}年。"
            )
        files.append((f"rule_{seed}_{i:03d}.md", "\n".join(lines).encode("utf-8")))
    return files


def upload(http: httpx.Client, kb: str, files: list[tuple[str, bytes]]) -> dict:
    """Return the job of an upload of `files` into `kb`."""
    response = http.post(
        f"/v1/kbs/{kb}/documents", files=[("files", (name, body, "text/markdown")) for name, body in files]
    )
    assert response.status_code == 202, response.text
    return response.json()["job"]


def finished(job: dict) -> bool:
    """Return whether the job has finished, well or not."""
    return job["status"] in ("succeeded", "failed")


def wait_until(
    http: httpx.Client | Any,
    job_id: str,
    ready: Callable[[dict], bool] = finished,
    seconds: float = JOB_TIMEOUT_S,
    poll: float = 0.2,
) -> dict:
    """Return the job once `ready(job)` holds (by default: once it has finished); fail the test when it
    does not within `seconds`. `http` is an httpx client or FastAPI's TestClient."""
    deadline = time.monotonic() + seconds
    while not ready(job := http.get(f"/v1/jobs/{job_id}").json()):
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} not where it was awaited after {seconds:.0f} s: {job}")
        time.sleep(poll)
    return job


def wait_loaded(http: httpx.Client | Any, seconds: float = READY_TIMEOUT_S) -> dict:
    """Return /readyz's body once the app's models have loaded (ready, or failed); fail the test when they
    have not within `seconds`. The app listens while they load, and refuses model routes meanwhile."""
    deadline = time.monotonic() + seconds
    while (body := http.get("/readyz").json())["status"] == "loading":
        if time.monotonic() > deadline:
            pytest.fail(f"the models did not load within {seconds:.0f} s: {body}")
        time.sleep(0.05)
    return body


class LoadedTestClient:
    """FastAPI's TestClient over `app`, which once entered waits for the models to load (the lifespan only
    starts their loading)."""

    def __init__(self, app: Any) -> None:
        from fastapi.testclient import TestClient

        self.client = TestClient(app)

    def __enter__(self) -> Any:
        client = self.client.__enter__()
        wait_loaded(client)
        return client

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)


def create_kb(http: httpx.Client, name: str) -> None:
    """Create an empty knowledge base through the API."""
    response = http.post("/v1/kbs", json={"name": name})
    assert response.status_code == 201, response.text


def assert_kb_check(data_dir: Path, kb: str) -> None:
    """Assert `kbqa kb check` finds the knowledge base consistent."""
    checked = kbqa("--data-dir", str(data_dir), "kb", "check", kb)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def document_sources(http: httpx.Client, kb: str) -> set[str]:
    """Return the sources of the knowledge base's documents."""
    response = http.get(f"/v1/kbs/{kb}/documents")
    assert response.status_code == 200, response.text
    return {document["source"] for document in response.json()["data"]}


# --- the OpenAI-compatible face, through the official client ---------------------------------------


def sse_events(lines: Iterable[str]) -> list[tuple[str | None, dict]]:
    """Return the (event name, JSON data) pairs of a server-sent event stream's lines."""
    events: list[tuple[str | None, dict]] = []
    name = None
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def serve_small_kb(root: Path, env: dict[str, str] | None = None, api_key: str | None = None) -> Server:
    """Return a started `kbqa serve` holding knowledge base `demo` of SMALL_DOCS, uploaded over HTTP."""
    server = Server(root / "data", env)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
        create_kb(http, "demo")
        job = upload(http, "demo", [(name, text.encode()) for name, text in SMALL_DOCS.items()])
        assert wait_until(http, job["id"])["status"] == "succeeded", server.output()
    return server
