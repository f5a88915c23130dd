"""Replay hostile and heavy requests against `kbqa serve` and print, for each, status, time and RSS growth.

The probe of issue 12, re-runnable: long texts while searches are timed, fields over their maxima, a
search glob of 10^6 characters and a filter of 1,000 keys, an upload name of 258 bytes, a 300 MiB JSON
body, a 120 MiB upload over a 100 MiB limit (streamed, no declared length), a .docx zip bomb, a client
that goes away mid-request, a large spreadsheet cancelled mid-way, and SIGTERM while it is indexed.

The runs of issue 23 (`--only races` runs just these): 32 mixed clients for 60 s with deletes (errors by
status, RSS before, peak and 10 s after), a 5 KB .xlsx whose sheet claims A1:XFD1048576 and an HTML page
nested 2,000,000 deep (each: job outcome and time, RSS peak and after, the time a cancel takes), a 90 MiB
upload without the API key (status, bytes the server wrote), a second `kbqa serve` on the same data
directory (its exit and message, the first server's health), and SIGTERM during the nested page.

The runs of issue 26 (`--only auth` runs just these; the others end with them): a key of another
knowledge base (403) and its 90 MiB upload (refused before the body), an expired key, a reader limited
to groups searching for a hidden document's own words (what it gets, and whether it still gets k hits),
the latency of 200 searches with a stored key and with a flat one, and 200 wrong keys in a row (how
many 401 before the 429s, the Retry-After, and whether the right key waits too).

By default it starts its own server (`kbqa serve` on a temporary data directory holding knowledge base
`demo` from examples/docs) and also times SIGTERM; `--url` (with `--pid` for the RSS column) aims it at a
running server instead, which must hold knowledge base `--kb`. Run from the repository root:

    .venv/bin/python bench/abuse.py
    .venv/bin/python bench/abuse.py --url http://127.0.0.1:8000 --pid 1234 --kb demo --key k1
    .venv/bin/python bench/abuse.py --only races
    .venv/bin/python bench/abuse.py --only auth
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

LONG = ("员工入职满一年后，每年享有十天带薪年假。VPN user names are badge numbers. " * 400)[:20_000]
KBQA = str(Path(sys.executable).parent / "kbqa")


def rss_mb(pid: int | None) -> float | None:
    """Return the resident memory of process `pid` in MiB (None without a pid)."""
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def docx_bomb(paragraphs: int = 300_000) -> bytes:
    """Return a valid .docx whose body repeats one paragraph: about 27 MiB of XML in 100 KB."""
    import docx

    buffer = io.BytesIO()
    docx.Document().save(buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as plain:
        parts = {info.filename: plain.read(info) for info in plain.infolist()}
    body = parts["word/document.xml"].decode()
    start = body.index("<w:body>") + len("<w:body>")
    paragraph = "<w:p><w:r><w:t>员工入职满一年后，每年享有十天带薪年假。</w:t></w:r></w:p>"
    parts["word/document.xml"] = (body[:start] + paragraph * paragraphs + body[start:]).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as bomb:
        for name, data in parts.items():
            bomb.writestr(name, data)
    return out.getvalue()


def xlsx_dimension_bomb() -> bytes:
    """Return a 5 KB .xlsx whose sheet claims A1:XFD1048576: two real rows and one cell at XFD1048576."""
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.active.append(["编号", "规定"])
    workbook.active.append(["KB0001", "员工入职满一年后，每年享有十天带薪年假。"])
    buffer = io.BytesIO()
    workbook.save(buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as plain:
        parts = {info.filename: plain.read(info) for info in plain.infolist()}
    sheet = parts["xl/worksheets/sheet1.xml"].decode()
    sheet = re.sub(r'<dimension ref="[^"]*"\s*/>', '<dimension ref="A1:XFD1048576"/>', sheet)
    last = '<row r="1048576"><c r="XFD1048576" t="inlineStr"><is><t>end</t></is></c></row>'
    parts["xl/worksheets/sheet1.xml"] = sheet.replace("</sheetData>", last + "</sheetData>").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bomb:
        for name, data in parts.items():
            bomb.writestr(name, data)
    return out.getvalue()


def nested_html(depth: int = 2_000_000) -> bytes:
    """Return an HTML page of `depth` nested <div>s around one sentence (22 MB at 2e6)."""
    return b"<html><body>" + b"<div>" * depth + "年假十天。".encode() + b"</div>" * depth + b"</body></html>"


class PeakRss:
    """Samples a process's RSS every 50 ms while in use; `peak` is the highest seen."""

    def __init__(self, pid: int | None) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid) or 0.0)
            except OSError:  # the process ended
                return
            time.sleep(0.05)


def settled_rss(pid: int | None, target: float, seconds: float = 10.0) -> tuple[float | None, float]:
    """Return the RSS once it is within 50 MiB of `target` (or after `seconds`), and how long that took."""
    started = time.perf_counter()
    while True:
        now = rss_mb(pid)
        waited = time.perf_counter() - started
        if now is None or now <= target + 50 or waited >= seconds:
            return now, waited
        time.sleep(0.2)


def written_bytes(pid: int | None) -> int | None:
    """Return the bytes process `pid` has written so far (/proc/<pid>/io wchar: files and sockets)."""
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return None


def large_csv(rows: int = 20_000) -> bytes:
    """Return a CSV of `rows` distinct rows (one document of thousands of chunks)."""
    lines = ["编号,部门,规定"] + [
        f"KB{i:05d},第{i % 17}部门,第{i}号规定：差旅报销须在{i % 30 + 1}个工作日内提交。" for i in range(rows)
    ]
    return "\n".join(lines).encode()


def streamed(prefix: bytes, filler: bytes, total_mb: int, suffix: bytes) -> Iterator[bytes]:
    """Yield a body of about `total_mb` MiB, 1 MiB at a time, as a client streams it."""
    yield prefix
    piece = filler * ((1 << 20) // len(filler))
    for _ in range(total_mb):
        yield piece
    yield suffix


class Probe:
    """Runs the attacks against one server and prints a row for each."""

    def __init__(self, url: str, pid: int | None, kb: str, key: str | None = None) -> None:
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url, timeout=300, headers=self.headers)
        self.url, self.pid, self.kb, self.key = url, pid, kb, key
        self.last_job_seconds = 0.0  # how long the last job of `upload_and_wait` ran, queueing aside

    def row(self, name: str, attack: Callable[[], str]) -> None:
        """Run one attack and print its outcome, time and the server's RSS growth."""
        before = rss_mb(self.pid)
        started = time.perf_counter()
        try:
            outcome = attack()
        except httpx.HTTPError as error:
            outcome = f"{type(error).__name__}"
        seconds = time.perf_counter() - started
        after = rss_mb(self.pid)
        growth = f"{after - before:+7.0f}" if before is not None and after is not None else "      -"
        healthy = self.http.get("/healthz", timeout=10).status_code
        print(f"{name:<44} {outcome:<44} {seconds:8.1f} {growth}   {healthy}", flush=True)

    def post(self, path: str, body: dict, **kwargs) -> str:
        """Return the status (and error code) of a JSON POST."""
        return describe(self.http.post(path, json=body, **kwargs))

    def long_inputs_while_searching(self) -> str:
        """Send 20,000-character texts from four clients for 20 s; return the slowest concurrent search."""
        stop, statuses = threading.Event(), []
        bodies = [
            ("/v1/embeddings", {"input": [LONG, LONG[::-1]]}),
            ("/v1/embeddings", {"input": LONG}),
            (
                f"/v1/kbs/{self.kb}/chat",
                {"question": LONG[:8000], "history": [{"role": "user", "content": LONG}]},
            ),
            (f"/v1/kbs/{self.kb}/search", {"query": LONG[:4000]}),
        ]

        def send(path: str, body: dict) -> None:
            with httpx.Client(base_url=self.url, timeout=300, headers=self.headers) as client:
                while not stop.is_set():
                    statuses.append(client.post(path, json=body).status_code)

        self.http.post(f"/v1/kbs/{self.kb}/search", json={"query": "年假"})  # loads jieba: not what is timed
        senders = [threading.Thread(target=send, args=item) for item in bodies]
        for sender in senders:
            sender.start()
        slowest, deadline = 0.0, time.monotonic() + 20
        while time.monotonic() < deadline:
            started = time.perf_counter()
            self.http.post(f"/v1/kbs/{self.kb}/search", json={"query": "VPN user name"})
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.2)
        stop.set()
        for sender in senders:
            sender.join()
        return f"search max {slowest:.2f} s; {len(statuses)} long: {sorted(set(statuses))}"

    def huge_json(self) -> str:
        """Send a 300 MiB JSON body, declared and then chunked; return both outcomes."""
        declared = describe(
            self.http.post(
                "/v1/embeddings",
                content=streamed(b'{"input": "', b"x", 300, b'"}'),
                headers={"content-type": "application/json", "content-length": str(300 * (1 << 20) + 13)},
            )
        )
        chunked = describe(
            self.http.post(
                "/v1/embeddings",
                content=streamed(b'{"input": "', b"x", 300, b'"}'),
                headers={"content-type": "application/json"},
            )
        )
        return f"{declared}; chunked {chunked}"

    def big_upload(self) -> str:
        """Stream a 120 MiB file with no declared length; return the outcome."""
        boundary = "abuse-boundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        return describe(
            self.http.post(
                f"/v1/kbs/{self.kb}/documents",
                content=streamed(head, b"x", 120, f"\r\n--{boundary}--\r\n".encode()),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )
        )

    def upload_and_wait(self, name: str, data: bytes) -> str:
        """Upload one file; return how its job ended."""
        response = self.http.post(f"/v1/kbs/{self.kb}/documents", files=[("files", (name, data))])
        if response.status_code != 202:
            return describe(response)
        job_id = response.json()["job"]["id"]
        self.wait(job_id, lambda j: j["status"] != "queued")  # the jobs before it (the mixed run's) ran
        running = time.perf_counter()
        job = self.wait(job_id, lambda j: j["status"] not in ("queued", "running"))
        self.last_job_seconds = time.perf_counter() - running
        reason = (job["files"][0].get("reason") or "")[:30] if job["files"] else ""
        return f"job {job['status']} {reason}".strip()

    def wait(self, job_id: str, ready: Callable[[dict], bool]) -> dict:
        """Return the job once `ready(job)` holds."""
        while not ready(job := self.http.get(f"/v1/jobs/{job_id}").json()):
            time.sleep(0.1)
        return job

    def client_goes_away(self) -> str:
        """Start 2,000 embeddings, leave after 2 s; return how soon the server counted it stopped (499)."""
        before = self.stopped()
        try:
            self.http.post(
                "/v1/embeddings", json={"input": [LONG[i : i + 500] for i in range(2000)]}, timeout=2
            )
            return "answered within 2 s?"
        except httpx.TimeoutException:
            pass
        left = time.perf_counter()
        while self.stopped() == before:
            if time.perf_counter() - left > 60:
                return "work went on for 60 s"
            time.sleep(0.2)
        return f"stopped {time.perf_counter() - left:.1f} s after the client left"

    def stopped(self) -> str:
        """Return the metrics line counting /v1/embeddings requests stopped because the client left."""
        lines = self.http.get("/metrics").text.splitlines()
        return next((x for x in lines if '"/v1/embeddings"' in x and 'status="499"' in x), "")

    def cancel_large(self) -> str:
        """Upload a large spreadsheet, cancel it once it shows progress; return the time to cancelled."""
        response = self.http.post(
            f"/v1/kbs/{self.kb}/documents", files=[("files", ("large.csv", large_csv()))]
        )
        job_id = response.json()["job"]["id"]
        self.wait(job_id, lambda j: j["status"] == "running" and j["chunks_done"] > 0)
        asked = time.perf_counter()
        self.http.post(f"/v1/jobs/{job_id}/cancel")
        job = self.wait(job_id, lambda j: j["status"] not in ("queued", "running"))
        return f"{job['status']} {time.perf_counter() - asked:.1f} s after asked"

    # --- issue 23: races, hostile files, keys, two servers ----------------------------------------------

    def mixed_load_with_deletes(self, clients: int = 32, seconds: float = 60.0) -> str:
        """Run `clients` clients for `seconds`: searches, chats, uploads of small documents and deletes of
        them, listings; return the responses by status and the server's RSS before, at peak and after."""
        kb = "abuse-mixed"
        self.http.post("/v1/kbs", json={"name": kb})
        seed = [
            (f"seed{i:03d}.md", f"# 年假规定{i}\n\n员工入职满一年后每年享有十天带薪年假，编号{i}。\n")
            for i in range(60)
        ]
        response = self.http.post(
            f"/v1/kbs/{kb}/documents", files=[("files", (n, t.encode())) for n, t in seed]
        )
        self.wait(response.json()["job"]["id"], lambda j: j["status"] not in ("queued", "running"))
        statuses: Counter[int] = Counter()
        stop = threading.Event()
        before = rss_mb(self.pid)

        def client(number: int) -> None:
            rng = random.Random(number)
            with httpx.Client(base_url=self.url, timeout=300, headers=self.headers) as http:
                while not stop.is_set():
                    roll = rng.random()
                    try:
                        if roll < 0.4:
                            r = http.post(
                                f"/v1/kbs/{kb}/search", json={"query": "年假有几天", "k": 10, "neighbours": 1}
                            )
                        elif roll < 0.65:
                            r = http.post(f"/v1/kbs/{kb}/chat", json={"question": "年假有几天？"})
                        elif roll < 0.75:
                            name = f"c{number}-{rng.randrange(10**9)}.md"
                            text = f"# 年假补充{name}\n\n员工每年享有十天带薪年假，补充说明{name}。\n"
                            r = http.post(f"/v1/kbs/{kb}/documents", files=[("files", (name, text.encode()))])
                        elif roll < 0.9:
                            documents = http.get(f"/v1/kbs/{kb}/documents").json().get("data", [])
                            if not documents:
                                continue
                            r = http.delete(f"/v1/kbs/{kb}/documents/{rng.choice(documents)['id']}")
                        else:
                            r = http.get(f"/v1/kbs/{kb}/documents")
                        statuses[r.status_code] += 1
                    except httpx.HTTPError as error:
                        statuses[type(error).__name__] += 1  # type: ignore[index]

        with PeakRss(self.pid) as peak:
            threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
            for thread in threads:
                thread.start()
            time.sleep(seconds)
            stop.set()
            for thread in threads:
                thread.join()
        time.sleep(10)  # the jobs the uploads queued drain meanwhile
        after = rss_mb(self.pid)
        errors = sum(n for status, n in statuses.items() if not isinstance(status, int) or status >= 500)
        shown = ", ".join(f"{status}×{n}" for status, n in sorted(statuses.items(), key=str))
        rss = (
            ""
            if before is None
            else f"; RSS {before:.0f} → peak {peak.peak:.0f} → {after:.0f} MiB 10 s after"
        )
        return f"{errors} × 5xx of {sum(statuses.values())} ({shown}){rss}"

    def hostile_file(self, name: str, data: bytes) -> str:
        """Upload one hostile file; return how its job ended, its time, the RSS peak and how soon RSS came back."""
        before = rss_mb(self.pid)
        started = time.perf_counter()
        with PeakRss(self.pid) as peak:
            outcome = self.upload_and_wait(name, data)
        took = time.perf_counter() - started
        ran = self.last_job_seconds
        if before is None:
            return f"{outcome}; ran {ran:.1f} s"
        after, waited = settled_rss(self.pid, before)
        return (
            f"{outcome}; ran {ran:.1f} s of {took:.1f}; RSS +{peak.peak - before:.0f} MiB at peak, "
            f"{(after or 0) - before:+.0f} MiB {waited:.1f} s after"
        )

    def cancel_hostile(self, name: str, data: bytes) -> str:
        """Upload a hostile file and cancel its job once it runs; return how long the cancel took."""
        response = self.http.post(f"/v1/kbs/{self.kb}/documents", files=[("files", (name, data))])
        job_id = response.json()["job"]["id"]
        self.wait(job_id, lambda j: j["status"] != "queued")
        asked = time.perf_counter()
        cancel = describe(self.http.post(f"/v1/jobs/{job_id}/cancel"))
        job = self.wait(job_id, lambda j: j["status"] not in ("queued", "running"))
        return f"cancel {cancel}: {job['status']} {time.perf_counter() - asked:.1f} s after asked"

    def unauthenticated_upload(self, mib: int = 90, key: str | None = None) -> str:
        """Send a `mib` MiB upload without the key (or with `key`, one that may not write there); return the
        status and what the server wrote meanwhile."""
        boundary = "abuse-boundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        written = written_bytes(self.pid)
        try:
            outcome = describe(
                httpx.post(
                    f"{self.url}/v1/kbs/{self.kb}/documents",
                    content=streamed(head, b"x", mib, f"\r\n--{boundary}--\r\n".encode()),
                    headers={"content-type": f"multipart/form-data; boundary={boundary}"}
                    | ({"Authorization": f"Bearer {key}"} if key else {}),
                    timeout=300,
                )
            )
        except httpx.HTTPError as error:  # the server answered and closed before the body was sent
            outcome = type(error).__name__
        after = written_bytes(self.pid)
        wrote = (
            "" if written is None or after is None else f"; server wrote {(after - written) / 1024:.0f} KiB"
        )
        return f"{outcome}{wrote}"

    # --- issue 26: keys, roles, groups, throttling ---------------------------------------------------

    def make_key(self, name: str, role: str, kbs: list[str], **extra: object) -> str:
        """Return the secret of a new key (made with the admin key this probe holds)."""
        body = {"name": f"{name}-{random.randrange(10**9)}", "role": role, "knowledge_bases": kbs, **extra}
        made = self.http.post("/v1/keys", json=body)
        if made.status_code != 201:
            raise SystemExit(f"could not make a key ({describe(made)}): the probe needs an admin key")
        return made.json()["key"]

    def other_kb_key(self) -> str:
        """Return what a reader of another knowledge base gets: a search, and a 90 MiB upload."""
        key = self.make_key("other", "reader", ["not-" + self.kb])
        searched = describe(
            httpx.post(
                f"{self.url}/v1/kbs/{self.kb}/search",
                json={"query": "年假"},
                headers={"Authorization": f"Bearer {key}"},
            )
        )
        return f"search {searched}; 90 MiB upload {self.unauthenticated_upload(key=key)}"

    def expired_key(self) -> str:
        """Return what a key gets once it has expired (made to expire in 2 s)."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
        key = self.make_key("expiring", "reader", [self.kb], expires_at=when)
        before = describe(httpx.get(f"{self.url}/v1/kbs", headers={"Authorization": f"Bearer {key}"}))
        time.sleep(3)
        after = describe(httpx.get(f"{self.url}/v1/kbs", headers={"Authorization": f"Bearer {key}"}))
        return f"before {before}; after {after}"

    def hidden_document(self, k: int = 5) -> str:
        """Put one document in a group, search its own words as a reader outside it; return what came back."""
        documents = self.http.get(f"/v1/kbs/{self.kb}/documents").json()["data"]
        target = documents[0]
        self.http.put(f"/v1/kbs/{self.kb}/documents/{target['id']}/groups", json={"groups": ["abuse-secret"]})
        try:
            text = self.http.post(f"/v1/kbs/{self.kb}/search", json={"query": target["title"], "k": 1}).json()
            query = text["data"][0]["text"][:200] if text["data"] else target["title"]
            key = self.make_key("grouped", "reader", [self.kb], groups=["abuse-other"])
            hits = httpx.post(
                f"{self.url}/v1/kbs/{self.kb}/search",
                json={"query": query, "k": k},
                headers={"Authorization": f"Bearer {key}"},
            ).json()["data"]
            leaked = sum(hit["document_id"] == target["id"] for hit in hits)
            return f"{leaked} hits of it; {len(hits)} of k={k} hits (permitted: {len(documents) - 1} docs)"
        finally:
            self.http.put(f"/v1/kbs/{self.kb}/documents/{target['id']}/groups", json={"groups": []})

    def key_latency(self, rounds: int = 200) -> str:
        """Return the median latency of a search with a stored key and with the probe's own key."""
        stored = {"Authorization": f"Bearer {self.make_key('timed', 'reader', [self.kb])}"}

        def median_ms(headers: dict) -> float:
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                self.http.get(f"/v1/kbs/{self.kb}/documents", headers=headers)
                times.append((time.perf_counter() - started) * 1000)
            return statistics.median(times)

        return f"stored key {median_ms(stored):.1f} ms, this key {median_ms(self.headers):.1f} ms (median)"

    def wrong_keys(self, tries: int = 200) -> str:
        """Send `tries` wrong keys in a row; return the statuses, Retry-After, and what the right key gets."""
        statuses: Counter[int] = Counter()
        retry_after = None
        with httpx.Client(base_url=self.url, timeout=30) as guesser:
            for guess in range(tries):
                response = guesser.get(
                    "/v1/kbs", headers={"Authorization": f"Bearer kbqa_{guess:012x}_guess"}
                )
                statuses[response.status_code] += 1
                retry_after = response.headers.get("retry-after", retry_after)
            right = guesser.get("/v1/kbs", headers=self.headers).status_code
            time.sleep(int(retry_after or 0) + 1)  # the throttle must let go, for this client's next rows
            later = guesser.get("/v1/kbs", headers=self.headers).status_code
        counts = ", ".join(f"{status}×{n}" for status, n in sorted(statuses.items()))
        return f"{counts}; Retry-After {retry_after}; right key {right}, then {later}"


def second_server(data: Path, first_url: str) -> str:
    """Start a second `kbqa serve` on `data`; return its exit, its message and the first server's health."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBQA_")}
    started = time.perf_counter()
    second = subprocess.run(
        [KBQA, "--data-dir", str(data), "serve", "--port", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    took = time.perf_counter() - started
    message = " ".join(second.stderr.split())[:60]
    healthy = httpx.get(f"{first_url}/healthz", timeout=10).status_code
    return f"exit {second.returncode} in {took:.1f} s ({message}…); first /healthz {healthy}"


def describe(response: httpx.Response) -> str:
    """Return a response's status and, for an error, its code."""
    try:
        code = response.json().get("error", {}).get("code", "")
    except (ValueError, AttributeError):
        code = ""
    return f"{response.status_code} {code}".strip()


def start_server(
    data: Path, batch_chunks: int, key: str | None = None, log: Path | None = None
) -> tuple[subprocess.Popen, str]:
    """Start `kbqa serve` with the sample knowledge base on a free port; return it and its URL once ready."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBQA_")}
    env["KBQA_INGESTION__BATCH_CHUNKS"] = str(batch_chunks)
    if key:
        env["KBQA_SERVER__API_KEYS"] = f'["{key}"]'
    process = subprocess.Popen(
        [KBQA, "--data-dir", str(data), "serve", "--port", str(port), "--sample-kb", "demo"],
        env=env,
        stdout=log.open("ab") if log else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"kbqa serve exited with {process.returncode}")
        time.sleep(0.5)


def main() -> None:
    """Run every attack and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--pid", type=int, help="its process id, for the RSS column")
    parser.add_argument("--kb", default="demo", help="a knowledge base of that server to attack")
    parser.add_argument(
        "--batch-chunks", type=int, default=16, help="ingestion.batch_chunks of a started server"
    )
    parser.add_argument("--server-log", type=Path, help="append a started server's log to this file")
    parser.add_argument("--key", help="the API key of a running server (a started one gets key 'abuse')")
    parser.add_argument(
        "--only",
        choices=("all", "races", "auth"),
        default="all",
        help="races: only the runs of issue 23; auth: only those of issue 26",
    )
    args = parser.parse_args()
    process = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url is None:
            args.key = "abuse"
            process, url = start_server(Path(tmp) / "data", args.batch_chunks, args.key, args.server_log)
            pid = process.pid
        else:
            url, pid = args.url, args.pid
        probe = Probe(url, pid, args.kb, args.key)
        kb = args.kb
        print(f"{'attack':<44} {'outcome':<44} {'seconds':>8} {'RSS MiB':>7}   healthz")
        if args.only == "auth":
            auth_rows(probe)
            return
        probe.row("32 mixed clients with deletes, 60 s", probe.mixed_load_with_deletes)
        probe.row(
            ".xlsx claiming A1:XFD1048576 (5 KB)",
            lambda: probe.hostile_file("dim.xlsx", xlsx_dimension_bomb()),
        )
        probe.row(
            "  … cancelled once running", lambda: probe.cancel_hostile("dim2.xlsx", xlsx_dimension_bomb())
        )
        probe.row(
            "HTML nested 2,000,000 deep (22 MB)", lambda: probe.hostile_file("deep.html", nested_html())
        )
        probe.row("  … cancelled once running", lambda: probe.cancel_hostile("deep2.html", nested_html()))
        probe.row("upload of 90 MiB without the API key", probe.unauthenticated_upload)
        if process is not None:
            probe.row(
                "second kbqa serve on the same data dir", lambda: second_server(Path(tmp) / "data", url)
            )
        if args.only == "races":
            if process is not None:
                sigterm_during(probe, process, "deep3.html", nested_html())
                # The lock went with it: a new server on the same data directory, stopped during the .xlsx.
                process, url = start_server(Path(tmp) / "data", args.batch_chunks, args.key, args.server_log)
                sigterm_during(
                    Probe(url, process.pid, kb, args.key), process, "dim3.xlsx", xlsx_dimension_bomb()
                )
            return
        probe.row("20,000-char texts from 4 clients, 20 s", probe.long_inputs_while_searching)
        probe.row(
            "chat question of 20,000 chars", lambda: probe.post(f"/v1/kbs/{kb}/chat", {"question": LONG})
        )
        probe.row(
            "/v1/embeddings, 2,049 inputs", lambda: probe.post("/v1/embeddings", {"input": ["x"] * 2049})
        )
        probe.row(
            "search source glob of 10^6 chars",
            lambda: probe.post(f"/v1/kbs/{kb}/search", {"query": "x", "source": "*" * 10**6}),
        )
        probe.row(
            "search metadata filter of 1,000 keys",
            lambda: probe.post(
                f"/v1/kbs/{kb}/search", {"query": "x", "metadata": {f"k{i}": "v" for i in range(1000)}}
            ),
        )
        probe.row("JSON body of 300 MiB", probe.huge_json)
        probe.row("upload of 120 MiB (limit 100), chunked", probe.big_upload)
        probe.row(
            "upload name of 86 Chinese chars (258 B)",
            lambda: probe.upload_and_wait("长" * 86 + ".md", "# 长名\n\n长文件名。".encode()),
        )
        probe.row(".docx zip bomb (27 MiB of XML)", lambda: probe.upload_and_wait("bomb.docx", docx_bomb()))
        probe.row("client leaves a 2,000-text embedding", probe.client_goes_away)
        probe.row("cancel a 20,000-row CSV mid-way", probe.cancel_large)
        auth_rows(probe)
        if process is not None:
            response = probe.http.post(
                f"/v1/kbs/{kb}/documents", files=[("files", ("again.csv", large_csv()))]
            )
            probe.wait(
                response.json()["job"]["id"], lambda j: j["status"] == "running" and j["chunks_done"] > 0
            )
            asked = time.perf_counter()
            process.send_signal(signal.SIGTERM)
            process.wait()
            print(
                f"{'SIGTERM while a 20,000-row CSV is indexed':<44} {'exit ' + str(process.returncode):<44} "
                f"{time.perf_counter() - asked:8.1f}"
            )


def auth_rows(probe: Probe) -> None:
    """Print the rows of issue 26; the wrong keys last, since they throttle this client for a while."""
    probe.row("key of another knowledge base", probe.other_kb_key)
    probe.row("expired key", probe.expired_key)
    probe.row("reader outside a document's group", probe.hidden_document)
    probe.row("200 document lists, stored key vs flat", probe.key_latency)
    probe.row("200 wrong keys in a row", probe.wrong_keys)


def sigterm_during(probe: Probe, process: subprocess.Popen, name: str, data: bytes) -> None:
    """Upload a hostile file, send SIGTERM once its job runs, and print how long the server took to exit."""
    response = probe.http.post(f"/v1/kbs/{probe.kb}/documents", files=[("files", (name, data))])
    probe.wait(response.json()["job"]["id"], lambda j: j["status"] != "queued")
    asked = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    process.wait()
    label = f"SIGTERM while {name} is indexed"
    print(f"{label:<44} {'exit ' + str(process.returncode):<44} {time.perf_counter() - asked:8.1f}")


if __name__ == "__main__":
    main()
