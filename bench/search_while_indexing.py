"""Search latency while an upload is indexed: `kbqa serve` on the sample knowledge base, an upload of
generated documents into a second one, and searches of both at a user's pace until the job ends.

The test suite checks that searches answer while the job runs (tests/app/server/test_server.py); how fast
they answer is measured here. Prints the searches made while the job ran, their median, 95th percentile
and slowest seconds per knowledge base. Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python bench/search_while_indexing.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/search_while_indexing.py --files 80 --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import REPO_ROOT, aligned_table
from serve import running_server, wait_ready

# The upload's documents are the test suite's generated ones (tests/ is no package), not a copy of them.
sys.path.append(str(REPO_ROOT / "tests"))  # last, so its folders named like packages shadow none

from servers import create_kb, generated_files, upload  # noqa: E402

QUERIES = ["报销需要多久", "设备维护记录保存几年", "VPN user name", "合同归档审批"]


def measure(url: str, files: int, pause: float) -> dict[str, list[float]]:
    """Return the seconds of each search of `demo` and `big` made while the upload into `big` was indexed."""
    seconds: dict[str, list[float]] = {"demo": [], "big": []}
    with httpx.Client(base_url=url, timeout=60) as http:
        create_kb(http, "big")
        for kb in seconds:  # the first search loads jieba's dictionary: a cost of its own
            http.post(f"/v1/kbs/{kb}/search", json={"query": QUERIES[0], "k": 5}).raise_for_status()
        job = upload(http, "big", generated_files(files, seed=1))
        turn = 0
        while http.get(f"/v1/jobs/{job['id']}").json()["status"] in ("queued", "running"):
            for kb, taken in seconds.items():
                started = time.perf_counter()
                response = http.post(
                    f"/v1/kbs/{kb}/search", json={"query": QUERIES[turn % len(QUERIES)], "k": 5}
                )
                response.raise_for_status()
                taken.append(time.perf_counter() - started)
                turn += 1
            time.sleep(pause)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=40, help="generated documents uploaded (default 40)")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between rounds of searches")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kbqa-bench-"))
    with running_server(work / "data", "demo", None, work / "serve.log") as server:
        wait_ready(server, 600)
        seconds = measure(server.url, args.files, args.pause)
    shutil.rmtree(work, ignore_errors=True)
    figures = {
        kb: {
            "searches": len(taken),
            "p50_s": statistics.median(taken) if taken else None,
            "p95_s": statistics.quantiles(taken, n=20)[-1] if len(taken) > 1 else None,
            "max_s": max(taken, default=None),
        }
        for kb, taken in seconds.items()
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    rows = [["knowledge base", "searches", "p50 s", "p95 s", "max s"]]
    for kb, row in figures.items():
        rows.append(
            [kb, str(row["searches"])]
            + [f"{row[k]:.3f}" if row[k] is not None else "-" for k in ("p50_s", "p95_s", "max_s")]
        )
    print(aligned_table(rows))


if __name__ == "__main__":
    main()
