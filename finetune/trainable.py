"""Which weights of a model learn: LoRA (with DoRA, rsLoRA, QLoRA) on chosen linear layers, the last (or
first) decoder layers for `freeze`, or all of them for `full`."""

from __future__ import annotations

from typing import Any

from finetune.arguments import TrainArguments
from finetune.errors import FinetuneError

# ChatGLM3's layer names, as LLaMA-Factory configs for it name them, and what they became when the checkpoint
# was converted to transformers' GLM: query_key_value was split in three, dense_h_to_4h kept [gate | up].
CHATGLM_TARGETS = {
    "query_key_value": ("q_proj", "k_proj", "v_proj"),
    "dense": ("o_proj",),
    "dense_h_to_4h": ("gate_up_proj",),
    "dense_4h_to_h": ("down_proj",),
}


def lora_targets(model: Any, spec: str) -> list[str]:
    """Return the module names LoRA wraps: every linear layer but the output head for `all`, else `spec`'s."""
    linear = linear_layer_names(model)
    if spec.strip() == "all":
        return sorted(linear)
    targets: list[str] = []
    for name in filter(None, (part.strip() for part in spec.split(","))):
        if name in linear:
            targets.append(name)
        elif name in CHATGLM_TARGETS and set(CHATGLM_TARGETS[name]) <= linear:
            targets += CHATGLM_TARGETS[name]
        else:
            raise FinetuneError(
                f"--lora_target {name!r} names no linear layer of this model; it has {', '.join(sorted(linear))}"
            )
    if not targets:
        raise FinetuneError("--lora_target names no layer; give `all` or layer names")
    return list(dict.fromkeys(targets))


def linear_layer_names(model: Any) -> set[str]:
    """Return the last name part of every linear layer (4/8-bit ones too) except the output head's."""
    import torch

    head = model.get_output_embeddings()
    head_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is head}
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }
    return names - head_names


def trainable_model(model: Any, args: TrainArguments) -> Any:
    """Return the model ready to train: peft-wrapped for LoRA, or with the chosen layers unfrozen."""
    if args.finetuning_type == "full":
        model.requires_grad_(True)
        return model
    if args.finetuning_type == "freeze":
        model.requires_grad_(False)
        layers = decoder_layers(model)
        count = args.freeze_trainable_layers
        chosen = layers[-count:] if count > 0 else layers[:-count]
        for layer in chosen:
            layer.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if args.quantization_bit:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=args.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    targets = lora_targets(model, args.lora_target)
    if args.stage == "rm":  # the value head is trained whole (peft's modules_to_save for SEQ_CLS)
        targets = [name for name in targets if name != "score"]
    config = LoraConfig(
        task_type="SEQ_CLS" if args.stage == "rm" else "CAUSAL_LM",
        r=args.lora_rank,
        lora_alpha=args.lora_alpha or 2 * args.lora_rank,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        use_dora=args.use_dora,
        use_rslora=args.use_rslora,
    )
    return get_peft_model(model, config)


def decoder_layers(model: Any) -> Any:
    """Return the ModuleList of the model's transformer blocks (as many as the config's layers)."""
    import torch

    config = model.config
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise FinetuneError("cannot find the model's layers to unfreeze; use --finetuning_type lora or full")
