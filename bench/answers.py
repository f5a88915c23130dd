"""Answer benchmark: what a user reads from kbqa's answer path, against the baseline a user would write.

Two parts, each in one process with one loaded embedding model (the bundled multilingual-e5-small):

1. `kbqa eval answers`' measures on a SQuAD-format set (DRCD by default, which the bundled calibration
   was not fitted on): a knowledge base leaving `--holdout` articles and `--holdout` same-article
   paragraphs out, their questions (unanswerable: off-topic and same-topic) and as many answerable ones,
   asked through the service's answer path. The baseline is LangChain's: `FAISS.from_texts` over the same
   chunks, embedded by the same model, and "answer = the best chunk", never refusing.
2. `--demo`: p50/p95 of an extractive answer on the sample knowledge base (`examples/docs`): the answer
   path now (answerability, the learned reader, sentence vectors kept between questions) against the
   path before it (search, then the hand-weighted reader embedding every sentence of every question).
3. `--bilingual`: the hand-written check set `bench/bilingual_check.json` on the sample knowledge base,
   questions in the other language than the documents that answer them (half of them unanswerable):
   answer hit and refusals, each question with what came back.

Run from the repository root:

    .venv/bin/python bench/answers.py --articles 100 --holdout 25
    .venv/bin/python bench/answers.py --demo
    .venv/bin/python bench/answers.py --bilingual
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import DEFAULT_DATASET, REPO_ROOT
from _langchain import FAISS, SharedModelEmbeddings

from app.answer_evaluation import TOP_K, Asked, answer_set, ask, summary
from app.evaluation import build_knowledge_base, percentile, read_squad
from app.services import KnowledgeService
from app.settings import load_settings
from llm import Answer, ExtractiveReader, Timings, Usage
from retrieval import SearchOptions

DEMO_QUESTIONS = [
    "报销需要多久到账？",
    "报销款多久到账？",
    "差旅住宿标准是多少？",
    "公司的创始人是谁？",
    "What is the hotel limit in Tokyo?",
    "密码多久过期？",
    "Who won the 2022 World Cup?",
    "公司年会在哪里举办？",
]


def langchain_answers(service: KnowledgeService, name: str, cases) -> list[Asked]:
    """Return the baseline's answers: the best chunk of LangChain's FAISS search, never a refusal."""
    kb = service.open(name)
    chunks = list(kb.store.chunks(kb.store.chunk_ids().tolist()).values())
    store = FAISS.from_texts([chunk.text for chunk in chunks], SharedModelEmbeddings(service.embedder))
    asked = []
    for case in cases:
        started = time.perf_counter()
        best = store.similarity_search(case.question.text, k=TOP_K)[0].page_content
        seconds = time.perf_counter() - started
        timings = Timings(1000 * seconds, 0.0, None, 1000 * seconds)
        asked.append(Asked(case, Answer(best, [], Usage(0, 0), timings, "stop", True, False), seconds))
    return asked


def dataset_part(args: argparse.Namespace) -> None:
    """Print kbqa's answer measures next to the LangChain baseline's."""
    service = KnowledgeService(load_settings(args.config, data_dir=args.data_dir))
    paragraphs = [p for p in read_squad(args.dataset) if args.articles is None or p.article < args.articles]
    chosen = answer_set(paragraphs, args.holdout, args.seed)
    name = args.kb or f"bench-answers-{args.dataset.stem}-{args.articles or 'all'}-{args.holdout}"
    build_knowledge_base(service, name, chosen.paragraphs)
    print(
        f"knowledge base {name}: {len(chosen.paragraphs)} paragraphs; {len(chosen.cases)} questions; "
        f"backend {service.settings.llm.backend}, min_answerability {service.settings.llm.min_answerability}"
    )
    results = {
        "kbqa": summary(ask(service, name, chosen.cases)),
        "langchain": summary(langchain_answers(service, name, chosen.cases)),
    }
    keys = [k for k in results["kbqa"] if k not in ("answerable", "off_topic", "same_topic")]
    print(f"\n{'measure':<20}" + "".join(f"{label:>12}" for label in results))
    for key in keys:
        cells = ("" if r[key] is None else f"{r[key]:.3f}" for r in results.values())
        print(f"{key:<20}" + "".join(f"{cell:>12}" for cell in cells))
    counts = results["kbqa"]
    print(
        f"\n{counts['answerable']} answerable, {counts['off_topic']} off-topic, {counts['same_topic']} same-topic"
    )


def demo_part(args: argparse.Namespace, rounds: int = 5) -> None:
    """Print the p50/p95 of an extractive answer on the sample knowledge base, now and before."""
    service = KnowledgeService(load_settings(args.config, data_dir=args.data_dir))
    if not service.catalog.exists("demo"):
        service.ingest("demo", [REPO_ROOT / "examples" / "docs"])
    service.embedder.embed_query("预热")
    options = SearchOptions(k=TOP_K)
    now, before = [], []
    for _ in range(rounds):
        for question in DEMO_QUESTIONS:
            started = time.perf_counter()
            service.ask("demo", question).read()
            now.append(time.perf_counter() - started)
            started = time.perf_counter()
            hits = service.search("demo", question, options)
            ExtractiveReader(service.embedder, service.settings.llm.extractive).read(question, hits)
            before.append(time.perf_counter() - started)
    print(f"{len(now)} answers on the sample knowledge base ({len(DEMO_QUESTIONS)} questions x {rounds})")
    print(f"{'path':<8}{'p50 ms':>10}{'p95 ms':>10}")
    for label, seconds in (("now", now), ("before", before)):
        print(f"{label:<8}{1000 * percentile(seconds, 0.5):>10.1f}{1000 * percentile(seconds, 0.95):>10.1f}")
    print(f"p50 now / before: {percentile(now, 0.5) / percentile(before, 0.5):.2f}x")


def bilingual_part(args: argparse.Namespace) -> None:
    """Print answer hit and refusals of the bilingual check set on the sample knowledge base."""
    service = KnowledgeService(load_settings(args.config, data_dir=args.data_dir))
    if not service.catalog.exists("demo"):
        service.ingest("demo", [REPO_ROOT / "examples" / "docs"])
    checks = json.loads((Path(__file__).parent / "bilingual_check.json").read_text(encoding="utf-8"))
    answerable, unanswerable = [], []
    for check in checks["questions"]:
        answer = service.ask("demo", check["question"]).read()
        text = " ".join(answer.text.split())
        if check["answers"]:
            hit = not answer.refused and any(a in answer.text for a in check["answers"])
            answerable.append((hit, answer.refused))
            verdict = "hit" if hit else "refused" if answer.refused else "miss"
        else:
            unanswerable.append(answer.refused)
            verdict = "refused" if answer.refused else "ANSWERED"
        print(f"{verdict:<9}{answer.answerability or 0:>6.2f}  {check['question']}  →  {text[:70]}")
    print(
        f"\n{len(answerable)} answerable: answer hit {sum(h for h, _ in answerable) / len(answerable):.3f}, "
        f"refused {sum(r for _, r in answerable) / len(answerable):.3f}; "
        f"{len(unanswerable)} unanswerable: refused {sum(unanswerable) / len(unanswerable):.3f}"
    )


def main() -> None:
    """Run the part asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="SQuAD-format JSON file.")
    parser.add_argument("--articles", type=int, default=100, help="Use the first N articles (0: all).")
    parser.add_argument("--holdout", type=int, default=25, help="Articles and paragraphs left out.")
    parser.add_argument("--seed", type=int, default=0, help="Which articles are left out.")
    parser.add_argument("--kb", default=None, help="Knowledge-base name (default: from the arguments).")
    parser.add_argument("--demo", action="store_true", help="Time answers on the sample knowledge base.")
    parser.add_argument(
        "--bilingual",
        action="store_true",
        help="Answer the bilingual check set on the sample knowledge base.",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="Data directory (default: settings).")
    parser.add_argument("--config", type=Path, default=None, help="YAML settings file.")
    args = parser.parse_args()
    args.articles = args.articles or None
    if args.demo:
        demo_part(args)
    elif args.bilingual:
        bilingual_part(args)
    else:
        dataset_part(args)


if __name__ == "__main__":
    main()
