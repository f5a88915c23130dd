"""`kbqa finetune train` (LLaMA-Factory's command line) and `merge`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import console, fail, run_or_fail


def finetune_train(**options: object) -> None:
    """Fine-tune a chat model on registered datasets: LoRA (DoRA, rsLoRA, QLoRA), freeze or full.

    Takes LLaMA-Factory's command line as written: `kbqa finetune train config.yaml --name value ...`,
    booleans with or without a value (`--fp16`, `--fp16 True`). Beside the options below, any transformers
    TrainingArguments key (--optim, --weight_decay, --save_strategy, ...) goes to the Trainer; a name
    LLaMA-Factory documents that kbqa does not honour is an error naming it. The adapter (or whole model),
    its tokenizer, checkpoints, logs and kbqa_adapter.json (its chat template) go to --output_dir.
    """
    import yaml

    from finetune.arguments import arguments_from, parse_command_line
    from finetune.train import train

    config, flags = run_or_fail(lambda: parse_command_line(options["ctx"].meta[_TRAIN_ARGS]), code=2)
    try:
        settings = yaml.safe_load(Path(config).read_text(encoding="utf-8")) if config else {}
    except (OSError, yaml.YAMLError) as error:
        fail(f"cannot read the config {config}: {error}")
    if not isinstance(settings, dict):
        fail(f"the config {config} must hold a mapping of settings")
    result = run_or_fail(lambda: train(arguments_from(settings, flags)))
    last_loss = f"{result.losses[-1][1]:.4f}" if result.losses else "not logged"
    eval_loss = f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""
    console.print(
        f"trained {result.global_step} steps on {result.examples} examples ({result.skipped} with nothing to "
        f"learn left out), template {result.template}; last loss {last_loss}{eval_loss}\n"
        f"saved to {result.output_dir}" + (f"; loss curve in {result.loss_plot}" if result.loss_plot else ""),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


_TRAIN_ARGS = "kbqa.finetune.train.args"


class TrainCommand(typer.core.TyperCommand):
    """`kbqa finetune train`: its options show in --help, but the command line is read by
    finetune.arguments.parse_command_line, which takes LLaMA-Factory's forms that click's parser refuses."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if any(arg in ("--help", "-h") for arg in args):
            return super().parse_args(ctx, args)
        ctx.meta[_TRAIN_ARGS] = list(args)
        return super().parse_args(ctx, [])


def _train_signature() -> object:
    """Return `kbqa finetune train`'s parameters for --help: the config file, then one per TrainArguments field."""
    import inspect
    from dataclasses import MISSING, fields

    from finetune.arguments import TrainArguments

    def parameter(name: str, annotation: object) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)

    types = {"str": str, "int": int, "float": float, "bool": bool}
    config_help = "YAML or JSON file of these settings (LLaMA-Factory's keys), first or as --config."
    parameters = [
        inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
        parameter("config", Annotated[Path | None, typer.Argument(help=config_help, show_default=False)]),
    ]
    for spec in fields(TrainArguments):
        if not spec.metadata["help"]:
            continue
        kind = types[str(spec.type).split(" ")[0]]  # "int | None" -> int
        flags = f"--{spec.name}" if kind is not bool else f"--{spec.name}/--no_{spec.name}"
        default = "" if spec.default in (MISSING, None, "", False) else f" (default: {spec.default})"
        option = typer.Option(flags, help=spec.metadata["help"] + default, show_default=False)
        parameters.append(parameter(spec.name, Annotated[kind | None, option]))
    return inspect.Signature(parameters)


finetune_train.__signature__ = _train_signature()  # type: ignore[attr-defined]


def finetune_merge(
    adapter: Annotated[
        Path,
        typer.Option("--adapter", "--adapter_name_or_path", "--lora_path", help="LoRA adapter directory."),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "--export_dir", "--output_path", help="New directory for the merged model."),
    ],
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            "--model_name_or_path",
            help="The adapter's base model: directory or hub id (default: the one the adapter records in "
            "kbqa_adapter.json or adapter_config.json).",
        ),
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype", help="auto (the base checkpoint's), float32, float16 or bfloat16; never 4/8-bit."
        ),
    ] = "auto",
    tolerance: Annotated[
        float | None,
        typer.Option(
            "--tolerance",
            min=0.0,
            help="Largest |logit difference| allowed between the merged and the adapter model on a probe "
            "prompt (default: 1e-4 of the largest logit in float32, 1e-2 in float16, 3e-2 in bfloat16).",
        ),
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust_remote_code", help="Run the model's own Python code.")
    ] = False,
    qbits: Annotated[
        int | None,
        typer.Option(
            "--qbits",
            "--export_quantization_bit",
            help="Save the merged model quantised to 4 or 8 bits: bitsandbytes on CUDA, else torchao "
            "weight-only (8 bits on the CPU too).",
        ),
    ] = None,
) -> None:
    """Merge a LoRA adapter into its base model's weights and save it (safetensors and tokenizer).

    The merged model's logits are checked against the adapter model's on a probe prompt; above the
    tolerance nothing is saved and the command fails.
    """
    from finetune.merge import merge_adapter, recorded_base

    base = base or run_or_fail(lambda: recorded_base(adapter))
    result = run_or_fail(
        lambda: merge_adapter(base, adapter, out, dtype, tolerance, trust_remote_code, qbits)
    )
    console.print(
        f"merged {adapter} into {base} ({result.dtype}) → {result.out}; largest logit difference from the "
        f"adapter model {result.max_abs_diff:.2e} (tolerance {result.tolerance:.2e})"
        + (
            f"; saved quantised to {qbits} bits with {result.quantization} (largest logit change "
            f"{result.quantized_max_abs_diff:.2e})"
            if result.quantization
            else ""
        ),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
