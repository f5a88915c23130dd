"""Evaluation of a fine-tune: replies on a dev set, base model and adapter side by side, scored against the
references; or the answers a kbqa knowledge base gives (retrieval + the adapter), through a callable.

An example is a Conversation whose last message is the assistant's reference; the messages before it are
the prompt. Every metric is the mean over the examples, in [0, 1], of a per-example score of the reply
against the reference, both normalised first (`normalize`: NFKC, which makes full-width letters, digits
and punctuation half-width; curly quotes and 。 become ASCII; whitespace runs become one space, and a space
next to a CJK character goes):

- exact match: the normalised reply equals the normalised reference.
- BLEU-4 over characters: sentence BLEU of the reply's characters against the reference's, uniform weights
  over 1- to 4-grams, clipped counts, the brevity penalty, and NIST geometric smoothing (nltk's
  `SmoothingFunction().method3`: the k-th order without a match counts 1 / (2^k x its n-gram count)),
  which is what LLaMA-Factory's predict reports. A reply with no matching character scores 0.
- ROUGE-1, ROUGE-2, ROUGE-L F1 over jieba words (whitespace dropped): clipped n-gram counts, and the longest
  common subsequence of the whole reply and reference. rouge-chinese, which LLaMA-Factory uses, counts
  distinct n-grams and takes ROUGE-L over sentences; the figures agree when neither text repeats a word
  and each is one sentence.
- refusal accuracy: an example whose reference is a refusal sentence (`PromptConfig.refusal_zh` or
  `refusal_en`) is right when the reply refuses, any other when it does not, a refusal being what the
  answerer marks as one (`llm.answerer`), so the figure counts what the service would count.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from finetune.conversation import Conversation

# The answerer's own test, so a refusal counts here exactly when the service marks one (see the report).
from llm.config import LLMConfig
from llm.prompt import PromptConfig
from llm.types import BASE_MODEL, ChatModel, GenerationParams, Message
from retrieval import CJK_IDEOGRAPHS, CJK_PUNCTUATION

# The name the adapter under evaluation is loaded under, next to BASE_MODEL for the bare model.
ADAPTER = "adapter"
_CJK = CJK_IDEOGRAPHS + CJK_PUNCTUATION
_SPACE_BY_CJK = re.compile(rf"\s+(?=[{_CJK}])|(?<=[{_CJK}])\s+")
_PUNCTUATION = str.maketrans({"“": '"', "”": '"', "‘": "'", "’": "'", "。": "."})
_QUESTION = "\x00question\x00"  # stands for the question when the QA template is rendered to find it

Predict = Callable[["Example"], str]
Advance = Callable[[], None]


@dataclass(frozen=True)
class Example:
    """A dev-set example: the prompt messages and the reference reply that should follow them."""

    prompt: tuple[Message, ...]
    reference: str
    source: str = ""


@dataclass(frozen=True)
class Scores:
    """The metrics of one set of replies (means in [0, 1]) and the refusal counts behind refusal accuracy."""

    examples: int
    exact_match: float
    bleu_4: float
    rouge_1: float
    rouge_2: float
    rouge_l: float
    refusal_accuracy: float
    unanswerable: int  # examples whose reference is the refusal sentence
    refused_unanswerable: int  # of those, replies that refused
    answered_answerable: int  # of the others, replies that did not refuse


@dataclass(frozen=True)
class EvalResult:
    """One row of the comparison: its name, its scores, and its reply to each example, in order."""

    name: str
    scores: Scores
    predictions: list[str]


def examples_from(conversations: Sequence[Conversation]) -> list[Example]:
    """Return the examples of `conversations`; ValueError names one whose last message is not the assistant's."""
    examples = []
    for conversation in conversations:
        *prompt, last = conversation.messages
        if last.role != "assistant" or not any(m.role == "user" for m in prompt):
            raise ValueError(
                f"{conversation.source or 'a conversation'}: an evaluation example needs a user turn and "
                "must end with the assistant's reference reply"
            )
        examples.append(Example(tuple(prompt), last.content, conversation.source))
    return examples


# --- metrics -----------------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """Return `text` with full-width forms made half-width, curly quotes and 。 ASCII, and whitespace evened."""
    text = unicodedata.normalize("NFKC", text).translate(_PUNCTUATION)
    return _SPACE_BY_CJK.sub("", " ".join(text.split()))


def exact_match(prediction: str, reference: str) -> float:
    """Return 1.0 when the normalised texts are equal, else 0.0."""
    return float(normalize(prediction) == normalize(reference))


def char_bleu4(prediction: str, reference: str) -> float:
    """Return the sentence BLEU-4 of the normalised texts' characters, NIST-smoothed (nltk's method3)."""
    hypothesis, target = list(normalize(prediction)), list(normalize(reference))
    log_precision = 0.0
    unmatched_orders = 0
    for n in range(1, 5):
        counts = _ngrams(hypothesis, n)
        matches = sum((counts & _ngrams(target, n)).values())
        total = max(sum(counts.values()), 1)
        if matches == 0:
            if n == 1:
                return 0.0
            unmatched_orders += 1
            log_precision += math.log(1 / (2**unmatched_orders * total)) / 4
        else:
            log_precision += math.log(matches / total) / 4
    return _brevity_penalty(len(hypothesis), len(target)) * math.exp(log_precision)


def words(text: str) -> list[str]:
    """Return the jieba words of the normalised text, whitespace left out."""
    return [word for word in _jieba().lcut(normalize(text)) if word.strip()]


def rouge_n(prediction: Sequence[str], reference: Sequence[str], n: int) -> float:
    """Return the ROUGE-N F1 of two token sequences, over clipped n-gram counts."""
    counts, target = _ngrams(prediction, n), _ngrams(reference, n)
    overlap = sum((counts & target).values())
    return _f1(overlap, sum(counts.values()), sum(target.values()))


def rouge_l(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """Return the ROUGE-L F1 of two token sequences: their longest common subsequence over their lengths."""
    return _f1(_lcs_length(prediction, reference), len(prediction), len(reference))


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """Return ROUGE-1, ROUGE-2 and ROUGE-L F1 of two texts over their jieba words."""
    hypothesis, target = words(prediction), words(reference)
    return {
        "rouge_1": rouge_n(hypothesis, target, 1),
        "rouge_2": rouge_n(hypothesis, target, 2),
        "rouge_l": rouge_l(hypothesis, target),
    }


def is_refusal(text: str, prompt: PromptConfig) -> bool:
    """Return whether `text` is (essentially) the Chinese or the English refusal sentence of `prompt`."""
    return prompt.is_refusal(text)


def score(
    predictions: Sequence[str], references: Sequence[str], prompt: PromptConfig | None = None
) -> Scores:
    """Return the mean metrics of `predictions` against `references` (same order) and the refusal counts."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    prompt = prompt or PromptConfig()
    count = len(references)
    totals = dict.fromkeys(("exact_match", "bleu_4", "rouge_1", "rouge_2", "rouge_l"), 0.0)
    unanswerable = refused = answered = 0
    for prediction, reference in zip(predictions, references, strict=True):
        totals["exact_match"] += exact_match(prediction, reference)
        totals["bleu_4"] += char_bleu4(prediction, reference)
        for key, value in rouge(prediction, reference).items():
            totals[key] += value
        refuses = is_refusal(prediction, prompt)
        if is_refusal(reference, prompt):
            unanswerable += 1
            refused += refuses
        else:
            answered += not refuses
    means = {key: value / count if count else 0.0 for key, value in totals.items()}
    accuracy = (refused + answered) / count if count else 0.0
    return Scores(
        count,
        **means,
        refusal_accuracy=accuracy,
        unanswerable=unanswerable,
        refused_unanswerable=refused,
        answered_answerable=answered,
    )


# --- generating the replies --------------------------------------------------------------------------


def evaluate(
    examples: Sequence[Example],
    predict: Predict,
    name: str,
    prompt: PromptConfig | None = None,
    advance: Advance | None = None,
) -> EvalResult:
    """Return the row `name`: the reply `predict` gives to each example, and their scores."""
    predictions = []
    for example in examples:
        predictions.append(predict(example))
        if advance:
            advance()
    return EvalResult(name, score(predictions, [e.reference for e in examples], prompt), predictions)


def evaluate_model(
    model: ChatModel,
    examples: Sequence[Example],
    adapters: Sequence[str] = (BASE_MODEL, ADAPTER),
    params: GenerationParams | None = None,
    prompt: PromptConfig | None = None,
    advance: Advance | None = None,
) -> list[EvalResult]:
    """Return one row per adapter name (BASE_MODEL: the bare model) of `model`'s replies to the prompts.

    Greedy decoding by default, so the rows are reproducible and differ only by the adapter.
    """
    params = params or GenerationParams(max_new_tokens=256)

    def predictor(adapter: str) -> Predict:
        with_adapter = params.model_copy(update={"adapter": adapter})
        return lambda example: model.generate(list(example.prompt), with_adapter).text

    return [evaluate(examples, predictor(name), name, prompt, advance) for name in adapters]


def evaluate_answers(
    answer: Callable[[str], str],
    examples: Sequence[Example],
    name: str,
    prompt: PromptConfig | None = None,
    advance: Advance | None = None,
) -> EvalResult:
    """Return the row `name` of end-to-end answers: `answer` gets each example's question (`question_of`)."""
    prompt = prompt or PromptConfig()
    return evaluate(examples, lambda example: answer(question_of(example, prompt)), name, prompt, advance)


def question_of(example: Example, prompt: PromptConfig | None = None) -> str:
    """Return the example's question: its last user message, or the question inside it when rendered.

    RAG training data holds user turns rendered from the QA prompt template (chunks, then the question);
    the end-to-end mode must give retrieval the question alone, as a user would ask it.
    """
    prompt = prompt or PromptConfig()
    user = next(m.content for m in reversed(example.prompt) if m.role == "user")
    for template, refusal in (
        (prompt.template_zh, prompt.refusal_zh),
        (prompt.template_en, prompt.refusal_en),
    ):
        slot = _question_slot(template, refusal)
        if slot is None:
            continue
        opening, marker, closing = slot
        if user.startswith(opening) and marker in user and user.endswith(closing):
            return user[: len(user) - len(closing)].rsplit(marker, 1)[1].strip()
    return user


def llm_config(
    model: str, adapter: Path | None = None, template: str = "auto", base: LLMConfig | None = None
) -> LLMConfig:
    """Return `base` (or the defaults) set to load `model` with the transformers backend and `adapter` as ADAPTER.

    No adapter is a default, so a request without one gets the bare model.
    """
    update = {
        "backend": "transformers",
        "model": model,
        "template": template,
        "adapters": {ADAPTER: str(adapter)} if adapter else {},
        "default_adapter": None,
        "merge_adapter": None,
    }
    return LLMConfig.model_validate((base or LLMConfig()).model_dump() | update)


# --- reporting -----------------------------------------------------------------------------------------


def report(results: Sequence[EvalResult]) -> list[dict]:
    """Return each row's name and scores as JSON-ready dicts."""
    return [{"name": result.name, **asdict(result.scores)} for result in results]


def write_predictions(
    path: Path, examples: Sequence[Example], results: Sequence[EvalResult], prompt: PromptConfig | None = None
) -> None:
    """Write one JSON line per example: its source, question, reference and every row's reply."""
    with Path(path).open("w", encoding="utf-8") as out:
        for i, example in enumerate(examples):
            line = {
                "source": example.source,
                "question": question_of(example, prompt),
                "reference": example.reference,
                "predictions": {result.name: result.predictions[i] for result in results},
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")


# --- helpers -----------------------------------------------------------------------------------------


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _brevity_penalty(hypothesis_length: int, reference_length: int) -> float:
    if hypothesis_length > reference_length:
        return 1.0
    if hypothesis_length == 0:
        return 0.0
    return math.exp(1 - reference_length / hypothesis_length)


def _f1(overlap: int, predicted: int, relevant: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / relevant
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Return the length of the longest common subsequence, in O(len(a) * len(b)) time and O(len(b)) memory."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _question_slot(template: str, refusal: str) -> tuple[str, str, str] | None:
    """Return (first line, text before the question on its line, text after it) of the rendered QA template.

    None when the question has no text before it on its line, so it cannot be found in a rendering.
    """
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    rendered = ImmutableSandboxedEnvironment().from_string(template)
    before, _, after = rendered.render(chunks=[], question=_QUESTION, refusal=refusal).partition(_QUESTION)
    opening, marker = before.split("\n", 1)[0], before.rsplit("\n", 1)[-1]
    return (opening, marker, after) if opening and marker else None


def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)  # not the dictionary-loading chatter on every first use
    return jieba
