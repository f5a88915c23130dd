"""A local chat model through transformers: loading, chat templates, LoRA adapters, streaming, one at a time.

A local model generates one reply at a time (it holds the GPU); up to `queue_size` further requests
wait their turn and one more is refused at once with ModelBusy rather than left hanging. Streaming runs
`generate` on a worker thread with a TextIteratorStreamer; closing the stream sets an event that a
stopping criterion checks after every token, so a client that goes away frees the model within a token.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from llm.adapter_info import require_generating, saved_template
from llm.config import LLMConfig
from llm.errors import LLMError, ModelBusy, ModelLoadError, UnknownAdapter
from llm.stopping import ReplyFilter
from llm.templates import template_for
from llm.types import BASE_MODEL, Generation, GenerationParams, Message, TextStream, Usage

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT_WINDOW = 2048


class TransformersChatModel:
    """A causal LM loaded from a hub id or a local directory, optionally carrying peft LoRA adapters."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self.name = Path(config.model).name if Path(config.model).is_dir() else config.model
        self.device, self.dtype = _resolve_device(config)
        self.model, self.tokenizer = _load(config, self.device, self.dtype)
        self.adapters = _attach_adapters(self, config)
        try:
            self.template = template_for(_template_name(config), self.tokenizer)
        except ValueError as error:
            raise ModelLoadError(str(error)) from error
        self.context_window = config.context_window or _context_window(self.model, self.tokenizer)
        self._stop_ids = self.template.stop_token_ids(self.tokenizer)
        self._model_lock = threading.Lock()
        self._admission = threading.BoundedSemaphore(config.queue_size + 1)

    def count_tokens(self, text: str) -> int:
        """Return how many tokens `text` takes inside a prompt."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def count_prompt_tokens(self, messages: list[Message]) -> int:
        """Return how many tokens the rendered conversation takes, generation prompt included."""
        return len(self.template.encode_prompt(self.tokenizer, messages))

    def generate(self, messages: list[Message], params: GenerationParams) -> Generation:
        """Return the reply to `messages`, generated in one call (no streamer)."""
        import torch

        adapter = self._adapter_for(params)
        prompt = self.template.encode_prompt(self.tokenizer, messages)
        with self._turn():
            inputs = self._inputs(prompt)
            with self._adapter_context(adapter), torch.inference_mode():
                output = self.model.generate(**inputs, **self._generate_kwargs(params))
        new_ids = output[0, len(prompt) :].tolist()
        stop_ids = set(self._stop_ids + params.stop_token_ids)
        reply = self._reply_filter(params)
        reply.cut(self.tokenizer.decode([i for i in new_ids if i not in stop_ids], skip_special_tokens=True))
        return self._result(reply, prompt, new_ids, params)

    def stream(self, messages: list[Message], params: GenerationParams) -> TextStream:
        """Return the reply to `messages` as text deltas; ModelBusy at once when the queue is full."""
        adapter = self._adapter_for(params)
        prompt = self.template.encode_prompt(self.tokenizer, messages)
        deltas = self._stream(prompt, params, adapter)
        next(deltas)  # admission: raises ModelBusy now, and makes closing the stream run its cleanup
        return TextStream(deltas)

    def close(self) -> None:
        """Release the model's memory."""
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- generation --------------------------------------------------------------------------------

    def _stream(
        self, prompt: list[int], params: GenerationParams, adapter: str | None
    ) -> Generator[str, None, Generation]:
        import torch
        from transformers import StoppingCriteria, TextIteratorStreamer

        cancelled = threading.Event()

        stop_ids = set(self._stop_ids + params.stop_token_ids)

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full(
                    (input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device
                )

        class ReplyStreamer(TextIteratorStreamer):
            """Leaves out stop tokens, whose text (for ids that are not special tokens) is no reply."""

            def put(self, value: Any) -> None:
                if not self.next_tokens_are_prompt:
                    value = value.reshape(-1)
                    value = value[~torch.isin(value, torch.tensor(list(stop_ids), device=value.device))]
                super().put(value)

        with self._admitted():
            yield ""
            with self._model_lock:
                streamer = ReplyStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
                kwargs = self._generate_kwargs(params)
                kwargs["stopping_criteria"].append(Cancelled())
                outcome: dict[str, Any] = {}

                def work() -> None:
                    try:
                        with self._adapter_context(adapter), torch.inference_mode():
                            outcome["output"] = self.model.generate(
                                **self._inputs(prompt), streamer=streamer, **kwargs
                            )
                    except Exception as error:  # surfaces in the consumer's thread below
                        outcome["error"] = error
                        streamer.end()

                worker = threading.Thread(target=work, name="kbqa-generate", daemon=True)
                worker.start()
                reply = self._reply_filter(params)
                ended = False
                try:
                    for piece in streamer:
                        if text := reply.feed(piece):
                            yield text
                        if reply.stopped:
                            cancelled.set()
                    ended = True
                    if text := reply.flush():
                        yield text
                finally:  # also when the consumer closed the stream at a yield above
                    cancelled.set()
                    if not ended:  # drain to the end signal, which the streamer gives only once
                        for _ in streamer:
                            pass
                    worker.join()
            if "error" in outcome:
                raise LLMError(f"generation failed: {outcome['error']}") from outcome["error"]
            new_ids = outcome["output"][0, len(prompt) :].tolist()
            return self._result(reply, prompt, new_ids, params)

    def _generate_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        import torch
        from transformers import StoppingCriteriaList

        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "eos_token_id": list(dict.fromkeys(self._stop_ids + params.stop_token_ids)),
            "pad_token_id": self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self._stop_ids[0],
            "do_sample": params.temperature > 0,
            "repetition_penalty": params.repetition_penalty,
            "stopping_criteria": StoppingCriteriaList(),
        }
        if params.temperature > 0:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        else:  # greedy: silence sampling settings from the model's own generation_config
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=self.tokenizer)
        return kwargs

    def _inputs(self, prompt: list[int]) -> dict[str, Any]:
        import torch

        ids = torch.tensor([prompt], device=self.model.device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def _reply_filter(self, params: GenerationParams) -> ReplyFilter:
        return ReplyFilter(params.stop, self.template.strip_reply_prefix)

    def _result(
        self, reply: ReplyFilter, prompt: list[int], new_ids: list[int], params: GenerationParams
    ) -> Generation:
        ended = reply.stopped or (bool(new_ids) and new_ids[-1] in self._stop_ids + params.stop_token_ids)
        finish = "stop" if ended or len(new_ids) < params.max_new_tokens else "length"
        return Generation(reply.text, finish, Usage(len(prompt), len(new_ids)))

    @contextmanager
    def _admitted(self) -> Iterator[None]:
        """Hold a place in the queue, refusing at once with ModelBusy when it is full."""
        if not self._admission.acquire(blocking=False):
            raise ModelBusy(
                f"the model is busy: one reply is being generated and {self.config.queue_size} wait; "
                "retry later"
            )
        try:
            yield
        finally:
            self._admission.release()

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """Wait in the queue for the model."""
        with self._admitted(), self._model_lock:
            yield

    # --- adapters ----------------------------------------------------------------------------------

    def _adapter_for(self, params: GenerationParams) -> str | None:
        """Return the adapter a request runs with (None: the base model), checking the name."""
        name = params.adapter or self.config.default_adapter or BASE_MODEL
        if name == BASE_MODEL:
            return None
        if name not in self.adapters:
            known = ", ".join([BASE_MODEL, *self.adapters])
            raise UnknownAdapter(f"unknown adapter {name!r}; this model has: {known}")
        return name

    def _adapter_context(self, adapter: str | None) -> Any:
        if not self.adapters:
            return nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return nullcontext()


def _resolve_device(config: LLMConfig) -> tuple[str, Any]:
    import torch

    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"llm.device is {device!r} but CUDA is not available on this machine")
    if config.dtype != "auto":
        return device, getattr(torch, config.dtype)
    if device.startswith("cuda"):
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


def _load(config: LLMConfig, device: str, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.chatglm3 import is_chatglm3_checkpoint, load_chatglm3

    if config.quantization and not device.startswith("cuda"):
        raise ModelLoadError(f"llm.quantization={config.quantization} needs CUDA (bitsandbytes)")
    try:
        if is_chatglm3_checkpoint(config.model):
            if config.quantization or config.device_map:
                raise ModelLoadError(
                    "a ChatGLM3 checkpoint is converted at load time without quantization or device_map; "
                    "convert it once with `kbqa llm convert-chatglm3 SRC DST` and point llm.model at DST"
                )
            return load_chatglm3(config.model, dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(config.model, trust_remote_code=config.trust_remote_code)
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": config.trust_remote_code}
        if config.quantization:
            kwargs["quantization_config"] = quantization_config(config.quantization, dtype)
            kwargs["device_map"] = config.device_map or {"": device}
        elif config.device_map:
            kwargs["device_map"] = config.device_map
        model = AutoModelForCausalLM.from_pretrained(config.model, **kwargs)
    except (OSError, ValueError, ImportError) as error:
        raise ModelLoadError(f"cannot load the model {config.model!r}: {error}") from error
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    return model, tokenizer


def quantization_config(bits: str, dtype: Any) -> Any:
    """Return the bitsandbytes settings for `8bit`, or for `4bit`: NF4 with double quantisation (QLoRA)."""
    from transformers import BitsAndBytesConfig

    if bits == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_use_double_quant=True,
    )


def _attach_adapters(chat_model: TransformersChatModel, config: LLMConfig) -> dict[str, str]:
    """Load the configured LoRA adapters onto `chat_model.model`; return those selectable per request."""
    from peft import PeftModel

    adapters = dict(config.adapters)
    for name in filter(None, [config.default_adapter, config.merge_adapter]):
        if name != BASE_MODEL and name not in adapters:
            raise ModelLoadError(f"adapter {name!r} is not in llm.adapters ({', '.join(adapters) or 'none'})")
    if BASE_MODEL in adapters:
        raise ModelLoadError(f"{BASE_MODEL!r} is reserved for the base model; rename that adapter")
    for name, path in adapters.items():
        try:
            require_generating(path)
        except ModelLoadError as error:
            raise ModelLoadError(f"llm.adapters.{name}: {error}") from error
    try:
        if config.merge_adapter:
            merged = PeftModel.from_pretrained(chat_model.model, adapters[config.merge_adapter])
            chat_model.model = merged.merge_and_unload()
            logger.info("merged adapter %s into the weights", config.merge_adapter)
            return {}
        for index, (name, path) in enumerate(adapters.items()):
            if index == 0:
                chat_model.model = PeftModel.from_pretrained(chat_model.model, path, adapter_name=name)
            else:
                chat_model.model.load_adapter(path, adapter_name=name)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load a LoRA adapter: {error}") from error
    chat_model.model.eval()
    return adapters


def _template_name(config: LLMConfig) -> str:
    """Return llm.template, or under `auto` the template the model's fine-tunes were trained with."""
    if config.template != "auto":
        return config.template
    saved = {d: name for d in [config.model, *config.adapters.values()] if (name := saved_template(d))}
    if len(set(saved.values())) > 1:
        found = ", ".join(f"{d}: {name}" for d, name in saved.items())
        raise ModelLoadError(
            f"these fine-tunes were trained with different chat templates ({found}); set llm.template"
        )
    return next(iter(saved.values()), "auto")


def _context_window(model: Any, tokenizer: Any) -> int:
    config = model.config
    for attribute in ("max_position_embeddings", "seq_length", "n_positions"):
        if value := getattr(config, attribute, None):
            return int(value)
    limit = getattr(tokenizer, "model_max_length", 0)
    return limit if 0 < limit < 1_000_000 else DEFAULT_CONTEXT_WINDOW
