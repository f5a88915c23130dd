"""The `kbqa` command line. Heavy libraries are imported inside commands so `kbqa --help` stays fast."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from app.finetune_cli import finetune_app

if TYPE_CHECKING:
    from app.services import KnowledgeService
    from ingestion import FileOutcome, IngestionReport

# Seconds `kbqa serve` waits, after SIGTERM, for open requests (a long stream) before cutting them off.
GRACEFUL_SHUTDOWN_S = 10

app = typer.Typer(help="kbqa: local knowledge-base question answering.", no_args_is_help=True)
kb_app = typer.Typer(help="Create, list, inspect and delete knowledge bases.", no_args_is_help=True)
index_app = typer.Typer(help="Build knowledge bases from files.", no_args_is_help=True)
eval_app = typer.Typer(
    help="Measure retrieval and answers on question-answer datasets; calibrate answerability.",
    no_args_is_help=True,
)
app.add_typer(kb_app, name="kb")
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")
llm_app = typer.Typer(help="Prepare local language models.", no_args_is_help=True)
app.add_typer(llm_app, name="llm")
app.add_typer(finetune_app, name="finetune")

console = Console()
errors = Console(stderr=True)

KbOption = Annotated[str, typer.Option("--kb", help="Knowledge-base name.")]


class _Context:
    config: Path | None = None
    data_dir: Path | None = None
    log_level: str = "WARNING"


@app.callback()
def main_options(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML settings file (default: $KBQA_CONFIG, else built-in)."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Data directory (default: $KBQA_DATA_DIR, else ./data).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "warning",
) -> None:
    """kbqa: local knowledge-base question answering."""
    _Context.config = config
    _Context.data_dir = data_dir
    _Context.log_level = log_level


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error and exit with `code`."""
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _metadata(pairs: list[str] | None) -> dict[str, str] | None:
    """Return `--meta key=value` options as a dict (None when there are none), or exit 2 naming a bad one."""
    from retrieval import parse_pairs

    if not pairs:
        return None
    try:
        return parse_pairs(pairs)
    except ValueError as error:
        fail(str(error), code=2)


def service() -> KnowledgeService:
    """Return the knowledge service for the chosen settings, or exit naming the bad setting."""
    from app.logs import configure_logging
    from app.services import KnowledgeService
    from app.settings import SettingsError, load_settings

    configure_logging(_Context.log_level)
    try:
        settings = load_settings(_Context.config, data_dir=_Context.data_dir)
    except SettingsError as error:
        fail(str(error), code=2)
    return KnowledgeService(settings)


def run_or_fail(action):
    """Return `action()`, turning the errors a user can cause into a message and exit code 1."""
    from finetune.errors import FinetuneError
    from llm import LLMError
    from retrieval import KnowledgeBaseError

    try:
        return action()
    except (KnowledgeBaseError, LLMError, FinetuneError, ValueError) as error:
        fail(str(error))


@kb_app.command("create")
def kb_create(
    name: Annotated[str, typer.Argument(help="Name: letters (Chinese too), digits, '-', '_'.")],
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Vector store: faiss (files in the folder) or milvus [default: the vector_store.backend setting].",
        ),
    ] = None,
    uri: Annotated[
        str | None,
        typer.Option(
            "--uri",
            help="Milvus: a server URI (http://host:19530) or a Milvus Lite file in the folder "
            "[default: the vector_store.milvus_uri setting, milvus.db].",
        ),
    ] = None,
) -> None:
    """Create an empty knowledge base with the configured embedding model and splitter."""
    svc = service()
    kb = run_or_fail(lambda: svc.create(name, store, uri))
    kb.close()
    where = kb.manifest.store.uri or "files"
    console.print(
        f"created knowledge base [bold]{name}[/] ({kb.manifest.store.backend}, {where}) in {kb.directory}"
    )


@kb_app.command("migrate")
def kb_migrate(
    name: Annotated[str, typer.Argument(help="Knowledge-base name.")],
    to: Annotated[str, typer.Option("--to", help="The vector store to move to: faiss or milvus.")],
    uri: Annotated[str | None, typer.Option("--uri", help="Milvus: server URI or Milvus Lite file.")] = None,
) -> None:
    """Rebuild a knowledge base's vectors in another store from its SQLite copy, then switch to it."""
    svc = service()
    run_or_fail(lambda: svc.migrate(name, to, uri))
    console.print(f"knowledge base [bold]{name}[/] now uses {to}")


@kb_app.command("list")
def kb_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the knowledge bases with their sizes."""
    svc = service()
    infos = [run_or_fail(lambda n=n: svc.info(n)) for n in svc.catalog.names()]
    if as_json:
        print(json.dumps([_info_dict(info) for info in infos], ensure_ascii=False, indent=2))
        return
    if not infos:
        console.print(f"no knowledge bases in {svc.catalog.root}")
        return
    table = Table("name", "documents", "chunks", "embedding model", "store", "created")
    for info in infos:
        table.add_row(
            info.name,
            str(info.documents),
            str(info.chunks),
            info.embedding.model,
            info.store.backend,
            info.created_at,
        )
    console.print(table)


@kb_app.command("info")
def kb_info(
    name: Annotated[str, typer.Argument(help="Knowledge-base name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a knowledge base's documents, chunks, embedding model, splitter and size."""
    svc = service()
    info = run_or_fail(lambda: svc.info(name))
    if as_json:
        print(json.dumps(_info_dict(info), ensure_ascii=False, indent=2))
        return
    table = Table(show_header=False)
    for key, value in _info_dict(info).items():
        table.add_row(key, json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else str(value))
    console.print(table)


@kb_app.command("delete")
def kb_delete(
    name: Annotated[str, typer.Argument(help="Knowledge-base name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a knowledge base and all its documents."""
    svc = service()
    if not run_or_fail(lambda: svc.catalog.exists(name)):
        fail(f"knowledge base '{name}' does not exist")
    if not yes and not typer.confirm(f"Delete knowledge base '{name}' and all its documents?"):
        raise typer.Exit(1)
    run_or_fail(lambda: svc.delete(name))
    console.print(f"deleted knowledge base [bold]{name}[/]")


@kb_app.command("check")
def kb_check(name: Annotated[str, typer.Argument(help="Knowledge-base name.")]) -> None:
    """Check that the FAISS index and the chunk store agree; exit 1 if they do not."""
    svc = service()

    def check():
        kb = svc.catalog.open(name)
        try:
            return kb.check()
        finally:
            kb.close()

    report = run_or_fail(check)
    if not report.ok:
        fail(
            f"knowledge base '{name}' is inconsistent: {len(report.ids_without_chunk)} vectors without a chunk, "
            f"{len(report.chunks_without_vector)} chunks without a vector"
        )
    console.print(f"knowledge base [bold]{name}[/] is consistent")


@index_app.command("build")
def index_build(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to index.")],
    kb: KbOption,
    meta: Annotated[
        list[str] | None,
        typer.Option(
            "--meta",
            metavar="KEY=VALUE",
            help="Metadata for every file of this run (repeatable). It replaces the files' metadata, "
            "unchanged files included (without embedding them again); without it, files keep theirs.",
        ),
    ] = None,
) -> None:
    """Index files and folders into a knowledge base (created if missing).

    Unchanged files are skipped, changed ones replaced. Exits 1 if any file failed.
    """
    metadata = _metadata(meta)
    svc = service()
    with _IngestionProgress() as progress:
        report = run_or_fail(lambda: svc.ingest(kb, paths, progress, metadata))
    _print_report(report)
    if report.failures:
        raise typer.Exit(1)


@app.command("search")
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    kb: KbOption,
    k: Annotated[int, typer.Option("-k", "--top-k", help="How many chunks to return.")] = 5,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode", help="dense, lexical (BM25 over jieba words) or hybrid (both, fused); default hybrid."
        ),
    ] = None,
    rerank: Annotated[
        bool, typer.Option("--rerank", help="Re-score with the configured cross-encoder.")
    ] = False,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="Keep hits whose cosine similarity to the query is >= this. Cosines lie in [-1, 1]; "
            "higher is more similar. Applies in every mode.",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option("--source", help="Only documents whose source matches this glob, e.g. 'docs/hr/*'."),
    ] = None,
    meta: Annotated[
        list[str] | None,
        typer.Option(
            "--meta",
            metavar="KEY=VALUE",
            help="Only documents whose metadata has this key with this value (repeatable: all must match).",
        ),
    ] = None,
    neighbours: Annotated[
        int, typer.Option("--neighbours", help="Also show this many chunks before and after each hit.")
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Search a knowledge base: the best chunks, each with its cosine score in [-1, 1] (higher is better)."""
    from pydantic import ValidationError

    from retrieval import SearchOptions

    metadata = _metadata(meta)
    try:
        options = SearchOptions(
            k=k,
            mode=mode,
            rerank=rerank,
            score_threshold=threshold,
            source=source,
            metadata=metadata,
            neighbours=neighbours,
        )
    except ValidationError as error:
        fail("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in error.errors()), code=2)
    svc = service()
    hits = run_or_fail(lambda: svc.search(kb, query, options))
    if as_json:
        print(json.dumps([asdict(hit) for hit in hits], ensure_ascii=False, indent=2))
        return
    if not hits:
        console.print("no matching chunks")
    for rank, hit in enumerate(hits, 1):
        place = hit.source + (f", page {hit.page}" if hit.page else "")
        if hit.heading_path:
            place += " — " + " > ".join(hit.heading_path)
        if hit.metadata:
            place += " [" + ", ".join(f"{key}={value}" for key, value in hit.metadata.items()) + "]"
        if hit.ocr:
            place += " (OCR)"
        why = f"cosine {hit.score:.3f}"
        if hit.lexical_score is not None:
            why += f" · bm25 {hit.lexical_score:.2f}"
        if hit.rerank_score is not None:
            why += f" · rerank {hit.rerank_score:.3f}"
        console.print(f"[bold]{rank}.[/] [green]{why}[/]  [cyan]{escape(place)}[/]", highlight=False)
        text = "\n".join([*hit.context_before, hit.text, *hit.context_after]).strip()
        console.print(f"   {text[: 300 * (1 + 2 * neighbours)]}", highlight=False, markup=False)


@app.command("ask")
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    kb: KbOption,
    adapter: Annotated[
        str | None,
        typer.Option("--adapter", help="LoRA adapter by name (from llm.adapters); 'base' for none."),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", help="How many chunks to retrieve.")] = 5,
    mode: Annotated[str | None, typer.Option("--mode", help="dense, lexical or hybrid.")] = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Use only chunks with cosine similarity >= this (in [-1, 1])."),
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", help="Most tokens to generate.")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", help="Sampling temperature; 0 is greedy.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer and citations as JSON.")] = False,
) -> None:
    """Answer a question from a knowledge base, streaming the answer, then listing its citations."""
    from pydantic import ValidationError

    from llm import AnswerOptions
    from retrieval import SearchOptions

    svc = service()
    try:
        options = AnswerOptions(
            retrieval=SearchOptions(k=k, mode=mode, score_threshold=threshold),
            generation=svc.generation_params(
                adapter=adapter, max_new_tokens=max_new_tokens, temperature=temperature
            ),
        )
    except ValidationError as error:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()), code=2)
    stream = run_or_fail(lambda: svc.ask(kb, question, options=options))
    if as_json:
        answer = run_or_fail(stream.read)
        print(json.dumps(asdict(answer), ensure_ascii=False, indent=2))
        return

    def print_deltas():
        for delta in stream:
            console.print(delta, end="", highlight=False, markup=False, soft_wrap=True)
        console.print()
        return stream.answer

    answer = run_or_fail(print_deltas)
    for citation in answer.citations:
        place = citation.source + (f", page {citation.page}" if citation.page else "")
        console.print(f"[{citation.n}] {place} (cosine {citation.score:.3f})", highlight=False, markup=False)
    if answer.closest:
        console.print("closest passages (not used):", style="dim", highlight=False)
    for passage in answer.closest:
        place = passage.source + (f", page {passage.page}" if passage.page else "")
        snippet = " ".join(passage.text.split())[:80]
        console.print(f"  {place}: {snippet}…", style="dim", highlight=False, markup=False)
    usage = (
        f"{answer.usage.prompt_tokens}+{answer.usage.completion_tokens} tokens, "
        if answer.usage.total_tokens
        else ""
    )
    found = "" if answer.answerability is None else f"answerability {answer.answerability:.2f}, "
    errors.print(f"[dim]{found}{usage}{answer.timings.total_ms:.0f} ms[/]", highlight=False)


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Address (default: server.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default: server.port).")] = None,
    sample_kb: Annotated[
        str | None,
        typer.Option(
            "--sample-kb", help="Build this knowledge base from server.sample_docs if it is missing."
        ),
    ] = None,
) -> None:
    """Run the web service: REST API, OpenAI-compatible API and the web page."""
    import uvicorn

    from app.logs import configure_logging
    from app.server import create_app
    from app.settings import SettingsError, load_settings

    configure_logging("INFO" if _Context.log_level.upper() == "WARNING" else _Context.log_level)
    overrides = {"server": {"host": host, "port": port, "sample_kb": sample_kb}}
    try:
        settings = load_settings(_Context.config, data_dir=_Context.data_dir)
        server = settings.server.model_copy(
            update={k: v for k, v in overrides["server"].items() if v is not None}
        )
        settings = settings.model_copy(update={"server": server})
    except SettingsError as error:
        fail(str(error), code=2)
    url = f"http://{'127.0.0.1' if server.host in ('0.0.0.0', '::') else server.host}:{server.port}"
    # One address a line, never wrapped: a terminal narrower than a line cuts nothing in the middle of a URL.
    banner = f"kbqa: web page {url}/\n      API docs {url}/docs\n      data in  {settings.data_dir.resolve()}"
    errors.print(banner, soft_wrap=True, highlight=False, markup=False)
    # On SIGTERM, requests still open after this long are cut off; the ingestion worker then stops within
    # its batch at hand (README, "Ingestion jobs").
    uvicorn.run(
        create_app(settings),
        host=server.host,
        port=server.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


@eval_app.command("retrieval")
def eval_retrieval(
    kb: KbOption,
    dataset: Annotated[Path, typer.Option("--dataset", help="SQuAD-format JSON file (e.g. DRCD_dev.json).")],
    mode: Annotated[
        str | None, typer.Option("--mode", help="dense, lexical or hybrid; default: the configured mode.")
    ] = None,
    rerank: Annotated[
        bool, typer.Option("--rerank", help="Re-score with the configured cross-encoder.")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=1,
            help="Ask only the first N questions, and index only the paragraphs of the articles they "
            "come from (default: every question and every paragraph).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score top-10 retrieval on a SQuAD-format dataset: recall@1/5/10, MRR@10 and nDCG@10.

    Each paragraph becomes one document (the knowledge base is built, or reused if it holds only them).

    A hit is relevant by "answer" if its chunk contains an answer, by "paragraph" if it is from the question's.
    """
    from pydantic import ValidationError

    from app.evaluation import build_knowledge_base, percentile, read_squad, run_questions, select
    from retrieval import SearchOptions

    try:
        options = SearchOptions(k=10, mode=mode, rerank=rerank)
    except ValidationError as error:
        fail("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in error.errors()), code=2)
    try:
        paragraphs, cases = select(read_squad(dataset), limit)
    except (OSError, ValueError, KeyError, TypeError) as error:
        fail(f"cannot read SQuAD-format dataset {dataset}: {error!r}")
    svc = service()
    with _IngestionProgress() as progress:
        run_or_fail(lambda: build_knowledge_base(svc, kb, paragraphs, progress))
    with _bar("asking", len(cases)) as advance:
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
    typer.Option("--articles", min=3, help="Use only the first N articles of the dataset (default: all)."),
]
SeedOption = Annotated[int, typer.Option("--seed", help="Which articles are left out.")]


def _answer_set(svc: KnowledgeService, kb: str, dataset: Path, holdout: int, articles: int | None, seed: int):
    """Return the dataset's answer set with its knowledge base built (or reused)."""
    from app.answer_evaluation import answer_set
    from app.evaluation import build_knowledge_base, read_squad

    try:
        paragraphs = [p for p in read_squad(dataset) if articles is None or p.article < articles]
        chosen = answer_set(paragraphs, holdout, seed)
    except (OSError, ValueError, KeyError, TypeError) as error:
        fail(f"cannot use SQuAD-format dataset {dataset}: {error}")
    with _IngestionProgress() as progress:
        run_or_fail(lambda: build_knowledge_base(svc, kb, chosen.paragraphs, progress))
    return chosen


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
    rerank: Annotated[
        bool, typer.Option("--rerank", help="Fit with the configured reranker's score as a signal too.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Fit answerability and the extractive reader for the configured embedding model (and reranker).

    The fit is stored under <data_dir>/calibrations/, where every knowledge base of that model finds it.
    """
    from app.answer_evaluation import fit_calibration, observe

    svc = service()
    kb = kb or f"calibrate-{dataset.stem}"
    reranker = svc.settings.retrieval.reranker.model if rerank else None
    if rerank and not reranker:
        fail("--rerank needs a reranker model (retrieval.reranker.model)", code=2)
    chosen = _answer_set(svc, kb, dataset, holdout, articles, seed)
    with _bar("searching", len(chosen.cases)) as advance:
        seen = run_or_fail(lambda: observe(svc, kb, chosen.cases, rerank, advance))
    with _bar("reading", len(chosen.cases)) as advance:
        calibration = run_or_fail(lambda: fit_calibration(svc, seen, reranker, advance))
    calibration.report["dataset"] = dataset.name
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
        f"{dataset.name}: calibration error {report['ece']:.3f} on them; saved {path}",
        highlight=False,
    )
    table = Table("answerability signal", "weight (standardised)")
    model = calibration.answerability
    for name, weight in zip(model.features, model.weights, strict=True):
        table.add_row(name, f"{weight:+.3f}")
    console.print(table)


@eval_app.command("answers")
def eval_answers(
    dataset: Annotated[Path, typer.Option("--dataset", help="SQuAD-format JSON file (e.g. DRCD_dev.json).")],
    kb: Annotated[
        str | None, typer.Option("--kb", help="Knowledge base to build (default: answers-<file name>).")
    ] = None,
    holdout: HoldoutOption = 40,
    articles: ArticlesOption = None,
    seed: SeedOption = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Ask answerable and unanswerable questions through the configured answer path and score the answers.

    Reports answer hit (a gold answer in the answer), first-sentence hit, the share refused of answerable,
    off-topic and same-topic questions, the answerability calibration error, and p50/p95 latency.
    """
    from app.answer_evaluation import ask, summary

    svc = service()
    kb = kb or f"answers-{dataset.stem}"
    chosen = _answer_set(svc, kb, dataset, holdout, articles, seed)
    with _bar("asking", len(chosen.cases)) as advance:
        asked = run_or_fail(lambda: ask(svc, kb, chosen.cases, advance))
    result = {
        "kb": kb,
        "backend": svc.settings.llm.backend,
        "min_answerability": svc.settings.llm.min_answerability,
        **summary(asked),
    }
    if as_json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return
    table = Table("measure", "value")
    for key, value in result.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)


@llm_app.command("convert-chatglm3")
def llm_convert_chatglm3(
    src: Annotated[Path, typer.Argument(help="ChatGLM3 checkpoint: config.json, weights, tokenizer.model.")],
    dst: Annotated[Path, typer.Argument(help="New directory for the converted model.")],
) -> None:
    """Convert a ChatGLM3 checkpoint for plain transformers (GlmForCausalLM); point llm.model at DST."""
    from llm.chatglm3 import convert_chatglm3
    from llm.errors import ModelLoadError

    try:
        convert_chatglm3(src, dst)
    except (ModelLoadError, OSError) as error:
        fail(str(error))
    console.print(f"converted {src} into {dst}", highlight=False, markup=False)


@contextmanager
def _bar(label: str, total: int) -> Iterator[Callable[[], None]]:
    """Show a rich progress bar on stderr; yield the function that advances it by one."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
        disable=not errors.is_terminal,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)


def _info_dict(info) -> dict:
    return {
        "name": info.name,
        "documents": info.documents,
        "chunks": info.chunks,
        "embedding": info.embedding.model_dump(),
        "splitter": info.splitter,
        "store": info.store.model_dump(),
        "created_at": info.created_at,
        "size_bytes": info.size_bytes,
        "metadata": info.metadata,
        "answerability": "calibrated"
        if info.calibrated
        else "not calibrated for this embedding model: answers are not refused on answerability "
        "(fit one with `kbqa eval calibrate`)",
    }


class _IngestionProgress:
    """A rich progress bar of files done, chunks stored and chunks per second."""

    def __enter__(self) -> _IngestionProgress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._chunks = 0
        self._progress = Progress(
            TextColumn("[bold]indexing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files · {task.fields[chunks]} chunks · {task.fields[rate]} chunks/s"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[ocr]}"),
            console=errors,
            disable=not errors.is_terminal,
        )
        self._progress.start()
        self._task = self._progress.add_task("indexing", total=None, chunks=0, rate="-", ocr="")
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def start(self, total_files: int) -> None:
        """Set the number of files to handle."""
        self._progress.update(self._task, total=total_files)

    def file_done(self, outcome: FileOutcome) -> None:
        """Advance the bar by one file."""
        self._progress.update(self._task, advance=1, ocr="")

    def image_read(self, source: str, where: str) -> None:
        """Show which file and page OCR is reading (it takes seconds a page)."""
        self._progress.update(self._task, ocr=f"OCR {source} {where}")

    def chunks_embedded(self, count: int) -> None:
        """Nothing to show: the bar counts chunks once stored."""

    def chunks_written(self, count: int) -> None:
        """Count stored chunks and update the rate."""
        self._chunks += count
        elapsed = self._progress.tasks[0].elapsed or 0.0
        rate = f"{self._chunks / elapsed:.0f}" if elapsed > 0 else "-"
        self._progress.update(self._task, chunks=self._chunks, rate=rate)


def _print_report(report: IngestionReport) -> None:
    from ingestion.pipeline import ALREADY_STORED

    console.print(
        f"added {report.count('added')}, replaced {report.count('replaced')}, "
        f"updated {report.count('updated')}, skipped {report.count('skipped')}, failed {report.count('failed')} "
        f"· {report.chunks} chunks in {report.seconds:.1f}s",
        highlight=False,
    )
    for outcome in report.outcomes:
        # A stored file with a reason had parts that could not be read (a page that failed OCR).
        if outcome.reason and outcome.reason != ALREADY_STORED:
            style = "red" if outcome.status == "failed" else "yellow"
            console.print(
                f"  [{style}]{outcome.status}[/] {outcome.source}: {outcome.reason}", highlight=False
            )


def main() -> None:
    """Run the command line."""
    app()


if __name__ == "__main__":
    sys.exit(main())
