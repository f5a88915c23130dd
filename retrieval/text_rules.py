"""The text rules every package shares: CJK character ranges, folding, and the words a question asks with.

One definition of each, so the lexical index, answerability, the follow-up rules, the extractive reader
and fine-tuning's metrics read Chinese and English text the same way (docs/architecture.md).
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache

# --- character ranges, as bodies of a regex character class (`f"[{…}]"`) ------------------------------

# CJK ideographs: extension A, the unified block, compatibility ideographs.
CJK_IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# The CJK symbols and punctuation block, and half- and full-width forms (，。：！ and full-width letters).
CJK_PUNCTUATION = "\u3000-\u303f\uff00-\uffef"
# Everything written in East Asian scripts: the above, radicals, kana, bopomofo, Hangul, and the
# ideographs of extension B and later (outside the Basic Multilingual Plane).
EAST_ASIAN = (
    CJK_IDEOGRAPHS
    + CJK_PUNCTUATION
    + "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3130-\u318f\uac00-\ud7af\U00020000-\U0003134f"
)
CJK_CHAR = re.compile(f"[{CJK_IDEOGRAPHS}]")  # one Chinese character
CJK_RUN = re.compile(f"[{CJK_IDEOGRAPHS}]+")  # a run of Chinese characters


# --- folding ---------------------------------------------------------------------------------------


@cache
def _to_simplified():
    import opencc

    return opencc.OpenCC("t2s").convert


def fold(text: str) -> str:
    """Return `text` as terms are cut from it: NFKC-normalised, Traditional Chinese made Simplified.

    NFKC folds full-width letters and digits (`ＡＰＩ２` → `API2`) so they match their ASCII forms, and
    Traditional characters become Simplified (臺灣 → 台湾), so either script matches the other.
    """
    return _to_simplified()(unicodedata.normalize("NFKC", text))


# --- the words a question asks with ------------------------------------------------------------------

# English words that say nothing about what is asked: articles, pronouns, auxiliaries, prepositions and
# question words. The extractive reader without a calibration leaves them out of the words it matches.
_ENGLISH_FUNCTION_WORD_TEXT = (
    "a an the is are was were be been do does did to of in on at for by with from and or not can could "
    "i we you my our your it its this that these those what which who whom when where why how much many "
    "long should would will shall may must have has had there their they me us if as into than then"
)
ENGLISH_FUNCTION_WORDS = frozenset(_ENGLISH_FUNCTION_WORD_TEXT.split())
# Chinese question words and particles (Simplified and Traditional).
_CHINESE_QUESTION_WORD_TEXT = """
什么 什麼 甚麼 啥 哪 哪里 哪裡 哪儿 哪兒 哪个 哪個 哪些 哪一 哪位 哪年 哪一年 哪天 哪国 哪國 谁 誰 几 幾 多少 多久 多长 多長 多大 多高 多远 多遠 如何 怎么 怎麼 怎样
怎樣 怎么样 怎麼樣 为什么 為什麼 为何 為何 何时 何時 何处 何處 何人 何地 何种 何種 什么样 什麼樣 是否 吗 嗎 呢 吧 啊 的 了 是 在 有 和 与 與 及 或 被 把 给 給 对
對 于 於 由 从 從 到 为 為 以 之 其 这 這 那 该 該 个 個 些 一 我 你 他 她 它 们 們 请问 請問 可以 能 会 會 需要 要 应 應 应该 應該 哪种 哪種 几个 幾個 几年
幾年 几天 幾天 称为 稱為 叫 叫做 所 时 時 后 後 中 上 下
"""
# English words of a request rather than of its subject ("please explain in detail", "whose").
_ENGLISH_ASKING_TEXT = "whose please answer detail details explain tell describe briefly get got"
# Words that say what kind of answer is wanted, or hold a sentence together, rather than what it is
# about; a question's content terms (`retrieval.lexical.content_terms`) leave them out. The asking words
# are in this list only: the calibration-free reader's word match (ENGLISH_FUNCTION_WORDS) is kept as it
# was, since adding them there would change which sentences it picks, which no evaluation here measures.
QUESTION_WORDS = frozenset(
    [*_CHINESE_QUESTION_WORD_TEXT.split(), *ENGLISH_FUNCTION_WORDS, *_ENGLISH_ASKING_TEXT.split()]
)
# jieba glues question words to their neighbours (哪一種關, 從什麼): a term holding one asks, not tells.
ASKING = re.compile(
    r"哪|什[么麼]|甚[么麼]|[谁誰]|[为為]何|何[时時处處种種]|如何|多少|[几幾][个個年天月次位种種号號]"
)

# Two sets of Chinese function characters, for two different tests of a two-character piece:
# Particles jieba's new-word guessing glues to the character before or after them (报销单在 → 单在): a
# two-character term holding one that is not in its dictionary is no word (`content_terms`).
GLUE_PARTICLES = frozenset("在要是的了着过吗呢把被给和与與及或都也就还還又才")
# Characters of question words and grammar: a character bigram made only of them (需要, 多久, 什么, 可以)
# says nothing about what is asked, while one with a content character (到账, 会议) does (the
# calibration-free reader's bigrams, which are cut without a dictionary, so 需/要 count apart).
FUNCTION_CHARS = frozenset(
    "的了吗呢吧啊是在有和与及或要需多少久什么怎如何几哪谁可以能会这那个些一我你他她们该应请问"
)
