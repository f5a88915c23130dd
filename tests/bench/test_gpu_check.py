"""The prepared GPU proof (bench/gpu_check.sh): every code path at tiny sizes on the CPU, and its no-CUDA line."""

from __future__ import annotations

import os
import subprocess
import sys

import paths
import pytest

pytestmark = pytest.mark.slow


def run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environment = os.environ | {"OMP_NUM_THREADS": "1"} | env
    return subprocess.run(
        command, cwd=paths.REPO, capture_output=True, text=True, timeout=300, env=environment, check=False
    )


def test_the_smoke_run_goes_through_every_section() -> None:
    finished = run([sys.executable, "bench/gpu_check.py", "--cpu-smoke"])
    out = finished.stdout
    assert finished.returncode == 0, finished.stderr
    assert "sections failed: none" in out, out
    for heading in ("== embedding", "== search", "== decode"):
        assert heading in out
    assert "float16: " in out and "passages/s" in out and "fp16 vs fp32 vectors: cosine" in out
    assert "torch on cpu float32, 64 queries" in out
    assert "IndexFlatIP, 64 queries" in out and "top-10 agreement with torch fp32: 1.000" in out
    assert "ms/token" in out and "measured / floor = " in out


def test_a_failing_section_is_reported_and_the_others_still_run() -> None:
    # An unknown section fails inside the loop, as a section that raises does.
    finished = run([sys.executable, "bench/gpu_check.py", "--cpu-smoke", "--sections", "search,nothing"])
    assert finished.returncode == 0, finished.stderr
    assert "== nothing\n  FAILED: Traceback" in finished.stdout
    assert "IndexFlatIP" in finished.stdout and "sections failed: nothing" in finished.stdout


def test_without_cuda_the_script_says_so_in_one_line() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the script measures instead")
    finished = run(["bash", "bench/gpu_check.sh"], PYTHON=sys.executable)
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("no CUDA: torch") and "sees no GPU" in lines[0]
