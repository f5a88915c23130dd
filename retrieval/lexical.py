"""Lexical matching: jieba-segmented terms for SQLite FTS5, whose built-in BM25 ranks them.

The FTS5 table lives in the knowledge base's SQLite file and is written in the same transaction as
the chunks, so the lexical index is updated incrementally and can never disagree with the store.

Traditional Chinese is folded to Simplified (OpenCC) before segmenting: jieba's dictionary is Simplified
and cuts Traditional text into made-up words, and a question typed in one script then matches documents
written in the other. `LEXICAL_VERSION` names how terms are made; a store whose terms were made
another way remakes them from its chunks once (`retrieval/store.py`). The stored terms drop punctuation
only; the words a question's content terms leave out (question words, glued particles) are the shared
rules of `retrieval/text_rules.py`, read at question time, so they never change a stored index.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from functools import cache

from retrieval.text_rules import (
    ASKED_FIELDS,
    ASKING,
    ASKING_WEIGHT_WORD,
    CJK_CHAR,
    GLUE_PARTICLES,
    QUESTION_WORDS,
    fold,
)

# A term worth indexing holds at least one letter or digit (CJK included); punctuation is dropped.
_WORD = re.compile(r"\w")


# Version of the way `terms` cuts text; 2 folds Traditional Chinese to Simplified first; 3 knows `_WORDS`.
LEXICAL_VERSION = 3
# Workplace words jieba's dictionary lacks: it cuts 年假 into 年 + 假, so that every 假 (放假, 病假) matched
# a question about annual leave as well as 年假 itself did.
_WORDS = ("年假", "带薪年假", "陪产假", "餐补")


@cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    for word in _WORDS:
        jieba.add_word(word)
    return jieba


def words(text: str) -> list[str]:
    """Return the jieba words of `fold(text)` in order, punctuation and spaces included: joined, they are it.

    Unlike `terms` (a word and its sub-words, for matching), each character is in exactly one word, so a
    phrase can be cut at a word (多伦多大学 is 多伦多 + 大学, never cut at the question word 多大). Only the
    dictionary's words: jieba's guessing of new words glues particles to their neighbours (歌有 of 的歌有哪些).
    """
    return list(_jieba().cut(fold(text), HMM=False))


def terms(text: str) -> list[str]:
    """Return the case-folded search terms of `fold(text)`: jieba words (and their sub-words), English words whole."""
    words = _jieba().cut_for_search(fold(text))
    return [word.casefold() for word in (w.strip() for w in words) if word and _WORD.search(word)]


def content_terms(question: str) -> list[str]:
    """Return the distinct search terms of a question that say what it is about (question words left out).

    Single Chinese characters are left out too when longer terms remain: they are mostly pieces of
    words jieba did not know (款 and 账 of 报销款多久到账), which documents write in other words; so are
    the two-character words it makes up by gluing a particle to its neighbour (单在 of 报销单在…), and the
    多重 that asks for a weight (有多重？).
    """
    question = ASKING_WEIGHT_WORD.sub(" ", question)
    found = [t for t in dict.fromkeys(terms(question)) if t not in QUESTION_WORDS and not ASKING.search(t)]
    words = [t for t in found if (len(t) > 1 or not CJK_CHAR.match(t)) and not _glued(t)]
    return words or found


def asked_fields(question: str) -> list[str]:
    """Return the names of the fields that hold what `question` asks for (重量 for 星河X1 有多重？), if any."""
    return [name for asks, names in ASKED_FIELDS if asks.search(question) for name in names]


def whole_terms(found: Sequence[str]) -> list[str]:
    """Return the terms of `found` that are no sub-word jieba also made of another (笔记本电脑, not 笔记本).

    Only Chinese terms are sub-words: an English word inside another (art, start) is a word of its own.
    """
    return [
        t for t in found if not (CJK_CHAR.search(t) and any(t != other and t in other for other in found))
    ]


def _glued(term: str) -> bool:
    """Return whether a term is two characters jieba glued together: not a word it knows, one a particle."""
    return len(term) == 2 and bool(GLUE_PARTICLES.intersection(term)) and term not in _jieba().dt.FREQ


def indexed_text(text: str) -> str:
    """Return `text` as the space-separated terms stored in the FTS5 table."""
    return " ".join(terms(text))


def match_expression(query: str) -> str | None:
    """Return an FTS5 MATCH expression that matches any term of `query`, or None if it has none."""
    unique = dict.fromkeys(terms(query))
    if not unique:
        return None
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in unique)


# The Latin letters whose accents FTS5's unicode61 tokenizer drops (remove_diacritics=1) end here.
_LATIN_END = 0x250


def fts_tokens(indexed: str) -> list[str]:
    """Return the tokens SQLite's FTS5 (unicode61) makes of `indexed` text: runs of letters, digits and
    private-use characters, Latin accents removed.

    The PostgreSQL store keeps these tokens, so that its BM25 counts term frequencies, lengths and
    document frequencies as FTS5 does and its scores equal the SQLite store's.
    """
    tokens, current = [], []
    for char in indexed:
        category = unicodedata.category(char)
        if category[0] in "LN" or category == "Co":
            if ord(char) < _LATIN_END and not char.isascii():
                char = "".join(c for c in unicodedata.normalize("NFD", char) if not unicodedata.combining(c))
            current.append(char.lower())
        elif current:
            tokens.append("".join(current))
            current = []
    if current:
        tokens.append("".join(current))
    return tokens


def expression_terms(expression: str) -> list[str]:
    """Return the terms of a `match_expression` (each quoted phrase, unquoted), in order."""
    return [phrase.replace('""', '"') for phrase in re.findall(r'"((?:[^"]|"")*)"', expression)]
