"""`kbqa eval …`: retrieval and answer quality on SQuAD-format datasets, and answerability calibration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from app.cli.common import (
    DatasetOption,
    IngestionProgress,
    JsonOption,
    KbOption,
    RerankOption,
    console,
    fail,
    progress_bar,
    run_or_fail,
    service,
    valid_or_fail,
)

if TYPE_CHECKING:
    from app.answer_evaluation import AnswerSet, Observations
    from app.evaluation import Paragraph
    from app.services import KnowledgeService

eval_app = typer.Typer(
    help="Measure retrieval and answers on question-answer datasets; calibrate answerability.",
    no_args_is_help=True,
)


@eval_app.command("retrieval")
def eval_retrieval(
    kb: KbOption,
    dataset: DatasetOption,
    mode: Annotated[
        str | None, typer.Option("--mode", help="dense, lexical or hybrid; default: the configured mode.")
    ] = None,
    rerank: RerankOption = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=1,
            help="Ask only the first N questions, and index only the paragraphs of the articles they "
            "come from (default: every question and every paragraph).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Score top-10 retrieval on a SQuAD-format dataset: recall@1/5/10, MRR@10 and nDCG@10.

    Each paragraph becomes one document (the knowledge base is built, or reused if it holds only them).

    A hit is relevant by "answer" if its chunk contains an answer, by "paragraph" if it is from the question's.
    """
    from app.evaluation import build_knowledge_base, percentile, read_squad, run_questions, select
    from retrieval import SearchOptions

    options = valid_or_fail(lambda: SearchOptions(k=10, mode=mode, rerank=rerank))
    try:
        paragraphs, cases = select(read_squad(dataset), limit)
    except (OSError, ValueError, KeyError, TypeError) as error:
        fail(f"cannot read SQuAD-format dataset {dataset}: {error!r}")
    svc = service()
    with IngestionProgress() as progress:
        run_or_fail(lambda: build_knowledge_base(svc, kb, paragraphs, progress))
    with progress_bar("asking", len(cases)) as advance:
        run = run_or_fail(lambda: run_questions(svc, kb, cases, options, advance))
    result = {
        "kb": kb,
        "mode": options.mode or svc.settings.retrieval.mode,
        "rerank": rerank,
        "questions": len(cases),
        "paragraphs": len(paragraphs),
        "metrics": run.metrics(),
        "latency_ms": {
            "p50": 1000 * percentile(run.seconds, 0.5),
            "p95": 1000 * percentile(run.seconds, 0.95),
        },
    }
    if as_json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return
    metrics = result["metrics"]
    table = Table("hit definition", *metrics["answer"])
    for definition, values in metrics.items():
        table.add_row(definition, *(f"{value:.3f}" for value in values.values()))
    console.print(
        f"{result['questions']} questions over {result['paragraphs']} paragraphs · mode {result['mode']}"
        f"{' + rerank' if rerank else ''} · p50 {result['latency_ms']['p50']:.1f} ms, "
        f"p95 {result['latency_ms']['p95']:.1f} ms",
        highlight=False,
    )
    console.print(table)


HoldoutOption = Annotated[
    int,
    typer.Option(
        "--holdout",
        min=1,
        help="Leave this many whole articles (off-topic questions) and one paragraph of this many other "
        "articles (same-topic questions) out of the knowledge base.",
    ),
]
ArticlesOption = Annotated[
    int | None,
    typer.Option(
        "--articles", min=3, help="Use only N articles of the dataset, from the first on (default: all)."
    ),
]
SkipArticlesOption = Annotated[
    int,
    typer.Option(
        "--skip-articles",
        min=0,
        help="Pass over the dataset's first K articles: `--skip-articles 100 --articles 100` uses "
        "articles 100-199, a slice apart from one measured before.",
    ),
]
SeedOption = Annotated[int, typer.Option("--seed", help="Which articles are left out.")]
AnswersKbOption = Annotated[
    str | None, typer.Option("--kb", help="Knowledge base to build (default: answers-<file name>).")
]


def built_answer_set(
    svc: KnowledgeService,
    kb: str,
    dataset: Path,
    holdout: int,
    articles: int | None,
    seed: int,
    skip: int = 0,
):
    """Return the dataset's answer set with its knowledge base built (or reused)."""
    from app.answer_evaluation import answer_set
    from app.evaluation import build_knowledge_base

    try:
        paragraphs = dataset_slice(dataset, articles, skip)
        chosen = answer_set(paragraphs, holdout, seed)
    except (OSError, ValueError, KeyError, TypeError) as error:
        fail(f"cannot use SQuAD-format dataset {dataset}: {error}")
    with IngestionProgress() as progress:
        run_or_fail(lambda: build_knowledge_base(svc, kb, chosen.paragraphs, progress))
    return chosen


def dataset_slice(dataset: Path, articles: int | None, skip: int = 0) -> list[Paragraph]:
    """Return the paragraphs of articles `skip` to `skip + articles` of a SQuAD-format file."""
    from app.evaluation import read_squad

    end = None if articles is None else skip + articles
    return [p for p in read_squad(dataset) if skip <= p.article and (end is None or p.article < end)]


@eval_app.command("calibrate")
def eval_calibrate(
    dataset: Annotated[
        Path, typer.Option("--dataset", help="SQuAD-format JSON file (e.g. cmrc2018_trial.json).")
    ],
    kb: Annotated[
        str | None, typer.Option("--kb", help="Knowledge base to build (default: calibrate-<file name>).")
    ] = None,
    holdout: HoldoutOption = 40,
    articles: ArticlesOption = None,
    seed: SeedOption = 0,
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds",
            min=1,
            max=20,
            help="Fit on this many draws of the held-out articles (seeds SEED, SEED+1, …), pooled, each in "
            "a knowledge base of its own (KB, KB-2, …): more unanswerable questions than one draw leaves, "
            "so a better-calibrated fit, at a build and a search pass per round.",
        ),
    ] = 4,
    rerank: Annotated[
        bool, typer.Option("--rerank", help="Fit with the configured reranker's score as a signal too.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Fit answerability and the extractive reader for the configured embedding model (and reranker).

    The fit is stored under <data_dir>/calibrations/, where every knowledge base of that model finds it.
    """
    from app.answer_evaluation import Observations, fit_calibration

    svc = service()
    kb = kb or f"calibrate-{dataset.stem}"
    reranker = svc.settings.retrieval.reranker.model if rerank else None
    if rerank and not reranker:
        fail("--rerank needs a reranker model (retrieval.reranker.model)", code=2)
    seen, more_answerable = Observations(), Observations()
    for round_ in range(rounds):
        round_kb = kb if round_ == 0 else f"{kb}-{round_ + 1}"
        chosen = built_answer_set(svc, round_kb, dataset, holdout, articles, seed + round_)
        balanced, more = _observed_round(svc, round_kb, chosen, rerank, f"searching ({round_ + 1}/{rounds})")
        seen.extend(balanced)
        more_answerable.extend(more)
    with progress_bar("reading", len(seen.cases) + len(more_answerable.cases)) as advance:
        calibration = run_or_fail(lambda: fit_calibration(svc, seen, more_answerable, reranker, advance))
    calibration.report.update(dataset=dataset.name, holdout=holdout, rounds=rounds, seed=seed)
    path = calibration.save(svc.settings.data_dir / "calibrations")
    result = {
        "path": str(path),
        "report": calibration.report,
        "answerability": calibration.answerability.to_dict(),
    }
    if as_json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return
    report = calibration.report
    console.print(
        f"fitted on {report['questions']} questions ({report['answerable_share']:.0%} answerable) of "
        f"{dataset.name} in {rounds} round(s), the reader on {report['reader_questions']} answerable ones: "
        f"calibration error {report['ece']:.3f} on them; saved {path}",
        highlight=False,
    )
    table = Table("answerability signal", "weight (standardised)")
    model = calibration.answerability
    for name, weight in zip(model.features, model.weights, strict=True):
        table.add_row(name, f"{weight:+.3f}")
    console.print(table)


def _observed_round(
    svc: KnowledgeService, kb: str, chosen: AnswerSet, rerank: bool, title: str
) -> tuple[Observations, Observations]:
    """Return the searches of a round's balanced questions and those of its other answerable ones."""
    from app.answer_evaluation import observe

    with progress_bar(title, len(chosen.cases) + len(chosen.more_answerable)) as advance:
        balanced = run_or_fail(lambda: observe(svc, kb, chosen.cases, rerank, advance))
        more = run_or_fail(lambda: observe(svc, kb, chosen.more_answerable, rerank, advance))
    return balanced, more


@eval_app.command("answers")
def eval_answers(
    dataset: DatasetOption,
    kb: AnswersKbOption = None,
    holdout: HoldoutOption = 40,
    articles: ArticlesOption = None,
    skip: SkipArticlesOption = 0,
    seed: SeedOption = 0,
    as_json: JsonOption = False,
) -> None:
    """Ask answerable and unanswerable questions through the configured answer path and score the answers.

    Reports answer hit (a gold answer in the answer), first-sentence hit, the share refused of answerable,
    off-topic and same-topic questions, the answerability calibration error, and p50/p95 latency.
    """
    from app.answer_evaluation import ask, summary

    svc = service()
    kb = kb or f"answers-{dataset.stem}"
    chosen = built_answer_set(svc, kb, dataset, holdout, articles, seed, skip)
    with progress_bar("asking", len(chosen.cases)) as advance:
        asked = run_or_fail(lambda: ask(svc, kb, chosen.cases, advance))
    result = {
        "kb": kb,
        "backend": svc.settings.llm.backend,
        "min_answerability": svc.settings.llm.min_answerability,
        **summary(asked),
    }
    print_measures(result, as_json)


@eval_app.command("conversations")
def eval_conversations(
    dataset: DatasetOption,
    kb: AnswersKbOption = None,
    holdout: HoldoutOption = 40,
    articles: ArticlesOption = None,
    skip: SkipArticlesOption = 0,
    seed: SeedOption = 0,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", min=1, help="Ask at most N answerable and N held-out follow-ups (each several ways)."
        ),
    ] = 200,
    part: Annotated[
        str,
        typer.Option(
            "--part",
            help="Ask the follow-ups of every article (all), of the even-index articles of the file (tune: "
            "look at these while improving the rewriter) or of the odd-index ones (report: measure once).",
        ),
    ] = "all",
    as_json: JsonOption = False,
) -> None:
    """Ask follow-ups (a question with its article's title made a pronoun, after another question of the
    article) through the configured answer path, and compare them with the questions as written.

    Reports the follow-up's answer hit with and without the history, the question's hit as written and
    after an unrelated turn, and the refusals of held-out follow-ups and of the same questions as written.
    """
    from app.conversation_evaluation import (
        PARTS,
        article_titles,
        ask_conversations,
        conversation_set,
        conversation_summary,
    )

    if part not in PARTS:
        fail(f"--part must be one of {', '.join(PARTS)}, not {part!r}")
    svc = service()
    kb = kb or f"answers-{dataset.stem}"
    chosen = built_answer_set(svc, kb, dataset, holdout, articles, seed, skip)
    try:
        paragraphs = dataset_slice(dataset, articles, skip)
        followups = conversation_set(chosen, paragraphs, article_titles(dataset), seed, limit, part)
    except (OSError, ValueError, KeyError, TypeError) as error:
        fail(f"cannot use SQuAD-format dataset {dataset}: {error}")
    answerable = sum(f.original.kind == "answerable" for f in followups)
    with progress_bar("asking", 4 * answerable + 2 * (len(followups) - answerable)) as advance:
        asked = run_or_fail(lambda: ask_conversations(svc, kb, followups, advance))
    result = {"kb": kb, "backend": svc.settings.llm.backend, "part": part, **conversation_summary(asked)}
    print_measures(result, as_json)


def print_measures(result: dict, as_json: bool) -> None:
    """Print a report of measures as JSON, or as a table of measure and value; return nothing."""
    if as_json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return
    table = Table("measure", "value")
    for key, value in result.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
