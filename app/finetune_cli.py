"""`kbqa finetune …`: data conversion, LoRA/QLoRA training, adapter merge, and evaluation."""

from __future__ import annotations

import typer

finetune_app = typer.Typer(
    help="Fine-tune chat models with LoRA/QLoRA on your own data.", no_args_is_help=True
)
