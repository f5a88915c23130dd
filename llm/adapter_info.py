"""`kbqa_adapter.json`: what a kbqa fine-tune was trained with, written beside it and read when it is served.

`kbqa finetune train` writes it beside an adapter (and `merge` into a merged or fully fine-tuned model):
{"template", "base_model", "finetuning_type"[, "stage"]}, so serving lays out prompts as training did.
"""

from __future__ import annotations

import json
from pathlib import Path

from llm.errors import ModelLoadError

ADAPTER_INFO = "kbqa_adapter.json"


def write_adapter_info(
    directory: Path, template: str, base_model: str, finetuning_type: str, stage: str = "sft"
) -> Path:
    """Return the path of `kbqa_adapter.json` written into `directory`, naming the template served with it."""
    path = directory / ADAPTER_INFO
    info = {"template": template, "base_model": base_model, "finetuning_type": finetuning_type}
    if stage != "sft":  # what the adapter was trained for, where it is not the usual
        info["stage"] = stage
    path.write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def saved_template(directory: str) -> str | None:
    """Return the chat template a kbqa fine-tune in `directory` was trained with (None: not one of ours)."""
    template = _saved_info(directory).get("template")
    return template if isinstance(template, str) else None


def saved_stage(directory: str) -> str:
    """Return the stage a kbqa fine-tune in `directory` was trained with (`sft` when none is recorded)."""
    stage = _saved_info(directory).get("stage")
    return stage if isinstance(stage, str) else "sft"


def require_generating(directory: str) -> None:
    """Raise ModelLoadError when the fine-tune in `directory` is a reward model, which cannot write replies."""
    if saved_stage(directory) == "rm":
        raise ModelLoadError(
            f"{directory} was trained with --stage rm: a reward model scores replies (its value head) and "
            "cannot write them; serve, evaluate or merge an sft, dpo or orpo adapter instead"
        )


def _saved_info(directory: str) -> dict:
    """Return `kbqa_adapter.json` of `directory` ({} when there is none)."""
    path = Path(directory) / ADAPTER_INFO
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path} is not a JSON object: {error}") from error
    if not isinstance(info, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return info
