"""Knowledge-base search cost: kbqa's vector search on a knowledge base held open, against plain FAISS.

One knowledge base holds N random L2-normalised 384-d chunk vectors (multilingual-e5-small's size;
generated, not embedded, so no model time is counted), in documents of 1,000 chunks. Each method
answers the same Q random unit queries, one at a time, for their top 10:

- faiss: a plain `IndexFlatIP` over the same vectors, `index.search` alone (the reference).
- kbqa held open: what the server does per request: `OpenKnowledgeBases.get` (two `stat` calls and a
  generation check) and `KnowledgeBase.search` (FAISS, then the chunks' rows from SQLite).
- kbqa open per request: `KnowledgeBaseCatalog.open`, search, close: what a server that opens the
  knowledge base for each request pays (the whole FAISS index read from disk each time).

FAISS runs on one thread in every method. Run from the repository root:

    .venv/bin/python bench/kb_search.py
    .venv/bin/python bench/kb_search.py --chunks 300000 --queries 100
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from app.evaluation import percentile
from ingestion.splitter import Chunk
from retrieval import EmbeddingIdentity, KnowledgeBaseCatalog, NewDocument, OpenKnowledgeBases

DIM = 384
TOP_K = 10
CHUNKS_PER_DOCUMENT = 1_000
WARMUP_QUERIES = 3
IDENTITY = EmbeddingIdentity(backend="bench", model="random", model_name="random", dimension=DIM)


def chunk(text: str) -> Chunk:
    """Return a chunk of `text` standing alone (no page or heading)."""
    return Chunk(text=text, embed_text=text, page=None, heading_path=(), start=0, end=len(text))


def unit_vectors(count: int, seed: int) -> np.ndarray:
    """Return `count` seeded random L2-normalised float32 vectors."""
    vectors = np.random.default_rng(seed).standard_normal((count, DIM), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def build(catalog: KnowledgeBaseCatalog, vectors: np.ndarray) -> None:
    """Create knowledge base `bench` holding `vectors`, one document per CHUNKS_PER_DOCUMENT."""
    kb = catalog.create("bench", IDENTITY, {})
    with kb.writing():
        for number, start in enumerate(range(0, len(vectors), CHUNKS_PER_DOCUMENT)):
            block = vectors[start : start + CHUNKS_PER_DOCUMENT]
            kb.add_documents(
                [
                    NewDocument(
                        source=f"doc{number}.txt",
                        title=f"doc{number}",
                        content_hash=f"hash{number}",
                        size=len(block),
                        page_count=1,
                        chunks=[chunk(f"doc{number} chunk {i}") for i in range(len(block))],
                        vectors=block,
                    )
                ]
            )
    kb.close()


def timed(search: Callable[[np.ndarray], object], queries: np.ndarray) -> list[float]:
    """Return the seconds of each query after WARMUP_QUERIES untimed ones."""
    for query in queries[:WARMUP_QUERIES]:
        search(query)
    seconds = []
    for query in queries[WARMUP_QUERIES:]:
        started = time.perf_counter()
        search(query)
        seconds.append(time.perf_counter() - started)
    return seconds


def open_per_request(catalog: KnowledgeBaseCatalog) -> Callable[[np.ndarray], object]:
    """Return a search that opens the knowledge base for each query."""

    def search(query: np.ndarray) -> object:
        kb = catalog.open("bench")
        try:
            return kb.search(query, TOP_K)
        finally:
            kb.close()

    return search


def main() -> None:
    """Build the knowledge base, time each method, and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000, help="chunk vectors in the knowledge base")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per method")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    vectors = unit_vectors(args.chunks, seed=0)
    queries = unit_vectors(args.queries + WARMUP_QUERIES, seed=1)
    plain = faiss.IndexFlatIP(DIM)
    plain.add(vectors)
    with tempfile.TemporaryDirectory(prefix="kbqa-bench-") as tmp:
        catalog = KnowledgeBaseCatalog(Path(tmp))
        build(catalog, vectors)
        held = OpenKnowledgeBases(catalog)
        methods = {
            "faiss": lambda query: plain.search(query[None, :], TOP_K),
            "kbqa held open": lambda query: held.get("bench").search(query, TOP_K),
            "kbqa open per request": open_per_request(catalog),
        }
        results = {name: timed(search, queries) for name, search in methods.items()}
        held.close()
    reference = percentile(results["faiss"], 0.5)
    print(
        f"{args.chunks:,} chunks of {DIM}-d, {args.queries} single queries at k={TOP_K}, FAISS on one thread; "
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"{'method':<22} {'p50 ms':>8} {'p95 ms':>8} {'p50 / faiss':>12}")
    for name, seconds in results.items():
        p50, p95 = percentile(seconds, 0.5), percentile(seconds, 0.95)
        print(f"{name:<22} {1000 * p50:8.2f} {1000 * p95:8.2f} {p50 / reference:12.2f}")


if __name__ == "__main__":
    main()
