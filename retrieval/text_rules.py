"""The text rules every package shares: CJK character ranges, folding, the words a question asks with,
the "name: value" lines of a table row, and sentence splitting.

One definition of each, so the loaders, the lexical index, answerability, the follow-up rules, the
extractive reader and fine-tuning's metrics read Chinese and English text the same way.

Sentences (`split_sentences`): Chinese 。！？ and line ends, English . ! ? before a new sentence; a
markdown table row becomes "header: cell" pairs and a record's "name: value" lines (a CSV, Excel or Word
table row as the loaders write it, `field_lines`) one sentence; a line that opens with a short label,
年假：…, lends it to its later sentences; a sentence longer than `max_chars` is cut at its commas.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
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
幾年 几天 幾天 称为 稱為 叫 叫做 所 时 時 后 後 中 上 下 多贵 多貴
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

# A question that asks for a weight or a price need not name the field that holds it in a table ("重量:
# 2.1 kg", "价格: 2999"): 星河X1 有多重？ shares only 星河X1 with the row that answers it, and more with the
# product's description. Each kind: what asks for it, and the names of its field (`Retriever` searches
# the ones some chunk holds as terms of the question). 多重 asks only at a question's end (有多重？多重呢？):
# before another word it is a word (多重签证) or part of one (有多重要).
_WEIGHT_WORD = rf"多重(?=$|[^{CJK_IDEOGRAPHS}]|[呢啊呀吗嗎])"
ASKS_WEIGHT = re.compile(rf"{_WEIGHT_WORD}|重多少|多少(?:公斤|千克|克|斤)|how heavy|weigh", re.I)
ASKED_FIELDS = ((ASKS_WEIGHT, ("重量", "weight")), (re.compile(r"多少[钱錢]|多[贵貴]"), ("价格",)))
# 多重 asking for a weight is no term of what the question is about (no passage says 多重 for a weight).
ASKING_WEIGHT_WORD = re.compile(_WEIGHT_WORD)

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


# --- table rows and records, as the loaders write them and the reader reads them ----------------------

# A table row or a record (CSV, Excel, JSON, and the tables of Word, PDF, HTML, Markdown and slides) is
# stored as "name: value" lines (`ingestion/loaders`); `split_sentences` reads such lines back as one
# sentence ("参数: 重量，规格: 2.1 kg"), so both sides take the format from here.
FIELD_SEPARATOR = ": "
# A line `field_lines` wrote: a name of at most 40 characters without a colon, the separator, a value.
FIELD_LINE = re.compile(rf"^[^\s:：][^:：]{{0,39}}{FIELD_SEPARATOR}\S")


def field_lines(pairs: Iterable[tuple[str, str]]) -> str:
    """Return "name: value" lines for the pairs with a value (a value without a name stands alone)."""
    return "\n".join(f"{name}{FIELD_SEPARATOR}{value}" if name else value for name, value in pairs if value)


# --- sentences -----------------------------------------------------------------------------------------

_HEADING = re.compile(r"^\s{0,3}#{1,6}(\s|$)")
_LIST_MARK = re.compile(
    r"^\s*(?:[-*+•·]\s+|\d{1,3}[.)]\s+|\d{1,3}、|[（(][一二三四五六七八九十\d]{1,3}[)）]|[一二三四五六七八九十]{1,3}、)"
)
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
# A sentence ends at Chinese 。！？ (plus closing quotes), or at English . ! ? followed by a space and
# something other than a lowercase letter, so "e.g. the" and "3.5" stay whole. A ；joins the parallel
# clauses of one sentence, such as the tiers of a rule (满 1 年…10 天；满 5 年…12 天), which answer together.
_SENTENCE = re.compile(
    r"\S.*?(?:[。！？]+[”’」』）)\"']*|[.!?]+[”’\"')]*(?=\s+[^\sa-z])|$)",
)
_CLAUSE_END = re.compile(r"(?<=[，,、：:；;])")
# A line that opens with a short Chinese label and a colon ("年假：员工累计工作满 1 年后……") is about that
# label throughout; a colon before a quotation ("他说：“……”") introduces speech, not a label.
_LABEL = re.compile(r"([^\s：:，,。；;！？!?「“\"'『(（]{1,6})\s*[：:]\s*(?![「“\"'『])\S")
_EMPHASIS = re.compile(r"\*\*|__|`")
# The row of a two-column key-value table ("参数: 重量，规格: 2.1 kg"), whose first header names no value.
_KEY_VALUE_ROW = re.compile(
    r"^(参数|項目|项目|名称|名稱|指标|指標|属性|屬性|字段|欄位|配置|规格项|規格項|parameter|item|name|field|property"
    r"|attribute|key|spec|specification)\s*[:：]\s*([^:：，,]{1,20}?)\s*[，,]\s*[^:：，,]{1,12}\s*[:：]\s*(.+)$",
    re.I,
)


def split_sentences(text: str, max_chars: int = 240) -> list[str]:
    """Return the readable sentences of a chunk, in order, without headings, list marks and empty fragments."""
    sentences: list[str] = []
    for line in _lines(text):
        line = _key_value(line)
        label = _label(line)
        for match in _SENTENCE.finditer(line):
            sentence = match.group().strip()
            if not any(c.isalnum() for c in sentence):
                continue
            if label and match.start() > 0 and label not in sentence and not _label(sentence):
                sentence = f"{label}：{sentence}"
            sentences.extend(_pieces(sentence, max_chars))
    return sentences


def _key_value(line: str) -> str:
    """Return a two-field record of a key-value table as "key：value" ("参数: 重量，规格: 2.1 kg" → "重量：2.1 kg").

    Such a table's headers (参数/规格, Parameter/Value) say nothing; its rows read as the key and its value.
    """
    found = _KEY_VALUE_ROW.match(line)
    if not found or re.search(r"[:：]", found.group(3)):
        return line
    key, value = found.group(2).strip(), found.group(3).strip()
    return f"{key}：{value}" if CJK_CHAR.search(key + value) else f"{key}: {value}"


def _label(line: str) -> str | None:
    """Return the Chinese label a line opens with ("年假" of "年假：员工……"), or None."""
    found = _LABEL.match(line)
    return found.group(1) if found and CJK_CHAR.search(found.group(1)) else None


def _lines(text: str) -> Iterator[str]:
    """Yield the text's logical lines: headings dropped, list marks removed, wrapped English lines joined."""
    header: list[str] | None = None
    pending = ""
    for raw in _EMPHASIS.sub("", text).splitlines():
        line = raw.strip()
        if line.startswith("|") or _TABLE_RULE.match(line):
            if pending:
                yield pending
                pending = ""
            if _TABLE_RULE.match(line):
                continue
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if header is None:
                header = cells
                continue
            yield _table_row(header, cells)
            continue
        header = None
        if not line or _HEADING.match(line):
            if pending:
                yield pending
            pending = ""
            continue
        line = _LIST_MARK.sub("", line, count=1)
        # "name: value" lines (a table row or record) are read as one sentence.
        field, in_record = FIELD_LINE.match(line), FIELD_LINE.match(pending)
        if field and in_record:
            pending = _joined_fields(pending, line)
        elif pending and not field and not in_record and _continues(pending, raw):
            pending = f"{pending} {line}"
        else:
            if pending:
                yield pending
            pending = line
    if pending:
        yield pending


def _joined_fields(record: str, field: str) -> str:
    """Return a record's "name: value" lines so far with one more, as one sentence ("假期: 春节，天数: 8")."""
    if re.search(r"[。！？.!?]$", record):
        return record + (" " if record[-1].isascii() else "") + field
    return record + ("，" if CJK_CHAR.search(record + field) else ", ") + field


def _continues(previous: str, raw_next: str) -> bool:
    """Return whether a line carries on the previous one's English sentence (a hard-wrapped paragraph)."""
    following = raw_next.strip()
    return (
        re.search(r"[A-Za-z0-9,;:(\-–]$", previous) is not None
        and re.match(r"[A-Za-z0-9(]", following) is not None
        and not _LIST_MARK.match(following)
    )


def _table_row(header: list[str], cells: list[str]) -> str:
    """Return a table row as "header: cell" pairs, so the row reads on its own."""
    separator = "，" if CJK_CHAR.search("".join(header + cells)) else ", "
    colon = "：" if separator == "，" else ": "
    pairs = [
        f"{name}{colon}{cell}" if name else cell for name, cell in zip(header, cells, strict=False) if cell
    ]
    return separator.join(pairs)


def _pieces(sentence: str, max_chars: int) -> list[str]:
    """Return the sentence, or pieces of at most `max_chars` cut at its commas when it is longer."""
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    current = ""
    for clause in _CLAUSE_END.split(sentence):
        while len(clause) > max_chars:  # no comma for too long: cut hard
            if current:
                pieces.append(current)
                current = ""
            pieces.append(clause[:max_chars])
            clause = clause[max_chars:]
        if len(current) + len(clause) > max_chars:
            pieces.append(current)
            current = ""
        current += clause
    if current:
        pieces.append(current)
    # A piece that stops mid-sentence says so instead of ending on a comma.
    return [p.strip().rstrip("，,、：:；;") + "…" for p in pieces[:-1]] + [pieces[-1].strip()]
