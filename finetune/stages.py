"""The stages beyond supervised fine-tuning, on TRL's trainers: dpo, orpo (preference pairs), rm (reward model).

TRL (the library LLaMA-Factory builds on) brings the losses; kbqa brings the data: each pair is laid out by
the chat template SFT uses (finetune.preprocess.encode_preference), so the trainers get token ids and never
tokenise text themselves. pt, plain-text pre-training, needs no TRL: it is SFT with every token learnt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from finetune.arguments import TrainArguments
from finetune.errors import FinetuneError

PREFERENCE_STAGES = ("dpo", "orpo", "rm")


def preference_trainer(
    args: TrainArguments,
    config: Callable[..., Any],
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, list[int]]],
    eval_rows: list[dict[str, list[int]]],
) -> Any:
    """Return the TRL trainer of `args.stage` on pre-tokenised pairs (prompt_ids, chosen_ids, rejected_ids).

    `config(cls, **extra)` returns the run's training arguments as `cls`, a TRL config class.
    """
    import os

    from datasets import Dataset

    if args.stage == "rm":
        from trl import RewardConfig, RewardTrainer

        def whole(row: dict[str, list[int]]) -> dict[str, list[int]]:
            return {key: row["prompt_ids"] + row[key] for key in ("chosen_ids", "rejected_ids")}

        return RewardTrainer(
            model=model,
            args=config(RewardConfig, max_length=None),
            train_dataset=Dataset.from_list([whole(row) for row in rows]),
            eval_dataset=Dataset.from_list([whole(row) for row in eval_rows]) if eval_rows else None,
            processing_class=tokenizer,
        )
    if args.stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        class Trainer(DPOTrainer):
            def _prepare_dataset(self, dataset: Any, *_: Any) -> Any:
                return dataset  # laid out and cut by kbqa's template already

        return Trainer(
            model=model,
            args=config(DPOConfig, beta=args.pref_beta, loss_type=[args.pref_loss], max_length=None),
            train_dataset=Dataset.from_list(rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            processing_class=tokenizer,
        )
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # TRL keeps ORPO among its experimental trainers
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    class OrpoTrainer(ORPOTrainer):
        def tokenize_row(self, feature: dict, model: Any = None) -> dict:
            prompt = feature["prompt_ids"]
            batch = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
            for key in ("chosen", "rejected"):
                ids = prompt + feature[f"{key}_ids"]
                batch |= {
                    f"{key}_input_ids": ids,
                    f"{key}_attention_mask": [1] * len(ids),
                    f"{key}_labels": [-100] * len(prompt) + feature[f"{key}_ids"],
                }
            return batch

    def texts(row: dict[str, list[int]]) -> dict[str, Any]:
        # ORPO's dataset steps before tokenize_row read these columns; the ids are what it trains on.
        return row | {"prompt": "", "chosen": "", "rejected": ""}

    longest = max(
        len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))
        for row in rows + eval_rows
    )
    return OrpoTrainer(
        model=model,
        args=config(ORPOConfig, beta=args.pref_beta, max_length=longest + 1),
        train_dataset=Dataset.from_list([texts(row) for row in rows]),
        eval_dataset=Dataset.from_list([texts(row) for row in eval_rows]) if eval_rows else None,
        processing_class=tokenizer,
    )


def check_trl() -> None:
    """Raise FinetuneError unless TRL is installed."""
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        raise FinetuneError(
            "dpo, orpo and rm train with TRL, which is not installed: pip install 'kbqa[finetune]'"
        )
