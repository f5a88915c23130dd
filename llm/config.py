"""The `llm` settings section: which backend answers, with which model, adapters and defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llm.followup import FollowupConfig
from llm.prompt import PromptConfig
from llm.types import BASE_MODEL, GenerationParams


class ExtractiveConfig(BaseModel):
    """How the extractive answerer picks and writes sentences."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    max_sentences: int = Field(3, ge=1, le=20, description="Most sentences in an answer.")
    confident: float = Field(
        0.7,
        ge=0.0,
        le=1.0,
        description="Learned reader: answer with the best sentence alone when its probability of holding "
        "the answer reaches this; below it, runners-up follow (`runner_up_share`).",
    )
    runner_up_share: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Learned reader: a further sentence follows only when its probability is at least this "
        "share of the best one's (1 keeps only the best sentence).",
    )
    min_relative_score: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Without a calibration: keep a further sentence only if its score lies at least this far "
        "from the median sentence's score towards the best one's (1 keeps only the best sentence). "
        "Scale-free, so it means the same with any embedding model.",
    )
    min_score: float = Field(
        -1.0,
        ge=-1.0,
        le=2.0,
        description="Without a calibration: answer nothing when the best sentence scores below this (cosine "
        "plus bonuses). Model-specific: e5 models score unrelated sentences around 0.8-0.88; with a "
        "calibration, `llm.min_answerability` decides instead.",
    )
    lexical_weight: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Without a calibration: weight of the share of the question's words/bigrams a sentence "
        "contains, added to its cosine; it breaks the near-ties that embeddings leave between sentences.",
    )
    answer_type_weight: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description="Without a calibration: added to a sentence that holds the kind of value the question "
        "asks for: a duration for 多久/how long, money for 多少钱/how much, a date for 什么时候/when, a number "
        "for 几/多少/how many, a place for 哪里/where, a person for 谁/who.",
    )
    max_sentence_chars: int = Field(
        240, ge=20, description="Longer sentences are cut at commas (or hard) into pieces of at most this."
    )


Backend = Literal["extractive", "transformers", "openai"]


class OpenAIConfig(BaseModel):
    """An OpenAI-compatible server (vLLM, another kbqa, a hosted API)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    base_url: str = Field("http://localhost:8000/v1", description="The server's API root, ending in /v1.")
    base_urls: list[str] = Field(
        default_factory=list,
        description="Several replicas of the same server (vLLM instances), used round-robin with failover; "
        "when set, `base_url` is ignored.",
    )
    api_key: str = Field("EMPTY", description="Sent as `Authorization: Bearer`; vLLM accepts any value.")
    model: str | None = Field(None, description="The model name the server serves; None uses `llm.model`.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for a reply (or the next delta).")
    max_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries on connection errors and 5xx replies; with `base_urls`, failing over to the "
        "next replica replaces them.",
    )
    unhealthy_cooldown_s: float = Field(
        10.0, ge=0, description="With `base_urls`: seconds a replica that failed is skipped."
    )
    health_check_timeout_s: float = Field(
        2.0,
        ge=0,
        description="With `base_urls`: a replica coming back from its cooldown must answer `GET /models` "
        "within this many seconds before it gets a request; 0 sends the request unchecked.",
    )
    context_window: int = Field(8192, gt=0, description="The served model's context window in tokens.")
    tokenizer: str | None = Field(
        None,
        description="Hub id or local directory of the served model's tokenizer, for exact token counts; "
        "None estimates them (one token per CJK character, one per 3 other characters).",
    )


class LLMConfig(BaseModel):
    """How answers are generated. Env: `KBQA_LLM__BACKEND=transformers KBQA_LLM__MODEL=/models/chatglm3-6b`."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    backend: Backend = Field(
        "extractive",
        description="`extractive` (no LLM: the best-matching sentences of the retrieved chunks, cited), "
        "`transformers` (a local model) or `openai` (an OpenAI-compatible server such as vLLM).",
    )
    model: str = Field(
        "THUDM/chatglm3-6b", description="Hub id or local directory of the model (transformers backend)."
    )
    template: str = Field(
        "auto",
        description="Chat template: `auto`, `hf` (the tokenizer's own), `chatglm3`, `glm4`, `chatml`, "
        "`qwen` (ChatML with LLaMA-Factory's default system prompt), `llama3`, `llama2` or `default`.",
    )
    adapters: dict[str, str] = Field(
        default_factory=dict, description="LoRA adapters by name: name -> directory made by `kbqa finetune`."
    )
    default_adapter: str | None = Field(
        None,
        description=f"Adapter used when a request names none; None or `{BASE_MODEL}` for the base model.",
    )
    merge_adapter: str | None = Field(
        None,
        description="Merge this adapter into the weights at load time (faster; the others are then unavailable).",
    )
    device: str = Field("auto", description="`auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="`auto`: bfloat16 on GPUs that support it, else float16 on CUDA, float32 on CPU."
    )
    device_map: str | None = Field(
        None, description="`auto` spreads the model over every GPU (accelerate); None puts it on `device`."
    )
    quantization: Literal["8bit", "4bit"] | None = Field(
        None, description="Load the weights in 8 or 4 bits with bitsandbytes (CUDA only)."
    )
    trust_remote_code: bool = Field(
        False, description="Run the model's own Python code from its directory (not needed for ChatGLM3)."
    )
    context_window: int | None = Field(
        None, gt=0, description="Prompt plus reply tokens; None reads it from the model's config."
    )
    queue_size: int = Field(
        8, ge=0, description="Requests that may wait for a local model; one more is refused as busy."
    )
    generation: GenerationParams = Field(
        default_factory=GenerationParams, description="Defaults for every request's generation parameters."
    )
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig, description="The `openai` backend's server.")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="The knowledge-base QA prompt.")
    min_answerability: float = Field(
        0.32,
        ge=0.0,
        le=1.0,
        description="Refuse (the refusal sentence, no model call) when the calibrated probability that the "
        "retrieved chunks hold the answer is below this. 0.32 is the lowest that refused at least 90% of "
        "off-topic and 60% of same-topic questions on each of three slices of DRCD, with at most 6.2% of "
        "answerable ones (docs/benchmarks.md, `kbqa eval answers`); 0 never refuses on it. Ignored, "
        "with a warning, for an embedding model without a calibration: then only an explicit "
        "`score_threshold` filters chunks.",
    )
    extractive: ExtractiveConfig = Field(
        default_factory=ExtractiveConfig, description="How the `extractive` backend picks sentences."
    )
    followup: FollowupConfig = Field(
        default_factory=FollowupConfig,
        description="How a follow-up question is made standalone before it is searched (docs/usage.md, "
        '"Conversations").',
    )
