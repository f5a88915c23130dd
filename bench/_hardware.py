"""What a benchmark ran on, and the arithmetic floor of an encoder there: CPU flags, GEMM throughput, FLOPs."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

from retrieval.embedders import runtime_choice

# The flags that decide which kernels the runtimes use: AVX-512 and its int8 (VNNI) and bfloat16
# instructions, and AMX's tile units (Intel Xeon since Sapphire Rapids; no AMD CPU has them).
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
# Settings that change those kernels without another CPU: oneDNN (torch's bfloat16) honours
# ONEDNN_MAX_CPU_ISA, e.g. AVX512_CORE_BF16 to run as on an AMD EPYC (Zen 4) without AMX.
ISA_VARIABLES = (*runtime_choice.ISA_VARIABLES, "OMP_NUM_THREADS")


def cpu_report() -> dict[str, Any]:
    """Return the CPU's model name, which KERNEL_FLAGS it has, the usable cores and the ISA settings in force."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {
        "model": name,
        "flags": [flag for flag in KERNEL_FLAGS if flag in flags],
        "usable_cores": len(os.sched_getaffinity(0)),
        "amx_usable": runtime_choice.amx_usable() if "amx_bf16" in flags else False,
        "settings": {name: os.environ[name] for name in ISA_VARIABLES if name in os.environ},
    }


def describe_cpu(report: dict[str, Any]) -> str:
    """Return the CPU report as one line."""
    settings = " ".join(f"{k}={v}" for k, v in report["settings"].items()) or "none"
    return (
        f"CPU: {report['model']}, {report['usable_cores']} usable cores; kernel flags: "
        f"{' '.join(report['flags']) or 'none of ' + ', '.join(KERNEL_FLAGS)}; AMX usable by this process: "
        f"{'yes' if report['amx_usable'] else 'no'}; ISA settings: {settings}"
    )


def encoder_flops_per_token(hidden: int, intermediate: int, layers: int, tokens_per_text: float) -> float:
    """Return the multiply-add FLOPs (2 per MAC) a BERT encoder spends on one token of a text of `tokens_per_text`.

    Per layer: the Q, K, V and output projections (4 h^2 MACs), the feed-forward pair (2 h i), and the
    attention scores and weighted sum (2 h t, t the text's tokens); the word-embedding lookup, layer norms,
    softmax and GELU are left out (a few per cent).
    """
    return 2.0 * layers * (4 * hidden * hidden + 2 * hidden * intermediate + 2 * hidden * tokens_per_text)


def gemm_flops_per_cpu_second(rows: int, inner: int, columns: int, seconds: float = 1.0) -> float:
    """Return float32 FLOPs per CPU-second of torch's matrix product (rows x inner) @ (inner x columns) here.

    The shape is one of the encoder's own (a batch of tokens through a feed-forward layer), run with the
    threads the runtimes use; CPU seconds, not wall, so other work on the machine barely moves it.
    """
    import torch

    from retrieval.embedders.base import intra_op_threads

    torch.set_num_threads(intra_op_threads())
    a, b = torch.randn(rows, inner), torch.randn(inner, columns)
    for _ in range(3):
        torch.mm(a, b)  # warm-up: thread pool, caches
    runs, started = 0, time.process_time()
    while time.process_time() - started < seconds:
        torch.mm(a, b)
        runs += 1
    return 2.0 * rows * inner * columns * runs / (time.process_time() - started)
