"""Finding the chunks of a knowledge base that answer a query: dense, lexical, or both fused, then reranked.

Every hit carries its cosine similarity to the query (`score`, in [-1, 1], higher is more similar),
whatever the mode, so a threshold means the same thing everywhere. The order comes from the mode:
cosine for `dense`, BM25 for `lexical`, reciprocal-rank fusion of both for `hybrid`, and the
cross-encoder's score when reranking; the hit keeps each of those scores so callers see why it ranked.
What a search is asked and gives back (`SearchOptions`, `SearchHit`, `Retrieval`) is in `search_types.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from retrieval.answerability import Signals, answerability, signals, term_weights
from retrieval.bilingual import is_chinese, translations
from retrieval.calibration import Calibration
from retrieval.embedders import Embedder
from retrieval.knowledge_base import KnowledgeBase, ScoredChunk
from retrieval.lexical import asked_fields, content_terms, match_expression, terms, whole_terms
from retrieval.reranker import Reranker
from retrieval.search_types import Mode, Retrieval, RetrievalConfig, SearchHit, SearchOptions
from retrieval.store import ChunkRecord


@dataclass
class _Candidate:
    chunk: ChunkRecord
    cosine: float = 0.0
    lexical: float | None = None
    fusion: float | None = None
    rerank: float | None = None


@dataclass
class _Search:
    """A search's hits and the candidate lists behind them."""

    hits: list[SearchHit]
    query_vector: np.ndarray | None  # None when a filter left nothing to search
    dense: list[ScoredChunk]
    lexical: list[ScoredChunk]
    allowed: set[int] | None = None  # the chunk ids the filters allowed (None: every chunk)
    # The query's terms no chunk holds as written, with how many chunks hold their most common translation.
    translated: dict[str, int] = field(default_factory=dict)
    # The names of the fields holding what the query asks for that some chunk holds (重量 for 有多重？).
    held_fields: list[str] = field(default_factory=list)


class Retriever:
    """Searches knowledge bases with one embedding model and the configured retrieval settings.

    `calibration` (fitted without a reranker) and `rerank_calibration` (with the configured one) turn a
    search's signals into answerability; without them `retrieve` reports None.
    """

    def __init__(
        self,
        embedder: Embedder,
        config: RetrievalConfig | None = None,
        calibration: Calibration | None = None,
        rerank_calibration: Calibration | None = None,
    ) -> None:
        self.embedder = embedder
        self.config = config or RetrievalConfig()
        self.calibration = calibration
        self.rerank_calibration = rerank_calibration
        self._reranker = Reranker(self.config.reranker) if self.config.reranker.model else None

    def search(self, kb: KnowledgeBase, query: str, options: SearchOptions | None = None) -> list[SearchHit]:
        """Return the best chunks for `query`, best first."""
        options = options or SearchOptions()
        query_vector = self._query_vector(query, options)
        with kb.reading():  # one view of the knowledge base for the whole search (a delete waits)
            return self._search(kb, query, query_vector, options).hits

    def retrieve(self, kb: KnowledgeBase, query: str, options: SearchOptions | None = None) -> Retrieval:
        """Return the best chunks for `query` with the probability that they hold its answer."""
        options = options or SearchOptions()
        query_vector = self._query_vector(query, options)
        with kb.reading():  # one view of the knowledge base for the whole search (a delete waits)
            return self._retrieve(kb, query, query_vector, options)

    def _retrieve(
        self, kb: KnowledgeBase, query: str, query_vector: np.ndarray, options: SearchOptions
    ) -> Retrieval:
        found = self._search(kb, query, query_vector, options)
        if found.query_vector is None:
            nothing = Signals(cosine=0.0, margin=0.0, coverage=0.0, unseen=1.0, agreement=0.0)
            return Retrieval([], nothing, {}, None if self.calibration is None else 0.0)
        # The signals are measured the same way whatever the mode, as the calibration was fitted.
        # Over the allowed chunks only: what the caller may not read must not shape its answerability.
        allowed = found.allowed if options.groups is not None else None
        dense = found.dense or kb.search(found.query_vector, self.config.candidates, allowed)
        lexical = found.lexical
        if not lexical and (expression := match_expression(query)):
            lexical = kb.lexical_search(expression, 1, allowed)
        asked = content_terms(query)
        asked += [name for name in found.held_fields if name not in asked]
        chunks, counts = kb.term_counts(asked, allowed)
        counts = {**counts, **found.translated}  # a term held in the other language is not unseen
        weights = term_weights(chunks, counts, asked)
        # Each word of the question counts once: 笔记本电脑 with its sub-words 笔记, 电脑, 笔记本 would weigh
        # four times the 价格 asked about it, and a passage about laptops would seem to answer its price.
        judged = whole_terms(asked)
        hits = found.hits
        reranked = options.rerank and bool(hits) and hits[0].rerank_score is not None
        found_signals = signals(
            [hit.text for hit in hits],
            [hit.score for hit in hits],
            [hit.score for hit in dense],
            {t: weights[t] for t in judged},
            [t for t in judged if not counts.get(t)],
            agreement=bool(dense and lexical and dense[0].chunk.id == lexical[0].chunk.id),
            rerank=hits[0].rerank_score if reranked else None,
            asked_in_chinese=is_chinese(query),
        )
        calibration = self.rerank_calibration if reranked and self.rerank_calibration else self.calibration
        probability = None
        if calibration is not None:
            probability = answerability(calibration.answerability, found_signals) if hits else 0.0
        return Retrieval(hits, found_signals, weights, probability)

    def _query_vector(self, query: str, options: SearchOptions) -> np.ndarray:
        """Return the query's vector, embedded before the knowledge base is held (queries batch meanwhile)."""
        if not query.strip():
            raise ValueError("the query is empty")
        if options.rerank and self._reranker is None:
            raise ValueError(
                "reranking was asked for, but no reranker model is configured (retrieval.reranker.model)"
            )
        return self.embedder.embed_query(query)

    def _search(
        self, kb: KnowledgeBase, query: str, query_vector: np.ndarray, options: SearchOptions
    ) -> _Search:
        mode = options.mode or self.config.mode
        allowed = None
        filtered = options.document_ids is not None or options.source is not None or options.metadata
        if filtered or options.groups is not None:
            # The caller's access groups join the filters here, so the top-k below is taken among the
            # chunks it may read (its k best, not k minus the hidden ones), in every mode and store.
            allowed = kb.chunk_ids_where(
                options.document_ids, options.source, options.metadata, options.groups
            )
            if not allowed:
                return _Search([], None, [], [], set())
        depth = max(self.config.candidates, options.k, self.config.reranker.top_n if options.rerank else 0)
        dense = kb.search(query_vector, depth, allowed) if mode != "lexical" else []
        fields = _held_fields(kb, query, allowed)
        expression = match_expression(" ".join([query, *fields])) if mode != "dense" else None
        lexical = kb.lexical_search(expression, depth, allowed) if expression else []
        # A question in another language than the documents: the chunks that hold its terms' translations
        # are a third list, so that a chunk in the question's language that shares a word (days) does not
        # outrank the one that answers (病假) in both the dense and the lexical list.
        translated, share = _translated(kb, query, allowed)
        in_other_language: list[ScoredChunk] = []
        if translated:
            words = match_expression(" ".join(words for _, words in translated.values()))
            chinese = is_chinese(query)
            found = kb.lexical_search(words, depth, allowed) if words else []
            # Only chunks written in the other language count: an English word in a Chinese article
            # (a name, a title) is no sign that the question is asked in another language than the documents.
            in_other_language = [hit for hit in found if is_chinese(hit.chunk.text) != chinese]
            if not in_other_language:
                translated, share = {}, 0.0

        candidates = self._rank(mode, dense, lexical, in_other_language, share)
        if mode == "hybrid":
            # Counted among the chunks searched, as answerability counts them: a search limited to some
            # documents ranks as a search of a knowledge base holding only those (and what a caller may not
            # read shapes nothing).
            candidates = self._rarest_first_on_ties(kb, query, candidates, allowed)
        dense_ids = {hit.chunk.id for hit in dense}
        missing = [c for c in candidates if c.chunk.id not in dense_ids]
        for candidate, cosine in zip(
            missing, kb.cosines(query_vector, [c.chunk.id for c in missing]), strict=True
        ):
            candidate.cosine = float(cosine)
        if options.dedupe:
            candidates = self._dedupe(kb, candidates)
        if options.score_threshold is not None:
            candidates = [c for c in candidates if c.cosine >= options.score_threshold]
        if options.rerank:
            candidates = self._rerank(query, candidates)
        hits = [self._hit(kb, c, options.neighbours) for c in candidates[: options.k]]
        counts = {term: count for term, (count, _) in translated.items()}
        return _Search(hits, query_vector, dense, lexical, allowed, counts, fields)

    def _rank(
        self,
        mode: Mode,
        dense: list[ScoredChunk],
        lexical: list[ScoredChunk],
        other_language: Sequence[ScoredChunk] = (),
        other_share: float = 0.0,
    ) -> list[_Candidate]:
        """Return the candidates in the mode's order; in hybrid mode the lexical weight is shared between
        the question's terms as written and their translations (`other_language`) by their idf share."""
        if mode == "dense":
            return [_Candidate(hit.chunk, cosine=hit.score) for hit in dense]
        if mode == "lexical":
            held = {hit.chunk.id for hit in lexical}
            more = [hit for hit in other_language if hit.chunk.id not in held]
            return [_Candidate(hit.chunk, lexical=hit.score) for hit in [*lexical, *more]]
        fused: dict[int, _Candidate] = {}
        lists = (
            (self.config.dense_weight, dense),
            (self.config.lexical_weight * (1.0 - other_share), lexical),
            (self.config.lexical_weight * other_share, other_language),
        )
        for weight, hits in lists:
            for rank, hit in enumerate(hits, start=1):
                candidate = fused.setdefault(hit.chunk.id, _Candidate(hit.chunk, fusion=0.0))
                candidate.fusion += weight / (self.config.rrf_k + rank)
                if hits is dense:
                    candidate.cosine = hit.score
                elif candidate.lexical is None:
                    candidate.lexical = hit.score
        return sorted(fused.values(), key=lambda c: c.fusion, reverse=True)

    @staticmethod
    def _rarest_first_on_ties(
        kb: KnowledgeBase, query: str, candidates: list[_Candidate], allowed: set[int] | None = None
    ) -> list[_Candidate]:
        """Return the candidates with each run of equal fusion scores ordered by the rarest query term they hold.

        Reciprocal-rank fusion ties the first of one list with the first of the other; a chunk holding a
        rare exact term of the query (a code such as `KB0003X`, in one chunk of thousands) then wins over
        an unrelated top dense hit, rather than losing by list order.
        """
        tied = {c.fusion for c, d in pairwise(candidates) if c.fusion == d.fusion}
        if not tied:
            return candidates
        wanted = set(terms(query))
        _, counts = kb.term_counts(sorted(wanted), allowed)

        def rarity(candidate: _Candidate) -> int:
            chunk = candidate.chunk
            held = wanted.intersection(terms(" ".join([chunk.title, *chunk.heading_path, chunk.text])))
            return min((counts.get(word, 0) for word in held), default=2**62)

        return sorted(candidates, key=lambda c: (-c.fusion, rarity(c) if c.fusion in tied else 0))

    def _dedupe(self, kb: KnowledgeBase, candidates: list[_Candidate]) -> list[_Candidate]:
        if len(candidates) < 2:
            return candidates
        vectors = kb.vectors([c.chunk.id for c in candidates])
        kept: list[int] = []
        for i, candidate in enumerate(candidates):
            text = "".join(candidate.chunk.text.split())
            duplicate = any(
                float(vectors[i] @ vectors[j]) >= self.config.duplicate_similarity
                or text == "".join(candidates[j].chunk.text.split())
                for j in kept
            )
            if not duplicate:
                kept.append(i)
        return [candidates[i] for i in kept]

    def _rerank(self, query: str, candidates: list[_Candidate]) -> list[_Candidate]:
        head = candidates[: self.config.reranker.top_n]
        scores = self._reranker.scores(query, [c.chunk.text for c in head])
        for candidate, score in zip(head, scores, strict=True):
            candidate.rerank = float(score)
        return sorted(head, key=lambda c: c.rerank, reverse=True)

    @staticmethod
    def _hit(kb: KnowledgeBase, candidate: _Candidate, neighbours: int) -> SearchHit:
        chunk = candidate.chunk
        before: tuple[str, ...] = ()
        after: tuple[str, ...] = ()
        if neighbours:
            around = kb.neighbours(chunk, neighbours, neighbours)
            before = tuple(c.text for c in around if c.ordinal < chunk.ordinal)
            after = tuple(c.text for c in around if c.ordinal > chunk.ordinal)
        return SearchHit(
            chunk_id=chunk.id,
            score=candidate.cosine,
            text=chunk.text,
            document_id=chunk.document_id,
            source=chunk.source,
            title=chunk.title,
            page=chunk.page,
            heading_path=chunk.heading_path,
            start=chunk.start,
            end=chunk.end,
            lexical_score=candidate.lexical,
            fusion_score=candidate.fusion,
            rerank_score=candidate.rerank,
            context_before=before,
            context_after=after,
            metadata=chunk.metadata,
            ocr=chunk.ocr,
        )


def _held_fields(kb: KnowledgeBase, query: str, allowed: set[int] | None = None) -> list[str]:
    """Return the names of the fields holding what the query asks for that some (allowed) chunk holds:
    星河X1 有多重？ is searched with 重量, the field of the table row that answers it."""
    names = asked_fields(query)
    if not names:
        return []
    _, counts = kb.term_counts(names, allowed)
    return [name for name in names if counts.get(name)]


def _translated(
    kb: KnowledgeBase, query: str, allowed: set[int] | None = None
) -> tuple[dict[str, tuple[int, str]], float]:
    """Return the query's content terms that no chunk holds as written but some chunk holds in translation,
    each with how many chunks hold its most common translation and those translations (space-separated);
    and their share of the idf weight of all the query's content terms.

    "How many days of sick leave do I get?" on a Chinese handbook: sick and leave are in no chunk, 病假 is.
    A question in the documents' language finds its terms as written, and nothing is added. Counted over
    the `allowed` chunks when given (the search's filters and the caller's groups).
    """
    asked = content_terms(query)
    chunks, counts = kb.term_counts(asked, allowed)
    unseen = {t: translations(t, asked) for t in asked if not counts.get(t)}
    if not any(unseen.values()):
        return {}, 0.0
    # An English translation is looked up as written in documents too: plural as well as singular.
    forms = {
        t: sorted({f for w in words for f in ((w, w + "s") if w.isascii() else (w,))})
        for t, words in unseen.items()
    }
    _, held = kb.term_counts(sorted({f for words in forms.values() for f in words}), allowed)
    found: dict[str, tuple[int, str]] = {}
    for term, words in forms.items():
        present = [w for w in words if held.get(w)]
        if present:
            found[term] = (max(held[w] for w in present), " ".join(present))
    weights = term_weights(chunks, counts, asked)
    total = sum(weights.values())
    return found, (sum(weights[t] for t in found) / total if total > 0 else 0.0)
