"""`kbqa finetune …`: data conversion, LoRA/QLoRA training, adapter merge, and evaluation."""

from __future__ import annotations

import typer

from app.cli.finetune import data, evaluate, predict, train

finetune_app = typer.Typer(
    help="Fine-tune chat models with LoRA/QLoRA on your own data.", no_args_is_help=True
)
finetune_app.command("eval")(evaluate.finetune_eval)
finetune_app.command("eval-sql")(evaluate.finetune_eval_sql)
finetune_app.add_typer(data.convert_app, name="convert")
finetune_app.command("data-check")(data.data_check)
finetune_app.command("train", cls=train.TrainCommand)(train.finetune_train)
finetune_app.command("merge")(train.finetune_merge)
finetune_app.command("predict")(predict.finetune_predict)
