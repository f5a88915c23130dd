"""`kbqa llm …`: prepare local language models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import console, run_or_fail

llm_app = typer.Typer(help="Prepare local language models.", no_args_is_help=True)


@llm_app.command("convert-chatglm3")
def llm_convert_chatglm3(
    src: Annotated[Path, typer.Argument(help="ChatGLM3 checkpoint: config.json, weights, tokenizer.model.")],
    dst: Annotated[Path, typer.Argument(help="New directory for the converted model.")],
) -> None:
    """Convert a ChatGLM3 checkpoint for plain transformers (GlmForCausalLM); point llm.model at DST."""
    from llm.chatglm3 import convert_chatglm3

    run_or_fail(lambda: convert_chatglm3(src, dst))
    console.print(f"converted {src} into {dst}", highlight=False, markup=False)
