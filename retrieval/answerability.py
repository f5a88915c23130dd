"""Is the answer in the documents? Signals of a search that say so, and their calibrated probability.

A raw cosine threshold means nothing to a user (e5 models score unrelated text at 0.8-0.88, text2vec
elsewhere), so kbqa turns what a search already knows into a probability with a logistic regression
fitted per embedding model (`retrieval/calibration.py`):

- `cosine`: the best hit's cosine similarity to the question;
- `margin`: how far it stands above the median cosine of the dense candidates, the level at which this
  knowledge base matches anything for this question;
- `coverage`: the share of the question's content terms, weighted by their rarity in the knowledge base
  (BM25's idf), that the best-covering hit holds, counted full from `COVERAGE_SATURATION` up. A same-topic
  passage shares the topic's words but not the rarer ones that name the fact asked about. Each word counts
  once: the sub-words jieba also makes of it (笔记, 电脑, 笔记本 of 笔记本电脑) are left out by the caller
  (`lexical.whole_terms`), or a passage about laptops would seem to answer 笔记本电脑的价格是多少？;
- `unseen`: the idf-weighted share of the question's terms that no chunk holds at all;
- `agreement`: 1 when the dense and lexical searches put the same chunk first;
- `rerank`: the cross-encoder's score of the best hit, when a calibration was fitted with a reranker.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from retrieval.bilingual import is_chinese, lemma, translations
from retrieval.calibration import LogisticModel
from retrieval.text_rules import CJK_CHAR, fold

# Hits whose text is looked at: the answer path reads about this many.
TOP_HITS = 5
SIGNALS = ("cosine", "margin", "coverage", "unseen", "agreement")
# A passage that holds this share of a question's weighted terms counts as holding them all: people word
# the rest of a question in their own way (DRCD's askers more than CMRC's, whose calibration measured on
# DRCD was too cautious above it). Chosen on DRCD articles 100-199; docs/benchmarks.md's figures are on 0-99.
COVERAGE_SATURATION = 0.8
_ASCII_WORD = re.compile(r"[0-9a-z]+")


@dataclass(frozen=True)
class Signals:
    """What a search says about whether its hits hold the answer (see the module's docstring)."""

    cosine: float
    margin: float
    coverage: float
    unseen: float
    agreement: float
    rerank: float | None = None

    def values(self, features: Sequence[str]) -> list[float]:
        """Return the values of the named features, in order (a missing rerank score counts as 0)."""
        values = asdict(self)
        return [float(values[name] or 0.0) for name in features]


def term_weights(chunks: int, counts: Mapping[str, int], terms: Sequence[str]) -> dict[str, float]:
    """Return each term's inverse document frequency (BM25's) among `chunks` chunks, given how many hold it.

    A term no chunk holds gets the highest weight: it is the most telling when a question needs it.
    """
    return {t: math.log(1 + (chunks - counts.get(t, 0) + 0.5) / (counts.get(t, 0) + 0.5)) for t in terms}


def coverage(text: str, weights: Mapping[str, float], asked_in_chinese: bool | None = None) -> float:
    """Return the weighted share of the terms in `weights` that `text` holds (1.0 when there are none).

    A Chinese term counts by the share of its character pairs (or its one character) the text holds,
    since a question and a passage may be segmented differently (jieba cuts Traditional Chinese into odd
    words like 時樂山市); an English term or number counts when it is one of the text's words. When the
    question's language (`asked_in_chinese`) is not the text's, a term the text does not hold as written
    counts as held when the text holds one of its translations (`retrieval/bilingual.py`).
    """
    total = sum(weights.values())
    if total <= 0:
        return 1.0
    folded = fold(text).casefold()
    words = set(_ASCII_WORD.findall(folded))
    across = asked_in_chinese is not None and asked_in_chinese != is_chinese(folded)
    lemmas = {lemma(w) for w in words} if across else set()

    def held(term: str) -> float:
        found = _held(term, folded, words)
        if found < 1.0 and across and _translated_held(translations(term, weights), folded, lemmas):
            return 1.0
        return found

    return sum(w * held(term) for term, w in weights.items()) / total


def _translated_held(words: frozenset[str], folded: str, lemmas: set[str]) -> bool:
    """Return whether the text holds one of a term's translations (Chinese words, or English lemmas)."""
    return any(word in lemmas if word.isascii() else word in folded for word in words)


def _held(term: str, folded: str, words: set[str]) -> float:
    if not CJK_CHAR.search(term):
        return float(term in words)
    if term in folded:
        return 1.0
    pairs = [term[i : i + 2] for i in range(len(term) - 1)] or [term]
    return sum(pair in folded for pair in pairs) / len(pairs)


def signals(
    hit_texts: Sequence[str],
    hit_cosines: Sequence[float],
    dense_cosines: Sequence[float],
    weights: Mapping[str, float],
    unseen_terms: Sequence[str],
    agreement: bool,
    rerank: float | None = None,
    asked_in_chinese: bool | None = None,
) -> Signals:
    """Return the signals of a search from its best hits, its dense candidates' cosines and the term weights.

    `asked_in_chinese` (the question's language) lets a term count through its translation in a hit
    written in the other language (`coverage`); None compares words as written only.
    """
    total = sum(weights.values())
    texts = list(hit_texts[:TOP_HITS])
    best = max(hit_cosines[:TOP_HITS], default=0.0)
    typical = statistics.median(dense_cosines) if len(dense_cosines) else best
    return Signals(
        cosine=float(best),
        margin=float(best - typical),
        coverage=min(
            max((coverage(text, weights, asked_in_chinese) for text in texts), default=0.0)
            / COVERAGE_SATURATION,
            1.0,
        ),
        unseen=sum(weights[t] for t in unseen_terms) / total if total > 0 else 0.0,
        agreement=float(agreement),
        rerank=rerank,
    )


def answerability(model: LogisticModel, found: Signals) -> float:
    """Return the probability, in [0, 1], that the hits with these signals hold the answer."""
    return float(model.probabilities(np.array([found.values(model.features)]))[0])
