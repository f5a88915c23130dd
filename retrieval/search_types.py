"""What a search is asked and what it gives back: the retrieval settings, one search's options, its hits
and its retrieval (hits with what they say about answering), with the limits a search is checked against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from retrieval.answerability import Signals
from retrieval.metadata import check_metadata
from retrieval.reranker import RerankerConfig

MAX_TOP_K = 200
# SQLite refuses longer GLOB patterns and deeper expressions; refused here first, with a clear message.
MAX_SOURCE_GLOB_CHARS = 1000
MAX_METADATA_FILTERS = 32
Mode = Literal["dense", "lexical", "hybrid"]


class RetrievalConfig(BaseModel):
    """How searches are run unless a call says otherwise."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    mode: Mode = Field("hybrid", description="Default search mode: `dense`, `lexical` or `hybrid`.")
    candidates: int = Field(50, gt=0, le=1000, description="Candidates taken from each of dense and lexical.")
    rrf_k: int = Field(
        60, gt=0, description="Reciprocal-rank fusion constant: a hit at rank r adds w/(rrf_k + r)."
    )
    dense_weight: float = Field(1.0, ge=0, description="Weight of the dense ranking in fusion.")
    lexical_weight: float = Field(1.0, ge=0, description="Weight of the lexical (BM25) ranking in fusion.")
    duplicate_similarity: float = Field(
        0.99,
        gt=0,
        le=1,
        description="Drop a hit whose vector has at least this cosine with a better hit. 0.99 drops copies and "
        "one-word edits of a text; lower values also merge similar but distinct chunks (two product sheets).",
    )
    reranker: RerankerConfig = Field(default_factory=RerankerConfig, description="Optional cross-encoder.")


class SearchOptions(BaseModel):
    """What one search asks for."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    k: int = Field(5, ge=1, le=MAX_TOP_K, description="How many chunks to return.")
    mode: Mode | None = Field(
        None, description="`dense`, `lexical` or `hybrid`; None uses the configured mode."
    )
    rerank: bool = Field(False, description="Re-score the best candidates with the configured cross-encoder.")
    score_threshold: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Keep only hits whose cosine similarity to the query is at least this. Cosines lie in "
        "[-1, 1] and higher is more similar (typically 0.7-0.9 for related text with e5 models).",
    )
    document_ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] | None = Field(
        None, max_length=10_000, description="Search only these documents."
    )
    source: str | None = Field(
        None,
        max_length=MAX_SOURCE_GLOB_CHARS,
        description="Search only documents whose source matches this glob.",
    )
    metadata: dict[str, str] | None = Field(
        None,
        max_length=MAX_METADATA_FILTERS,
        description="Search only documents whose metadata has every one of these keys with this value.",
    )
    neighbours: int = Field(
        0, ge=0, le=5, description="Also return this many chunks before and after each hit."
    )
    dedupe: bool = Field(True, description="Drop hits that nearly duplicate a better one.")
    # The access groups of the caller (None: every document). Private, so no request body can set it: the
    # server sets it from the API key with `within_groups`.
    _groups: frozenset[str] | None = PrivateAttr(None)

    @property
    def groups(self) -> frozenset[str] | None:
        """Return the access groups this search is limited to (None: not limited)."""
        return self._groups

    def within_groups(self, groups: frozenset[str] | None) -> SearchOptions:
        """Return a copy of these options limited to documents without groups or sharing one of `groups`
        (None: unchanged); the limit applies inside retrieval, before the top-k is taken."""
        if groups is None:
            return self
        copy = self.model_copy()
        copy._groups = frozenset(groups) if self._groups is None else self._groups & frozenset(groups)
        return copy

    @field_validator("metadata")
    @classmethod
    def _valid_metadata_keys(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        return None if metadata is None else check_metadata(metadata)


@dataclass(frozen=True)
class SearchHit:
    """A chunk that matches a query, where it comes from, and each score that placed it."""

    chunk_id: int
    score: float  # cosine similarity to the query, in [-1, 1]
    text: str
    document_id: int
    source: str
    title: str
    page: int | None
    heading_path: tuple[str, ...]
    start: int
    end: int
    lexical_score: float | None = None  # BM25, when the lexical search found it
    fusion_score: float | None = None  # reciprocal-rank fusion, in hybrid mode
    rerank_score: float | None = None  # cross-encoder score, when reranked
    context_before: tuple[str, ...] = field(default=())
    context_after: tuple[str, ...] = field(default=())
    metadata: dict[str, str] = field(default_factory=dict)  # the document's
    ocr: bool = False  # the text was read from an image by OCR (a scanned page, a photo)


@dataclass(frozen=True)
class Retrieval:
    """The hits of a search with what they say about answering: signals, term weights, answerability."""

    hits: list[SearchHit]
    signals: Signals
    term_weights: dict[str, float]  # the question's content terms and their idf in the knowledge base
    answerability: float | None  # probability that the hits hold the answer; None without a calibration
