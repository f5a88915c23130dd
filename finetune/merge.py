"""Merge a LoRA adapter into its base model's weights, checked: the merged model must compute the adapter's logits.

The base is loaded in 16 or 32 bits, never quantized: merging into 4-bit weights would round the adapter
away. The merged model is saved with safetensors and the tokenizer, written beside the target and renamed
into place once whole, and carries the adapter's `kbqa_adapter.json` so it is served with the same template.
The tokenizer's `chat_template` is set to that template too (as Jinja), so `apply_chat_template`, vLLM and
text-generation-inference lay out prompts as kbqa trained them, outside kbqa.

With `qbits` (4 or 8) the checked merge is then saved quantised, as ChatGLM3's merge_lora_and_quantize.py
does, by the first method that runs here: bitsandbytes (NF4 or LLM.int8) on CUDA, else torchao weight-only
(int8 on the CPU too; int4 on CUDA). The saved model loads back with plain `from_pretrained`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError
from finetune.loading import load_model
from llm.templates import TEMPLATES, Slot, Template, Token
from llm.types import Message

DTYPES = ("auto", "float32", "float16", "bfloat16")
# Default tolerance of the logit check, as a share of the largest logit: merging rounds W + BA once in the
# model's dtype, which the adapter path (W and BA apart) does not.
RELATIVE_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}
PROBE = [Message("user", "年假有几天？How many days of annual leave do I get?")]


@dataclass(frozen=True)
class MergeResult:
    """Where the merged model went and how close its logits came to the adapter's on the probe."""

    out: Path
    dtype: str
    max_abs_diff: float
    tolerance: float
    quantization: str | None = None  # the method of a quantised export
    quantized_max_abs_diff: float | None = None  # its largest logit difference from the merged model


def merge_adapter(
    base: str,
    adapter: Path,
    out: Path,
    dtype: str = "auto",
    tolerance: float | None = None,
    trust_remote_code: bool = False,
    qbits: int | None = None,
) -> MergeResult:
    """Return the result of merging `adapter` into `base` and saving it in `out` (quantised to `qbits`).

    FinetuneError when the merged logits differ from the adapter model's, or `qbits` cannot run here.
    """
    import torch
    from peft import PeftModel

    from llm.adapter_info import saved_stage, saved_template
    from llm.errors import ModelLoadError
    from llm.templates import template_for

    if not (adapter / "adapter_config.json").is_file():
        raise FinetuneError(
            f"{adapter} holds no LoRA adapter (adapter_config.json); a freeze or full fine-tune is a whole model already"
        )
    if saved_stage(str(adapter)) == "rm":
        raise FinetuneError(
            f"{adapter} is a reward model (--stage rm): merged into a causal LM its value head would be "
            "dropped; score with the adapter as it is, or merge an sft, dpo or orpo adapter"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FinetuneError(f"{out} exists and is not empty; choose a new directory")
    name = _dtype_name(base, dtype)
    method = quantization_method(qbits) if qbits is not None else None
    model, tokenizer = load_model(base, getattr(torch, name), None, trust_remote_code)
    if getattr(model.config, "quantization_config", None):
        raise FinetuneError(f"{base} is a quantized checkpoint; merge into its 16/32-bit release")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        peft_model = PeftModel.from_pretrained(model.to(device), str(adapter))
    except (OSError, ValueError, KeyError) as error:
        raise FinetuneError(f"cannot load the adapter {adapter} onto {base}: {error}") from error
    peft_model.eval()
    try:
        template_name = saved_template(str(adapter))
        template = template_for(template_name or "auto", tokenizer)
    except (ModelLoadError, ValueError) as error:
        raise FinetuneError(f"{adapter}: {error}") from error
    probe = torch.tensor([template.encode_prompt(tokenizer, PROBE)], device=device)
    with torch.inference_mode():
        expected = peft_model(probe).logits.float()
    merged = peft_model.merge_and_unload()
    with torch.inference_mode():
        logits = merged(probe).logits.float()
    difference = (logits - expected).abs().max().item()
    allowed = tolerance if tolerance is not None else RELATIVE_TOLERANCE[name] * expected.abs().max().item()
    if not difference <= allowed:  # also catches NaN
        raise FinetuneError(
            f"the merged model's logits differ from the adapter's by up to {difference:.3g} (tolerance "
            f"{allowed:.3g}); nothing was saved"
        )
    if method is None:
        _save(merged, tokenizer, out, template_name, base)
        return MergeResult(out=out, dtype=name, max_abs_diff=difference, tolerance=allowed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.merged.", dir=out.parent) as work:
        whole = Path(work) / "model"
        _save(merged, tokenizer, whole, template_name, base)
        del merged, peft_model, model
        quantized = _load_quantized(whole, qbits, method, getattr(torch, name))
        with torch.inference_mode():
            drift = (
                (quantized(probe.to(quantized.device)).logits.float().cpu() - logits.cpu()).abs().max().item()
            )
        _save(quantized, tokenizer, out, template_name, base)
    return MergeResult(out, name, difference, allowed, method, drift)


def recorded_base(adapter: Path) -> str:
    """Return the base model `adapter` records (kbqa_adapter.json, else adapter_config.json); FinetuneError if none."""
    for name, key in (
        ("kbqa_adapter.json", "base_model"),
        ("adapter_config.json", "base_model_name_or_path"),
    ):
        try:
            value = json.loads((adapter / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str) and value:
            return value
    raise FinetuneError(f"{adapter} records no base model; give it with --base")


def quantization_method(qbits: int) -> str:
    """Return how `qbits`-bit export runs on this machine; FinetuneError naming what is missing otherwise."""
    import importlib.util

    import torch

    if qbits not in (4, 8):
        raise FinetuneError(f"--qbits must be 4 or 8, not {qbits}")
    cuda = torch.cuda.is_available()
    if cuda and importlib.util.find_spec("bitsandbytes") is not None:
        return "bitsandbytes NF4" if qbits == 4 else "bitsandbytes LLM.int8"
    if importlib.util.find_spec("torchao") is not None and (qbits == 8 or cuda):
        return f"torchao int{qbits} weight-only"
    if qbits == 4:
        # Both 4-bit methods (bitsandbytes NF4, torchao int4) run on CUDA only: the GPU is what is missing.
        missing = (
            "this machine has no CUDA GPU"
            if not cuda
            else "neither bitsandbytes nor torchao is installed (pip install bitsandbytes)"
        )
        raise FinetuneError(
            f"--qbits 4 needs a CUDA GPU (with bitsandbytes or torchao) and {missing}; merge with --qbits 8 "
            "(torchao int8 runs on the CPU) or without --qbits"
        )
    raise FinetuneError(
        "--qbits 8 needs torchao (pip install torchao), or CUDA with bitsandbytes, which this machine lacks; "
        "merge without --qbits"
    )


def _load_quantized(path: Path, qbits: int, method: str, dtype: Any) -> Any:
    """Return the model saved at `path`, loaded quantised by `method`."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TorchAoConfig

    kwargs: dict[str, Any] = {"dtype": dtype}
    if method.startswith("bitsandbytes"):
        kwargs["device_map"] = {"": torch.cuda.current_device()}
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
            if qbits == 4
            else BitsAndBytesConfig(load_in_8bit=True)
        )
    else:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

        if qbits == 4:
            kwargs |= {"device_map": {"": torch.cuda.current_device()}, "dtype": torch.bfloat16}
        kwargs["quantization_config"] = TorchAoConfig(
            Int4WeightOnlyConfig() if qbits == 4 else Int8WeightOnlyConfig()
        )
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (ImportError, ValueError, RuntimeError) as error:
        raise FinetuneError(f"quantising with {method} failed: {error}") from error


def chat_template_jinja(template: Template) -> str:
    """Return a Jinja chat template (as `apply_chat_template` takes) that lays out messages as `template`.

    Text is written as Jinja string expressions, so the whitespace trimming tokenizers apply cannot touch it;
    a `tool` message is the template's observation.
    """

    def literal(text: str) -> str:
        return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""

    def fragment(slots: tuple[Slot, ...], content: str) -> str:
        out = ""
        for slot in slots:
            if isinstance(slot, Token):
                out += literal(slot.name)
            else:
                before, found, after = slot.partition("{content}")
                out += literal(before) + (content if found else "") + literal(after)
        return out

    content = "{{ message['content'] }}"
    branches = []
    for role, slots in template.roles.items():
        names = ("observation", "tool") if role == "observation" else (role,)
        test = " or ".join(f"message['role'] == '{name}'" for name in names)
        branches.append(f"{{% {'if' if not branches else 'elif'} {test} %}}{fragment(slots, content)}")
    system = ""
    if template.default_system:
        default = fragment(template.roles["system"], literal(template.default_system))
        system = f"{{% if not messages or messages[0]['role'] != 'system' %}}{default}{{% endif %}}"
    return (
        fragment(template.prefix, "")
        + system
        + "{% for message in messages %}"
        + "".join(branches)
        + "{% endif %}{% endfor %}"
        + f"{{% if add_generation_prompt %}}{fragment(template.generation_prompt, '')}{{% endif %}}"
    )


def _dtype_name(base: str, dtype: str) -> str:
    """Return the dtype to merge in: the one asked for, else the base checkpoint's own (16/32-bit only)."""
    if dtype not in DTYPES:
        raise FinetuneError(f"--dtype must be one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    try:
        config = json.loads((Path(base) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    saved = config.get("dtype") or config.get("torch_dtype")
    return saved if saved in RELATIVE_TOLERANCE else "float32"


def _save(model: Any, tokenizer: Any, out: Path, template: str | None, base: str) -> None:
    """Write the merged model, its tokenizer and the adapter's template into `out`, all or nothing."""
    from llm.adapter_info import write_adapter_info

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(staging)
        named = TEMPLATES.get(template or "")
        # `hf` and `auto` keep the tokenizer's own chat template, as does llama2, whose fused system turn
        # the Jinja writer does not lay out (a LLaMA-2 chat tokenizer ships that layout itself).
        if isinstance(named, Template) and not named.system_in_user:
            tokenizer.chat_template = chat_template_jinja(named)
            # kbqa's ChatGLM3 tokenizer never reads special tokens from text, as ChatGLM3's own does not;
            # a server outside kbqa tokenises the rendered template, whose special tokens must be read.
            tokenizer.split_special_tokens = False
        tokenizer.save_pretrained(staging)
        if template:  # an adapter trained elsewhere names none; the merged model then uses `auto`
            write_adapter_info(staging, template, base, "lora")
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
