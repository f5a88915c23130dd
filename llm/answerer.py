"""The grounded answerer: from what a search found, build the prompt and generate, with the citations used.

One `Answerer` serves every knowledge base. It does not search: the service searches the turn (a
follow-up made standalone first, `llm.followup.search_turn`) and gives the answerer the `Searched`
question with its retrieval, or a plain `Retrieval`. It answers with either a chat model or, with the
`extractive` backend, the extractive reader. Whether to refuse is decided in one place, `_refuses`: when
the retrieval's answerability (the calibrated probability that the chunks hold the answer) is below
`min_answerability`, or no chunk was found (`score_threshold`), the answer is the refusal sentence unless
the prompt answers without context (`prompt.no_context`), whatever the backend, and the model is not
called; the extractive reader also refuses when no sentence is worth answering with. The chunks found
are returned as `closest`, not cited.
`stream` yields the answer as it is generated; the chunks it may cite are known before the first delta,
and the final `Answer` (citations actually used, token counts, timings) once the stream is exhausted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from llm.answer_types import Span
from llm.extractive import Extract, ExtractiveReader
from llm.followup import Searched
from llm.prompt import Prompt, PromptBuilder, PromptConfig
from llm.types import ChatModel, DeltaStream, FinishReason, Generation, GenerationParams, Message, Usage
from retrieval import Retrieval, SearchHit, SearchOptions
from retrieval.text_rules import fold

_MARKER = re.compile(r"\[(\d{1,3})\]")


@dataclass(frozen=True)
class Citation:
    """A chunk an answer cites as `[n]`."""

    n: int
    chunk_id: int
    document_id: int
    source: str
    title: str
    page: int | None
    score: float  # cosine similarity of the chunk to the question, in [-1, 1]
    text: str
    heading_path: tuple[str, ...] = ()  # the titles above the chunk (a spreadsheet's: the sheet name)

    @classmethod
    def of(cls, n: int, hit: SearchHit) -> Citation:
        """Return the citation `[n]` of a search hit."""
        return cls(
            n,
            hit.chunk_id,
            hit.document_id,
            hit.source,
            hit.title,
            hit.page,
            hit.score,
            hit.text,
            tuple(hit.heading_path),
        )


@dataclass(frozen=True)
class Timings:
    """Where the time of one answer went, in milliseconds from the question."""

    retrieval_ms: float
    prompt_ms: float
    first_token_ms: float | None
    total_ms: float
    rewrite_ms: float = (
        0.0  # making a follow-up standalone (the model's rewrite, or the rules), before retrieval
    )


@dataclass(frozen=True)
class Answer:
    """An answer, the chunks it cites, its token counts and timings."""

    text: str
    citations: list[Citation]
    usage: Usage
    timings: Timings
    finish_reason: FinishReason
    grounded: bool  # the answer was generated from knowledge-base chunks
    refused: bool  # the answer is the refusal sentence
    answerability: float | None = None  # probability the chunks hold the answer; None without a calibration
    closest: list[Citation] = field(default_factory=list)  # chunks found but not used, when refused
    searched_question: str = (
        ""  # the question searched and judged: the follow-up made standalone, or as typed
    )
    spans: list[Span] = field(default_factory=list)  # the words of `text` that answer (extractive answers)


class AnswerOptions(BaseModel):
    """What one question asks for besides its text."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    retrieval: SearchOptions = Field(default_factory=SearchOptions, description="How chunks are found.")
    generation: GenerationParams | None = Field(
        None, description="Generation parameters; None uses the `llm.generation` settings."
    )


class AnswerStream(DeltaStream[Answer]):
    """An answer as text deltas; `sources` (the chunks it may cite) come first, `answer` at the end."""

    def __init__(self, sources: list[Citation], deltas: Generator[str, None, Answer]) -> None:
        super().__init__(deltas)
        self.sources = sources

    @property
    def answer(self) -> Answer | None:
        """Return the whole answer, once the stream is exhausted."""
        return self.result


class Answerer:
    """Answers a question from what its search found, with a chat model, or extractively without one."""

    def __init__(
        self,
        prompt: PromptConfig,
        generation: GenerationParams,
        model: ChatModel | None = None,
        reader: ExtractiveReader | None = None,
        min_answerability: float = 0.0,
    ) -> None:
        if (model is None) == (reader is None):
            raise ValueError("an Answerer needs exactly one of a chat model and an extractive reader")
        self.min_answerability = min_answerability
        self._config = prompt
        self._generation = generation
        self.model = model
        self._reader = reader
        self._builder = (
            PromptBuilder(prompt, model.count_prompt_tokens, model.context_window) if model else None
        )

    def answer(
        self,
        question: str,
        found: Searched | Retrieval,
        history: Sequence[Message] = (),
        generation: GenerationParams | None = None,
    ) -> Answer:
        """Return the answer to `question` from what its search found."""
        return self.stream(question, found, history, generation).read()

    def stream(
        self,
        question: str,
        found: Searched | Retrieval,
        history: Sequence[Message] = (),
        generation: GenerationParams | None = None,
    ) -> AnswerStream:
        """Return the answer to `question` as a stream, from `found` (the question searched and its retrieval,
        or the retrieval of `question` as typed); the prompt is built before it returns.

        Raises the model's errors (busy, unavailable, prompt too long) here, before any delta.
        `generation` overrides the configured generation parameters.
        """
        chosen = found if isinstance(found, Searched) else Searched.as_written(question, found)
        params = generation or self._generation
        clock = _Clock(chosen.rewrite_ms + chosen.retrieval_ms)
        spent = (chosen.retrieval_ms, chosen.rewrite_ms)
        hits = self._grounding(chosen.found)
        # The reader reads the turn as typed (pronouns resolved): the subject a follow-up carried over
        # found the chunks, and what the turn asks picks the sentence.
        extract = (
            self._reader.read(chosen.read, hits, _read_weights(chosen), chosen.found.answerability)
            if self._reader is not None and hits
            else None
        )
        if self._refuses(hits, extract):
            # The refusal speaks the language of what was read (the extractive reader) or asked.
            return self._refusal(chosen.read if self._reader is not None else question, chosen, clock, spent)
        if extract is not None:
            return self._extractive(chosen, hits, extract, clock, spent)
        assert self._builder is not None and self.model is not None
        if hits:
            prompt = self._builder.build(question, hits, history, params.max_new_tokens)
        else:  # no_context == "answer"
            prompt = self._builder.without_context(question, history, params.max_new_tokens)
        prompt_ms = clock.lap()
        text_stream = self.model.stream(prompt.messages, params)
        sources = [Citation.of(n, hit) for n, hit in enumerate(prompt.hits, start=1)]
        notice = "" if prompt.hits else self._config.notice(question) + "\n"
        return AnswerStream(
            sources, self._generated(prompt, text_stream, notice, chosen, clock, (*spent, prompt_ms))
        )

    def _grounding(self, found: Retrieval) -> list[SearchHit]:
        """Return the chunks an answer may be made from: none when their answerability is below
        `min_answerability` (the chunks found do not hold the answer: none is given to the model)."""
        if found.answerability is not None and found.answerability < self.min_answerability:
            return []
        return found.hits

    def _refuses(self, hits: Sequence[SearchHit], extract: Extract | None) -> bool:
        """Return whether the answer is the refusal sentence, the one place this is decided: no chunk to
        answer from (`_grounding`, or none over the search's `score_threshold`) and the prompt does not answer
        without context (`no_context`), or, extractively, no sentence worth answering with."""
        if self._reader is not None:
            return extract is None
        return not hits and self._config.no_context != "answer"

    # --- the three ways an answer is made ---------------------------------------------------------

    def _generated(
        self,
        prompt: Prompt,
        text_stream: Iterator[str],
        notice: str,
        chosen: Searched,
        clock: _Clock,
        spent: tuple[float, float, float],  # retrieval, rewrite and prompt milliseconds
    ) -> Generator[str, None, Answer]:
        retrieval_ms, rewrite_ms, prompt_ms = spent
        found = chosen.found
        first_token_ms = None
        if notice:
            yield notice
        try:
            for delta in text_stream:
                if first_token_ms is None:
                    first_token_ms = clock.total()
                yield delta
        finally:
            text_stream.close()
        generation: Generation = text_stream.generation
        reply = generation.text.strip()
        refused = self._config.is_refusal(reply)
        citations = [] if refused else _cited(reply, prompt.hits)
        return Answer(
            text=notice + reply,
            citations=citations,
            usage=generation.usage,
            timings=Timings(retrieval_ms, prompt_ms, first_token_ms, clock.total(), rewrite_ms),
            finish_reason=generation.finish_reason,
            grounded=bool(prompt.hits),
            refused=refused,
            answerability=found.answerability,
            closest=_closest(found) if refused or not prompt.hits else [],
            searched_question=chosen.searched,
        )

    def _extractive(
        self,
        chosen: Searched,
        hits: list[SearchHit],
        extract: Extract,
        clock: _Clock,
        spent: tuple[float, float],
    ) -> AnswerStream:
        found = chosen.found
        retrieval_ms, rewrite_ms = spent
        citations = [Citation.of(n, hits[n - 1]) for n in extract.cited]
        answer = Answer(
            text=extract.text,
            citations=citations,
            usage=Usage(0, 0),
            timings=Timings(retrieval_ms, 0.0, clock.total(), clock.total(), rewrite_ms),
            finish_reason="stop",
            grounded=True,
            refused=False,
            answerability=found.answerability,
            searched_question=chosen.searched,
            spans=extract.spans,
        )
        return AnswerStream(citations, _once(answer))

    def _refusal(
        self, question: str, chosen: Searched, clock: _Clock, spent: tuple[float, float]
    ) -> AnswerStream:
        retrieval_ms, rewrite_ms = spent
        answer = Answer(
            text=self._config.refusal(question),
            citations=[],
            usage=Usage(0, 0),
            timings=Timings(retrieval_ms, 0.0, None, clock.total(), rewrite_ms),
            finish_reason="stop",
            grounded=False,
            refused=True,
            answerability=chosen.found.answerability,
            closest=_closest(chosen.found),
            searched_question=chosen.searched,
        )
        return AnswerStream([], _once(answer))


def _closest(found: Retrieval) -> list[Citation]:
    """Return the chunks a search found, as citations numbered in rank order, for an answer that used none."""
    return [Citation.of(n, hit) for n, hit in enumerate(found.hits, start=1)]


def _once(answer: Answer) -> Generator[str, None, Answer]:
    yield answer.text
    return answer


def _cited(reply: str, hits: Sequence[SearchHit]) -> list[Citation]:
    """Return the citations `[n]` the reply names, in order; all chunks when it names none."""
    numbers = [int(n) for n in _MARKER.findall(reply) if 1 <= int(n) <= len(hits)]
    chosen = list(dict.fromkeys(numbers)) or range(1, len(hits) + 1)
    return [Citation.of(n, hits[n - 1]) for n in chosen]


class _Clock:
    """Milliseconds since the question (`before` of them spent before answering began), and since the last lap."""

    def __init__(self, before: float = 0.0) -> None:
        self._before = before
        self._start = self._last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self._last = (now - self._last) * 1000, now
        return elapsed

    def total(self) -> float:
        return self._before + (time.perf_counter() - self._start) * 1000


def _read_weights(chosen: Searched) -> dict[str, float] | None:
    """Return the weights of the search terms the reader weighs sentences by: those of the turn as read.

    A follow-up's carried subject (笔记本电脑 of 在哪里申请？) found the chunks; weighed in the sentences too,
    it would pick the one about the subject (使用满 3 年可申请更换) over the one the turn asks for (申请在星河OA…).
    """
    weights = chosen.found.term_weights
    if chosen.read == chosen.searched or not weights:
        return weights
    read = fold(chosen.read)
    return {term: weight for term, weight in weights.items() if term in read} or None
