"""What every `kbqa` command shares: the consoles, the settings, the one way user errors become a message
and an exit code, and the progress bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from app.services import KnowledgeService
    from app.settings import Settings
    from ingestion import FileOutcome, IngestionReport

T = TypeVar("T")

console = Console()
errors = Console(stderr=True)

KbOption = Annotated[str, typer.Option("--kb", help="Knowledge-base name.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
RerankOption = Annotated[bool, typer.Option("--rerank", help="Re-score with the configured cross-encoder.")]
DatasetOption = Annotated[
    Path, typer.Option("--dataset", help="SQuAD-format JSON file (e.g. DRCD_dev.json).")
]


class Options:
    """The options given before the command (`kbqa --config … --data-dir … --log-level …`)."""

    config: Path | None = None
    data_dir: Path | None = None
    log_level: str = "WARNING"
    server: str | None = None  # `--server URL`: ask and search a remote kbqa instead
    api_key: str | None = None


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error and exit with `code`."""
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def run_or_fail(action: Callable[[], T], code: int = 1) -> T:
    """Return `action()`, turning the errors a user can cause into a message and exit `code`."""
    from finetune.errors import FinetuneError
    from llm import LLMError
    from retrieval import DatabaseError, DatabaseUnavailable, KnowledgeBaseError

    try:
        return action()
    except (DatabaseUnavailable, DatabaseError):
        raise  # the PostgreSQL store's one line and exit 2, whichever command met it (`app.cli.main`)
    except (KnowledgeBaseError, LLMError, FinetuneError, ValueError, OSError) as error:
        fail(str(error), code)


def valid_or_fail(build: Callable[[], T]) -> T:
    """Return `build()`, turning a pydantic validation error (bad option values) into a message and exit code 2."""
    from pydantic import ValidationError

    from app.validation import validation_message

    try:
        return build()
    except ValidationError as error:
        fail(validation_message(error.errors()), code=2)


def metadata_or_fail(pairs: list[str] | None) -> dict[str, str] | None:
    """Return `--meta key=value` options as a dict (None when there are none), or exit 2 naming a bad one."""
    from retrieval import parse_pairs

    if not pairs:
        return None
    try:
        return parse_pairs(pairs)
    except ValueError as error:
        fail(str(error), code=2)


def settings(log_level: str | None = None) -> Settings:
    """Return the chosen settings with logging configured, or exit 2 naming the bad setting."""
    from app.logs import configure_logging
    from app.settings import SettingsError, load_settings

    configure_logging(log_level or Options.log_level)
    try:
        return load_settings(Options.config, data_dir=Options.data_dir)
    except SettingsError as error:
        fail(str(error), code=2)


def service() -> KnowledgeService:
    """Return the knowledge service for the chosen settings, or exit naming the bad setting."""
    from app.services import KnowledgeService

    return KnowledgeService(settings())


def existing_kb(svc: KnowledgeService, name: str | None) -> None:
    """Exit 1 when a knowledge base is named and does not exist; return nothing."""
    if name is not None and not run_or_fail(lambda: svc.exists(name)):
        fail(f"knowledge base '{name}' does not exist")


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[], None]]:
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


class IngestionProgress:
    """A rich progress bar of files done, chunks stored and chunks per second."""

    def __enter__(self) -> IngestionProgress:
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


def print_report(report: IngestionReport) -> None:
    """Print an ingestion's counts, then each file that failed or was read only in part, with the reason."""
    from ingestion import ALREADY_STORED

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
