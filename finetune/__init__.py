"""SFT data in the common formats, LoRA/QLoRA training, adapter merge, and evaluation."""

from finetune.arguments import TrainArguments, arguments_from
from finetune.conversation import Conversation, Preference
from finetune.errors import DatasetError, FinetuneError
from finetune.evaluate import EvalResult, evaluate_answers, evaluate_model, examples_from
from finetune.merge import MergeResult, merge_adapter
from finetune.registry import load_dataset
from finetune.train import TrainResult, train

__all__ = [
    "Conversation",
    "DatasetError",
    "EvalResult",
    "FinetuneError",
    "MergeResult",
    "Preference",
    "TrainArguments",
    "TrainResult",
    "arguments_from",
    "evaluate_answers",
    "evaluate_model",
    "examples_from",
    "load_dataset",
    "merge_adapter",
    "train",
]
