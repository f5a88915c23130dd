"""Lexical matching: jieba-segmented terms for SQLite FTS5, whose built-in BM25 ranks them.

The FTS5 table lives in the knowledge base's SQLite file and is written in the same transaction as
the chunks, so the lexical index is updated incrementally and can never disagree with the store.

Traditional Chinese is folded to Simplified (OpenCC) before segmenting: jieba's dictionary is Simplified
and cuts Traditional text into made-up words, and a question typed in one script then matches documents
written in the other. `LEXICAL_VERSION` names how terms are made; a store whose terms were made
another way remakes them from its chunks once (`retrieval/store.py`).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from functools import cache

from retrieval.cjk import CJK_IDEOGRAPHS

# A term worth indexing holds at least one letter or digit (CJK included); punctuation is dropped.
_WORD = re.compile(r"\w")
_CJK_CHAR = re.compile(f"[{CJK_IDEOGRAPHS}]")


# Version of the way `terms` cuts text; 2 folds Traditional Chinese to Simplified first; 3 knows `_WORDS`.
LEXICAL_VERSION = 3
# Workplace words jieba's dictionary lacks: it cuts 年假 into 年 + 假, so that every 假 (放假, 病假) matched
# a question about annual leave as well as 年假 itself did.
_WORDS = ("年假", "带薪年假", "陪产假", "餐补")


@cache
def _to_simplified():
    import opencc

    return opencc.OpenCC("t2s").convert


@cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    for word in _WORDS:
        jieba.add_word(word)
    return jieba


def fold(text: str) -> str:
    """Return `text` as terms are cut from it: NFKC-normalised, Traditional Chinese made Simplified.

    NFKC folds full-width letters and digits (`ＡＰＩ２` → `API2`) so they match their ASCII forms, and
    Traditional characters become Simplified (臺灣 → 台湾), so either script matches the other.
    """
    return _to_simplified()(unicodedata.normalize("NFKC", text))


def terms(text: str) -> list[str]:
    """Return the case-folded search terms of `fold(text)`: jieba words (and their sub-words), English words whole."""
    words = _jieba().cut_for_search(fold(text))
    return [word.casefold() for word in (w.strip() for w in words) if word and _WORD.search(word)]


# Words that say what kind of answer is wanted, or hold a sentence together, rather than what it is
# about: Chinese question words and particles (Simplified and Traditional) and English function words.
# They are left out of a question's content terms, whose coverage by a chunk tells whether it answers.
_QUESTION_WORD_TEXT = """
什么 什麼 甚麼 啥 哪 哪里 哪裡 哪儿 哪兒 哪个 哪個 哪些 哪一 哪位 哪年 哪一年 哪天 哪国 哪國 谁 誰 几 幾 多少 多久 多长 多長 多大 多高 多远 多遠 如何 怎么 怎麼 怎样
怎樣 怎么样 怎麼樣 为什么 為什麼 为何 為何 何时 何時 何处 何處 何人 何地 何种 何種 什么样 什麼樣 是否 吗 嗎 呢 吧 啊 的 了 是 在 有 和 与 與 及 或 被 把 给 給 对
對 于 於 由 从 從 到 为 為 以 之 其 这 這 那 该 該 个 個 些 一 我 你 他 她 它 们 們 请问 請問 可以 能 会 會 需要 要 应 應 应该 應該 哪种 哪種 几个 幾個 几年
幾年 几天 幾天 称为 稱為 叫 叫做 所 时 時 后 後 中 上 下 a an the is are was were be been do does did to of in on at for
by with from and or not can could i we you my our your it its this that these those what which who
whom whose when where why how much many long should would will shall may must have has had there
their they me us if as into than then please answer detail details explain tell describe briefly
"""
_QUESTION_WORDS = frozenset(_QUESTION_WORD_TEXT.split())


# jieba glues question words to their neighbours (哪一種關, 從什麼): a term holding one asks, not tells.
_ASKING = re.compile(
    r"哪|什[么麼]|甚[么麼]|[谁誰]|[为為]何|何[时時处處种種]|如何|多少|[几幾][个個年天月次位种種号號]"
)


def content_terms(question: str) -> list[str]:
    """Return the distinct search terms of a question that say what it is about (question words left out).

    Single Chinese characters are left out too when longer terms remain: they are mostly pieces of
    words jieba did not know (款 and 账 of 报销款多久到账), which documents write in other words; so are
    the two-character words it makes up by gluing a particle to its neighbour (单在 of 报销单在…).
    """
    found = [t for t in dict.fromkeys(terms(question)) if t not in _QUESTION_WORDS and not _ASKING.search(t)]
    words = [t for t in found if (len(t) > 1 or not _CJK_CHAR.match(t)) and not _glued(t)]
    return words or found


# Particles jieba's new-word guessing glues to the character before or after them (报销单在 → 单在).
_GLUE = frozenset("在要是的了着过吗呢把被给和与與及或都也就还還又才")


def _glued(term: str) -> bool:
    """Return whether a term is two characters jieba glued together: not a word it knows, one a particle."""
    return len(term) == 2 and bool(_GLUE.intersection(term)) and term not in _jieba().dt.FREQ


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
