"""Lexical matching: jieba-segmented terms for SQLite FTS5, whose built-in BM25 ranks them.

The FTS5 table lives in the knowledge base's SQLite file and is written in the same transaction as
the chunks, so the lexical index is updated incrementally and can never disagree with the store.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from functools import cache

# A term worth indexing holds at least one letter or digit (CJK included); punctuation is dropped.
_WORD = re.compile(r"\w")


@cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def terms(text: str) -> list[str]:
    """Return the case-folded search terms of `text`: jieba words (and their sub-words), English words whole.

    NFKC folds full-width letters and digits (`ＡＰＩ２` → `API2`) so they match their ASCII forms.
    """
    words = _jieba().cut_for_search(unicodedata.normalize("NFKC", text))
    return [word.casefold() for word in (w.strip() for w in words) if word and _WORD.search(word)]


def indexed_text(text: str) -> str:
    """Return `text` as the space-separated terms stored in the FTS5 table."""
    return " ".join(terms(text))


def match_expression(query: str) -> str | None:
    """Return an FTS5 MATCH expression that matches any term of `query`, or None if it has none."""
    unique = dict.fromkeys(terms(query))
    if not unique:
        return None
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in unique)
