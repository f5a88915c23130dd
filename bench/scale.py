"""Vector-store scale benchmark: FAISS flat, HNSW and IVF against Milvus Lite on random normalised vectors.

Each store indexes N random 768-d float32 vectors (standard normal, L2-normalised, seeded with numpy;
generated, not embedded, so the figures are about the stores alone) and answers Q other random unit
vectors, one query at a time, for their top 10:

- faiss-flat: `IndexFlatIP`, exact search; its recall is 1.0 by construction.
- faiss-hnsw: `IndexHNSWFlat` with inner product, M=32, efConstruction 200; searched at each
  `--ef-search` value (default 64 and 256).
- faiss-ivf: `IndexIVFFlat` with inner product over nlist = round(sqrt(N)) k-means cells trained on
  50 * nlist of the vectors; searched at each `--nprobe` value (default 8 and 32 cells).
- milvus-lite: pymilvus `MilvusClient` on a local .db folder, one collection with an HNSW index of the
  same parameters as faiss-hnsw (searched at the same `--ef-search` values), metric COSINE (equal to
  inner product on unit vectors). Needs `pip install -e '.[milvus]'` (pymilvus and milvus-lite).

Each store runs in its own process (this script again, with `--worker`), so the memory one leaves behind
is not charged to the next. Figures per store:

- build s: from an empty store to one ready to answer (FAISS: `train` where the index needs it, then
  `add`; Milvus Lite: create the collection, insert in batches, flush, load, and wait for its
  background compaction and index build, see `drain_milvus_lite`). FAISS builds on all usable cores. A store searched at several settings is built once; its
  build, memory and size figures repeat on each of its rows.
- RSS +MiB: growth of the process's resident set over the build, the vectors themselves already in memory.
- size MiB: the store's own size: the serialised FAISS index, or the Milvus Lite .db folder on disk.
- settle s: after the build, rounds of 10 queries until their latency stops falling (see `settle`):
  a store answering from its final index is steady at once (five rounds).
- p50/p95 ms: latency of single queries at k=10, after a few warm-up queries; FAISS searches on one
  thread (`omp_set_num_threads(1)`); Milvus Lite uses the threads it starts itself.
- recall@10: the share of the exact top 10 (brute-force inner product over all N) found.

Random unit vectors in 768 dimensions are all nearly orthogonal, so the true top 10 barely stand out and
approximate indexes find few of them at small efSearch or nprobe: recall here is a floor, far below
what the same index reaches on real embeddings, which cluster. The sweep shows what recall costs in
latency on each index.

Run from the repository root:

    .venv/bin/python bench/scale.py
    .venv/bin/python bench/scale.py --sizes 100000,1000000 --ef-search 64,256,1024 --nprobe 8,32,128
    .venv/bin/python bench/scale.py --methods faiss-flat,faiss-ivf --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from _common import aligned_table

from app.evaluation import percentile

DIM = 768
TOP_K = 10
HNSW_M = 32
EF_CONSTRUCTION = 200
IVF_TRAINING_POINTS_PER_LIST = 50  # faiss warns below 39 training points per k-means centroid
WARMUP_QUERIES = 5
SETTLE_ROUND = 10  # queries per round while waiting for a store's latency to stop falling
SETTLE_PATIENCE = 5  # rounds without a new low (by 20%) that end the wait
SETTLE_LIMIT_S = 900
GENERATE_ROWS = 100_000  # rows generated and normalised at a time, so making 1M vectors needs no 2x copy
METHODS = ("faiss-flat", "faiss-hnsw", "faiss-ivf", "milvus-lite")

Search = Callable[[np.ndarray], list[int]]
SearchAt = Callable[[int | None], Search]  # a built store's search at one setting (efSearch, nprobe)


def unit_vectors(count: int, seed: int) -> np.ndarray:
    """Return `count` seeded random L2-normalised float32 vectors of DIM dimensions."""
    rng = np.random.default_rng(seed)
    vectors = np.empty((count, DIM), dtype=np.float32)
    for start in range(0, count, GENERATE_ROWS):
        block = vectors[start : start + GENERATE_ROWS]
        rng.standard_normal(block.shape, dtype=np.float32, out=block)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return vectors


def rss_mib() -> float:
    """Return this process's current resident set size in MiB (from /proc, native memory included)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def folder_mib(folder: Path) -> float:
    """Return the total size of the files under `folder` in MiB."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def faiss_size_mib(index: faiss.Index, work: Path) -> float:
    """Return the size of `index` serialised to a file, in MiB."""
    path = work / "index.faiss"
    faiss.write_index(index, str(path))
    size = path.stat().st_size / 2**20
    path.unlink()
    return size


def faiss_search(index: faiss.Index) -> Search:
    """Return a single-query top-k search on `index`, on one thread."""
    faiss.omp_set_num_threads(1)

    def search(query: np.ndarray) -> list[int]:
        return index.search(query[None, :], TOP_K)[1][0].tolist()

    return search


def build_faiss_flat(vectors: np.ndarray, work: Path, args: dict[str, Any]) -> tuple[SearchAt, float]:
    """Return the exact inner-product index's search (it has no setting) and size."""
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors)
    return lambda setting: faiss_search(index), faiss_size_mib(index, work)


def build_faiss_hnsw(vectors: np.ndarray, work: Path, args: dict[str, Any]) -> tuple[SearchAt, float]:
    """Return the HNSW inner-product index's search at an efSearch, and its size."""
    index = faiss.IndexHNSWFlat(DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    index.add(vectors)

    def search_at(ef_search: int | None) -> Search:
        index.hnsw.efSearch = ef_search
        return faiss_search(index)

    return search_at, faiss_size_mib(index, work)


def ivf_lists(size: int) -> int:
    """Return the number of IVF cells for `size` vectors: the square root, a common starting point."""
    return max(1, round(size**0.5))


def build_faiss_ivf(vectors: np.ndarray, work: Path, args: dict[str, Any]) -> tuple[SearchAt, float]:
    """Return the IVF-flat inner-product index's search at an nprobe, and its size."""
    lists = ivf_lists(len(vectors))
    quantizer = faiss.IndexFlatIP(DIM)
    index = faiss.IndexIVFFlat(quantizer, DIM, lists, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(
        len(vectors), size=min(len(vectors), IVF_TRAINING_POINTS_PER_LIST * lists), replace=False
    )
    index.train(vectors[np.sort(sample)])
    index.add(vectors)

    def search_at(nprobe: int | None) -> Search:
        index.nprobe = nprobe
        return faiss_search(index)

    return search_at, faiss_size_mib(index, work)


def build_milvus_lite(vectors: np.ndarray, work: Path, args: dict[str, Any]) -> tuple[SearchAt, float]:
    """Return a Milvus Lite collection's search at an ef, and its .db folder's size, once every row is indexed."""
    from pymilvus import DataType, MilvusClient

    path = work / "bench.db"
    client = MilvusClient(str(path))
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    index_params = client.prepare_index_params()
    index_params.add_index(
        "vector",
        index_type="HNSW",
        metric_type="COSINE",
        params={"M": HNSW_M, "efConstruction": EF_CONSTRUCTION},
    )
    client.create_collection("bench", schema=schema, index_params=index_params)
    batch = args["milvus_batch"]
    for start in range(0, len(vectors), batch):
        rows = vectors[start : start + batch]
        client.insert("bench", [{"id": start + i, "vector": row} for i, row in enumerate(rows)])
    client.flush("bench")
    if (state := client.describe_index("bench", "vector"))["index_type"] != "HNSW":
        raise RuntimeError(f"Milvus Lite built {state['index_type']}, not HNSW")
    client.load_collection("bench")
    drain_milvus_lite(path)

    def search_at(ef: int | None) -> Search:
        search_params = {"metric_type": "COSINE", "params": {"ef": ef}}

        def search(query: np.ndarray) -> list[int]:
            hits = client.search(
                "bench",
                data=[query],
                limit=TOP_K,
                anns_field="vector",
                search_params=search_params,
                output_fields=["id"],
            )
            return [hit["id"] for hit in hits[0]]

        return search

    return search_at, folder_mib(path)


def drain_milvus_lite(path: Path) -> None:
    """Wait until Milvus Lite has compacted the collection's segments and built their final indexes.

    milvus-lite 3.x answers `describe_index` with every row indexed at once, then compacts the
    inserted segments and builds HNSW over the result in a background thread, meanwhile searching the
    rows without an index by brute force. Its server runs inside this process, so the wait goes through
    its own drain hook (`Collection._wait_for_bg`, private); build s then means ready to answer from
    the final index.
    """
    from milvus_lite.server_manager import server_manager_instance

    _, db, _ = server_manager_instance._servers[os.path.abspath(path)]
    db.get_collection("bench")._wait_for_bg()


BUILDERS = {
    "faiss-flat": build_faiss_flat,
    "faiss-hnsw": build_faiss_hnsw,
    "faiss-ivf": build_faiss_ivf,
    "milvus-lite": build_milvus_lite,
}


def search_settings(method: str, spec: dict[str, Any]) -> list[tuple[str, int | None]]:
    """Return the (label, value) settings a method's store is searched at."""
    if method in ("faiss-hnsw", "milvus-lite"):
        return [(f"ef {ef}", ef) for ef in spec["ef_search"]]
    if method == "faiss-ivf":
        return [(f"nprobe {n}/{ivf_lists(spec['size'])}", n) for n in spec["nprobe"]]
    return [("exact", None)]


def exact_top_k(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Return the ids of each query's true top k by inner product, by brute force."""
    return faiss.knn(queries, vectors, TOP_K, metric=faiss.METRIC_INNER_PRODUCT)[1]


def time_queries(search: Search, queries: np.ndarray) -> tuple[list[float], list[list[int]]]:
    """Return each timed query's seconds and found ids, after WARMUP_QUERIES untimed ones."""
    for query in queries[:WARMUP_QUERIES]:
        search(query)
    seconds: list[float] = []
    found: list[list[int]] = []
    for query in queries[WARMUP_QUERIES:]:
        started = time.perf_counter()
        found.append(search(query))
        seconds.append(time.perf_counter() - started)
    return seconds, found


def settle(search: Search, queries: np.ndarray) -> float:
    """Query in rounds until the latency stops falling; return the seconds that took.

    A guard for stores that go on working after they say they are ready (Milvus Lite, before
    `drain_milvus_lite`, got faster for minutes). A round of SETTLE_ROUND queries that does not beat
    the best round so far by 20% counts towards SETTLE_PATIENCE; a steady store passes after
    SETTLE_PATIENCE rounds.
    """
    started = time.perf_counter()
    best, calm = float("inf"), 0
    while calm < SETTLE_PATIENCE and time.perf_counter() - started < SETTLE_LIMIT_S:
        round_started = time.perf_counter()
        for query in queries:
            search(query)
        seconds = time.perf_counter() - round_started
        calm = 0 if seconds < 0.8 * best else calm + 1
        best = min(best, seconds)
    return time.perf_counter() - started


def run_worker(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Build one store on the spec's vectors, query it at each of its settings, and return the figures."""
    vectors = unit_vectors(spec["size"], spec["seed"])
    queries = unit_vectors(spec["queries"] + WARMUP_QUERIES, spec["seed"] + 1)
    measured = []
    with tempfile.TemporaryDirectory(prefix="kbqa-scale-") as tmp:
        rss_before = rss_mib()
        started = time.perf_counter()
        search_at, size_mib = BUILDERS[spec["method"]](vectors, Path(tmp), spec)
        build_seconds = time.perf_counter() - started
        rss_growth = rss_mib() - rss_before
        settings = search_settings(spec["method"], spec)
        settle_seconds = settle(search_at(settings[0][1]), unit_vectors(SETTLE_ROUND, spec["seed"] + 2))
        for label, setting in settings:
            measured.append((label, *time_queries(search_at(setting), queries)))
    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    truth = [set(ids.tolist()) for ids in exact_top_k(vectors, queries[WARMUP_QUERIES:])]
    return [
        {
            "size": spec["size"],
            "method": spec["method"],
            "search": label,
            "build_s": round(build_seconds, 3),
            "settle_s": round(settle_seconds, 1),
            "rss_growth_mib": round(rss_growth, 1),
            "size_mib": round(size_mib, 1),
            "p50_ms": round(1000 * percentile(seconds, 0.5), 3),
            "p95_ms": round(1000 * percentile(seconds, 0.95), 3),
            "recall_at_10": round(
                float(np.mean([len(set(f) & t) / TOP_K for f, t in zip(found, truth, strict=True)])), 4
            ),
        }
        for label, seconds, found in measured
    ]


def run_in_process(spec: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Return the figures of one store measured by a fresh process (this script with --worker).

    Return None when the worker fails (a crash, or killed when memory runs out), after printing why
    to stderr, so the other stores' figures are still printed.
    """
    finished = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if finished.returncode != 0:
        print(
            f"{spec['size']:,} {spec['method']}: the worker failed with exit code {finished.returncode}:\n"
            f"{finished.stderr[-3000:]}",
            file=sys.stderr,
        )
        return None
    return json.loads(finished.stdout.splitlines()[-1])


def machine() -> dict[str, Any]:
    """Return what the figures were measured on: CPU model, cores, memory, versions, load."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), "")
    meminfo = Path("/proc/meminfo").read_text().split()
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "ram_gib": round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "load_average_1_5_15_min": [round(load, 2) for load in os.getloadavg()],
    }


def format_table(results: list[dict[str, Any]]) -> str:
    """Return the results as an aligned plain-text table."""
    header = (
        "N",
        "store",
        "search",
        "build s",
        "settle s",
        "RSS +MiB",
        "size MiB",
        "p50 ms",
        "p95 ms",
        "recall@10",
    )
    rows = [header] + [
        (
            f"{r['size']:,}",
            r["method"],
            r["search"],
            f"{r['build_s']:.1f}",
            f"{r['settle_s']:.0f}",
            f"{r['rss_growth_mib']:.0f}",
            f"{r['size_mib']:.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p95_ms']:.2f}",
            f"{r['recall_at_10']:.3f}",
        )
        for r in results
    ]
    return aligned_table(rows, left=(1, 2))


def parse_args() -> argparse.Namespace:
    """Return the command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="100000", help="comma-separated vector counts, e.g. 100000,1000000"
    )
    parser.add_argument("--queries", type=int, default=200, help="timed queries per store")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the vectors (queries use seed + 1)")
    parser.add_argument(
        "--ef-search", default="64,256", help="comma-separated HNSW efSearch values (FAISS and Milvus Lite)"
    )
    parser.add_argument("--nprobe", default="8,32", help="comma-separated IVF cells searched per query")
    parser.add_argument("--milvus-batch", type=int, default=5000, help="rows per Milvus Lite insert call")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    """Measure every store at every size, each in its own process, and print the figures."""
    args = parse_args()
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    methods = args.methods.split(",")
    if unknown := set(methods) - set(METHODS):
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    for size in (int(s) for s in args.sizes.split(",")):
        for method in methods:
            spec = {
                "size": size,
                "method": method,
                "queries": args.queries,
                "seed": args.seed,
                "ef_search": [int(v) for v in args.ef_search.split(",")],
                "nprobe": [int(v) for v in args.nprobe.split(",")],
                "milvus_batch": args.milvus_batch,
            }
            rows = run_in_process(spec)
            if rows is None:
                failed.append(f"{size:,} {method}")
                continue
            results.extend(rows)
            # Each store's figures as soon as they are known, should a later store not finish.
            print(f"{size:,} {method}: {json.dumps(rows)}", file=sys.stderr)
    info = machine()
    if args.json:
        print(
            json.dumps(
                {
                    "machine": info,
                    "dim": DIM,
                    "k": TOP_K,
                    "queries": args.queries,
                    "results": results,
                    "failed": failed,
                }
            )
        )
        return
    print(
        f"machine: {info['cpu_model']}, {info['cpu_count']} CPUs ({info['usable_cpus']} usable), "
        f"{info['ram_gib']} GiB RAM, {info['platform']}, Python {info['python']}, faiss {info['faiss']}, "
        f"load average (1/5/15 min) at the end {' '.join(map(str, info['load_average_1_5_15_min']))}"
    )
    print(
        f"{DIM}-d random unit vectors (seed {args.seed}), {args.queries} single queries at k={TOP_K}; "
        f"HNSW M={HNSW_M}, efConstruction {EF_CONSTRUCTION}; IVF-flat over sqrt(N) cells"
    )
    print()
    print(format_table(results))
    if failed:
        print(f"\nfailed (see stderr): {', '.join(failed)}")


if __name__ == "__main__":
    main()
