"""The lexical index of the `postgres` store: a terms table ranked by BM25 computed in SQL as FTS5 does.

One row per chunk and FTS5 token, with its frequency; each chunk row keeps its length in tokens and each
knowledge base its chunk count and token total. BM25 is computed exactly as FTS5's `bm25()` computes it
(k1 = 1.2, b = 0.75, the same IDF floor), so hybrid fusion and the answerability calibration read the
same figures on either store. `pg_store.py` calls these inside its own transactions.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence

from retrieval.lexical import LEXICAL_VERSION, expression_terms, fts_tokens
from retrieval.postgres import Database
from retrieval.store_base import lexical_text

# FTS5's bm25() constants.
K1, B = 1.2, 0.75


def chunk_tokens(title: str, heading_path: Sequence[str], text: str) -> list[str]:
    """Return the FTS5 tokens the lexical index holds of a chunk (its title, headings and text)."""
    return fts_tokens(lexical_text(title, heading_path, text))


def term_rows(kb_id: int, chunk_id: int, tokens: Sequence[str]) -> list[tuple]:
    """Return the terms table's rows of one chunk: (kb id, term, chunk id, frequency)."""
    return [(kb_id, term, chunk_id, tf) for term, tf in Counter(tokens).items()]


def copy_terms(cur, rows: Iterable[tuple]) -> None:
    """Write terms rows with COPY (the fast way in for many small rows); return nothing."""
    rows = list(rows)
    if rows:
        with cur.copy("COPY chunk_terms (kb_id, term, chunk_id, tf) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def remake_stale_terms(database: Database, kb_id: int) -> None:
    """Remake the knowledge base's terms, once, if they were cut another way (an older LEXICAL_VERSION)."""
    with database.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT lexical_version FROM knowledge_bases WHERE id = %s", (kb_id,))
        row = cur.fetchone()
        if row is None or row[0] == LEXICAL_VERSION:
            return
        cur.execute("SELECT lexical_version FROM knowledge_bases WHERE id = %s FOR UPDATE", (kb_id,))
        if cur.fetchone()[0] == LEXICAL_VERSION:
            return
        cur.execute(
            "SELECT c.id, d.title, c.heading_path, c.text FROM chunks c"
            " JOIN documents d ON d.kb_id = c.kb_id AND d.id = c.document_id"
            " WHERE c.kb_id = %s",
            (kb_id,),
        )
        rows = cur.fetchall()
        cur.execute("DELETE FROM chunk_terms WHERE kb_id = %s", (kb_id,))
        for chunk_id, title, path, text in rows:
            tokens = chunk_tokens(title, json.loads(path), text)
            cur.execute(
                "UPDATE chunks SET tokens = %s WHERE kb_id = %s AND id = %s", (len(tokens), kb_id, chunk_id)
            )
            copy_terms(cur, term_rows(kb_id, chunk_id, tokens))
        cur.execute(
            "UPDATE knowledge_bases SET lexical_version = %(v)s,"
            " token_total = (SELECT COALESCE(SUM(tokens), 0) FROM chunks WHERE kb_id = %(kb)s)"
            " WHERE id = %(kb)s",
            {"v": LEXICAL_VERSION, "kb": kb_id},
        )


def bm25_search(
    database: Database, kb_id: int, expression: str, k: int, allowed: set[int] | None = None
) -> list[tuple[int, float]]:
    """Return (chunk id, BM25 score) of the `k` best matches of a `match_expression`, best first.

    BM25 as FTS5 computes it, over the tokens FTS5 would make: N and the average length are the
    knowledge base's, and a phrase's IDF is floored at 1e-6. A quoted term of several tokens (3.5)
    is found in a chunk holding all its tokens, as often as its rarest one, where FTS5 would also
    ask for them side by side.
    """
    phrases = list(dict.fromkeys(tuple(dict.fromkeys(fts_tokens(t))) for t in expression_terms(expression)))
    phrases = [phrase for phrase in phrases if phrase]
    if not phrases or k <= 0:
        return []
    numbers = [n for n, phrase in enumerate(phrases) for _ in phrase]
    tokens = [token for phrase in phrases for token in phrase]
    widths = [len(phrase) for phrase in phrases for _ in phrase]
    filter_clause = "AND f.chunk_id = ANY(%(allowed)s)" if allowed is not None else ""
    with database.connection() as conn:
        rows = conn.execute(
            "WITH q(phrase, term, width) AS (SELECT * FROM unnest(%(numbers)s::int[], %(tokens)s::text[],"
            "  %(widths)s::int[])),"
            " found AS (SELECT q.phrase, t.chunk_id, MIN(t.tf) AS tf FROM chunk_terms t JOIN q ON q.term = t.term"
            "  WHERE t.kb_id = %(kb)s GROUP BY q.phrase, q.width, t.chunk_id HAVING COUNT(*) = q.width),"
            " stats AS (SELECT chunk_count::float8 AS n,"
            "  GREATEST(token_total, 1)::float8 / GREATEST(chunk_count, 1) AS avgdl"
            "  FROM knowledge_bases WHERE id = %(kb)s),"
            " idf AS (SELECT f.phrase, LN((s.n - COUNT(*) + 0.5) / (COUNT(*) + 0.5)) AS w"
            "  FROM found f, stats s GROUP BY f.phrase, s.n)"
            " SELECT f.chunk_id, SUM(CASE WHEN idf.w <= 0 THEN 1e-6 ELSE idf.w END * f.tf * %(k1p1)s"
            "  / (f.tf + %(k1)s * (1 - %(b)s + %(b)s * c.tokens / s.avgdl))) AS score"
            " FROM found f JOIN idf ON idf.phrase = f.phrase JOIN chunks c ON c.kb_id = %(kb)s AND c.id = f.chunk_id, stats s"
            f" WHERE TRUE {filter_clause}"
            " GROUP BY f.chunk_id ORDER BY score DESC, f.chunk_id LIMIT %(k)s",
            {
                "kb": kb_id,
                "numbers": numbers,
                "tokens": tokens,
                "widths": widths,
                "allowed": sorted(allowed or ()),
                "k": k,
                "k1": K1,
                "k1p1": K1 + 1,
                "b": B,
            },
        ).fetchall()
    return [(int(chunk_id), float(score)) for chunk_id, score in rows]
