"""The kind of value a question asks for (a duration, money, a date…) and where a sentence holds it.

`answer_type` gives the reader a feature (does this sentence hold the kind of value asked for?);
`answer_spans` marks the words of an answer sentence that answer: the duration for 几天/多久/how long, the
money for 多少钱, the date for 哪一年/什么时候, the number with its unit for 几/多少, or the value of a
"name：value" field whose name the question holds (重量：2.1 kg for 星河X1 重量多少？).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from retrieval.text_rules import CJK_RUN, fold

_NUMBER = r"(?:\d+(?:\.\d+)?|[一二两兩三四五六七八九十百千万萬半]+)"
# The kinds of value a question asks for, each as (its name, what asks for it, what holds it), in Simplified and
# Traditional Chinese and English; the first kind whose question pattern matches is the one asked for.
_ANSWER_TYPES = [
    (  # a duration
        "duration",
        re.compile(
            r"多久|多长时间|多長時間|几[天年周]|幾[天年週]|几个?(?:小时|月|周|星期|工作日)|幾個?(?:小時|月|週|星期|工作日)"
            r"|how long|how many (?:days|hours|weeks|months|years)",
            re.I,
        ),
        re.compile(  # not a date: 3 月 31 日 and 2025 年 name a day and a year, 3 个月 and 31 天 last
            r"(?<![月\d.一二两兩三四五六七八九十百千万萬半])(?<!月\s)(?!\d{4}\s*年)"
            + _NUMBER
            + r"\s*(?:(?:个|個)\s*月|(?:个|個)?\s*(?:工作日|天|日|小时|小時|周|週|星期|年|分钟|分鐘"
            r"|(?:working |business )?days?|hours?|weeks?|months?|years?))",
            re.I,
        ),
    ),
    (  # money
        "money",
        re.compile(r"多少钱|多少錢|多少元|费用是多少|費用是多少|标准是多少|標準是多少|how much", re.I),
        re.compile(_NUMBER + r"\s*(?:元|块|塊|万元|萬元|美元|RMB|CNY|USD)|[¥$￥]\s*\d", re.I),
    ),
    (  # a date or time
        "date",
        re.compile(
            r"什么时候|什麼時候|甚麼時候|何时|何時|哪一?年|哪一?天|哪个月|哪個月|几月|幾月|几号|幾號|何年|when|what year",
            re.I,
        ),
        re.compile(
            r"\d{1,4}\s*[年月日号號]|[一二三四五六七八九十〇零]+[年月日]|世纪|世紀|年代|\b1\d{3}\b|\b20\d{2}\b"
        ),
    ),
    (  # a count
        "count",
        re.compile(r"几|幾|多少|how many", re.I),
        re.compile(_NUMBER),
    ),
    (  # a place
        "place",
        re.compile(
            r"哪里|哪裡|哪儿|哪兒|何处|何處|何地|哪个(?:国家|城市|地方|省)|哪個(?:國家|城市|地方|省)|哪座|where",
            re.I,
        ),
        re.compile(r"[省市县縣州国國城岛島山河湖区區镇鎮村港洲]|位于|位於|地址|located|\bin [A-Z]"),
    ),
    (  # a person
        "person",
        re.compile(r"谁|誰|何人|哪位|\bwho\b", re.I),
        re.compile(
            r"先生|女士|老师|老師|教授|博士|经理|經理|主任|总统|總統|皇帝|国王|國王|作者|导演|導演|创始人|創始人"
            r"|联系|聯繫|[A-Z][a-z]+ [A-Z][a-z]+"
        ),
    ),
]


def answer_type(question: str) -> re.Pattern[str] | None:
    """Return a pattern for the kind of value `question` asks for (a duration, money, a count), or None.

    Classic answer-type matching: embeddings of a small model rank "who to ask about reimbursements"
    close to "reimbursement takes 3 working days" for 报销需要多久到账; the sentence holding a duration wins.
    """
    asked = asked_kind(question)
    return asked[1] if asked else None


def asked_kind(question: str) -> tuple[str, re.Pattern[str]] | None:
    """Return the name of the kind of value `question` asks for ("duration", "money", …) and its pattern."""
    for kind, asks, holds in _ANSWER_TYPES:
        if asks.search(question):
            return kind, holds
    return None


@dataclass(frozen=True)
class Span:
    """The words of an answer that answer the question: characters [start, end) of the answer text."""

    start: int
    end: int
    text: str


# Kinds whose values a pattern finds reliably enough to mark; a place or a person is left unmarked.
_MARKED = ("duration", "money", "date", "count")
# A counted number with its unit or measure word (2.1 kg, 16 路, 8 米), for 几/多少: not a digit of a code (X1,
# XH-X1, 4K), and a Chinese numeral only with its unit (the 一 of 一体化 and the 半 of 半径 count nothing).
_MEASURE = (
    r"\s*(?:%|％|°C|[个個人名位次件台项項种種所座条條家岁歲倍层層路米年月日天元块塊]"
    r"|(?:kg|mm|cm|km|GB|MB|TB|Hz|W|m|g)(?![A-Za-z]))"
)
_COUNTED = re.compile(
    rf"(?<![A-Za-z0-9.])\d+(?:\.\d+)?(?:{_MEASURE})?(?![A-Za-z])|[一二两兩三四五六七八九十百千万萬]+半?{_MEASURE}"
)
# A "name：value" field of a record or labelled sentence; a value ends at the next field's comma.
_FIELD = re.compile(
    r"(?:^|(?<=[，,；;]))\s*([^：:，,。；;!?！？\s][^：:，,。；;!?！？]{0,11}?)\s*[：:]\s*([^，,；;。]+)"
)
_MAX_FIELD_VALUE = 30  # longer values are prose, in which the kind of value asked for is marked instead
_MAX_MARKS = 3
# The unit a duration question names (几天, 多少个月, how many days) and the words that hold it.
_UNIT_ASKED = re.compile(
    r"(?:几|幾|多少)\s*(?:个|個)?\s*(工作日|天|年|周|週|星期|月|小时|小時)|how many (working day|day|year|week|month|hour)",
    re.I,
)
_UNITS = {
    "工作日": ("工作日", "working day", "business day"),
    "working day": ("工作日", "working day", "business day"),
    "天": ("天", "日", "day"),
    "day": ("天", "日", "day"),
    "年": ("年", "year"),
    "year": ("年", "year"),
    "周": ("周", "週", "星期", "week"),
    "週": ("周", "週", "星期", "week"),
    "星期": ("周", "週", "星期", "week"),
    "week": ("周", "週", "星期", "week"),
    "月": ("月", "month"),
    "month": ("月", "month"),
    "小时": ("小时", "小時", "hour"),
    "小時": ("小时", "小時", "hour"),
    "hour": ("小时", "小時", "hour"),
}  # more matches than this: only the one nearest the question's words
_WORD = re.compile(r"[a-z0-9]{2,}")
_BARE = re.compile(r"[\d.]+")  # a number without its unit


def answer_spans(question: str, sentence: str) -> list[tuple[int, int]]:
    """Return the [start, end) character ranges of `sentence` that answer `question`, in order; [] for none.

    In a record (every part a "name：value" field), a field whose name the question holds gives its value (重量：2.1 kg → 2.1 kg); otherwise the values of
    the kind asked for (durations for 几天, …), all of them up to three (the tiers of a rule), else the one
    nearest the question's words.
    """
    folded_question = fold(question).casefold()
    folded = fold(sentence).casefold()  # folding keeps length, so offsets hold in the sentence
    if len(folded) != len(sentence):
        folded = sentence.casefold()
    fields = list(_FIELD.finditer(folded))
    parts = [p for p in re.split(r"[，,；;]", folded.rstrip(" 。.")) if p.strip()]
    if fields and len(fields) == len(parts):  # a record: every part is a "name：value" field
        named = [
            (m.start(2), m.start(2) + len(m.group(2).rstrip(" 。.!！?？")))
            for m in fields
            if _names(m.group(1).strip(), folded_question) and len(m.group(2)) <= _MAX_FIELD_VALUE
        ]
        if named:
            return named
    asked = asked_kind(question)
    if asked is None or asked[0] not in _MARKED:
        return []
    pattern = _COUNTED if asked[0] == "count" else asked[1]
    found = [(m.start(), m.end()) for m in pattern.finditer(sentence) if m.group().strip()]
    found = [
        (start + len(sentence[start:end]) - len(sentence[start:end].lstrip()), end) for start, end in found
    ]
    unit = _UNIT_ASKED.search(question)
    if unit and len(found) > 1:  # 几天 asks for days: a rule's "满 5 年" is its condition, "12 天" the answer
        unit_asked = (unit.group(1) or unit.group(2)).lower()  # the Chinese or the English unit
        units = next(group for key, group in _UNITS.items() if unit_asked.startswith(key))
        found = [
            span for span in found if any(u in sentence[span[0] : span[1]].lower() for u in units)
        ] or found
    if asked[0] == "count":  # 拾音半径 8 米 answers 多少; the bare 8 of "8 麦克风阵列" counts something else
        found = [span for span in found if not _BARE.fullmatch(sentence[span[0] : span[1]])] or found
    if len(found) <= _MAX_MARKS:
        return found
    anchors = _anchors(folded_question, folded)
    if not anchors:
        return found[:1]
    return [min(found, key=lambda span: min(_distance(span, anchor) for anchor in anchors))]


def _names(name: str, question: str) -> bool:
    """Return whether the question names a field: most of its character pairs (调休上班日期 in 哪天调休上班),
    or the count it is (天数 for 放几天, 人数 for 多少个人)."""
    if len(name) < 2:
        return False
    if name[-1] in "数數" and re.search(rf"(?:几|幾|多少)\s*(?:个|個)?\s*{re.escape(name[:-1])}", question):
        return True
    pairs = [name[i : i + 2] for i in range(len(name) - 1)]
    return name in question or sum(pair in question for pair in pairs) / len(pairs) >= 0.5


def _anchors(question: str, sentence: str) -> list[tuple[int, int]]:
    """Return where the question's words (Chinese character pairs, English words) occur in the sentence."""
    pieces = {run[i : i + 2] for run in CJK_RUN.findall(question) for i in range(max(len(run) - 1, 1))}
    pieces |= set(_WORD.findall(question))
    return [m.span() for piece in pieces for m in re.finditer(re.escape(piece), sentence)]


def _distance(span: tuple[int, int], anchor: tuple[int, int]) -> int:
    """Return how many characters lie between a value and a word of the question (0 when they touch).

    Counted from the word's end for a value after it: 158 天 of "婚假 13 天（含法定 3 天），产假 158 天" is
    产假's, though 3 天 ends as near its start.
    """
    if span[0] >= anchor[1]:
        return span[0] - anchor[1]
    return max(anchor[0] - span[1], 0)
