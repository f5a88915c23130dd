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
    path = Path(directory) / ADAPTER_INFO
    if not path.is_file():
        return None
    try:
        template = json.loads(path.read_text(encoding="utf-8")).get("template")
    except (OSError, ValueError, AttributeError) as error:
        raise ModelLoadError(f"{path} is not a JSON object: {error}") from error
    return template if isinstance(template, str) else None
