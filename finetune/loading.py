"""The base model and tokenizer of a fine-tune, loaded as the llm module serves them.

A ChatGLM3 checkpoint is converted on load (llm.chatglm3) exactly as `TransformersChatModel` converts it, so
the adapter's module names are those of the model it is later attached to.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from finetune.errors import FinetuneError
from llm.transformers_backend import quantization_config


def load_model(
    path: str,
    dtype: Any,
    quantization_bit: int | None = None,
    trust_remote_code: bool = False,
    reward: bool = False,
) -> tuple[Any, Any]:
    """Return (causal LM on the CPU, or on the GPU when quantized, tokenizer) loaded from `path`.

    With `reward`, the model ends in a one-output value head instead (a reward model, stage rm).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from llm.chatglm3 import is_chatglm3_checkpoint, load_chatglm3
    from llm.errors import ModelLoadError

    try:
        if is_chatglm3_checkpoint(path):
            if quantization_bit or reward:
                raise FinetuneError(
                    "a ChatGLM3 checkpoint is converted at load time without quantization or a value head; convert it once "
                    "with `kbqa llm convert-chatglm3 SRC DST` and train on DST"
                )
            return load_chatglm3(path, dtype, "cpu")
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
        if quantization_bit:
            import torch

            kwargs["quantization_config"] = quantization_config(f"{quantization_bit}bit", dtype)
            kwargs["device_map"] = {"": torch.cuda.current_device()}
        if reward:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
            model.config.pad_token_id = pad  # it finds each sequence's last token by the padding
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, ImportError, ModelLoadError) as error:
        raise FinetuneError(f"cannot load the model {path!r}: {error}") from error
    return model, tokenizer


def check_quantization(quantization_bit: int | None) -> None:
    """Raise FinetuneError unless `quantization_bit` is None or 4/8 with CUDA and bitsandbytes present."""
    if quantization_bit is None:
        return
    if quantization_bit not in (4, 8):
        raise FinetuneError(f"--quantization_bit must be 4 or 8, not {quantization_bit}")
    import torch

    missing = [
        what
        for what, present in (
            ("a CUDA GPU", torch.cuda.is_available()),
            ("bitsandbytes (pip install bitsandbytes)", importlib.util.find_spec("bitsandbytes") is not None),
        )
        if not present
    ]
    if missing:
        raise FinetuneError(
            f"--quantization_bit {quantization_bit} (QLoRA) needs {' and '.join(missing)}, which this machine "
            "lacks; train LoRA in 16/32 bits instead (leave out --quantization_bit)"
        )
