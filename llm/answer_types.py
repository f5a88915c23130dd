"""The kind of value a question asks for (a duration, money, a date…) and where a sentence holds it.

`holds_answer` gives the reader a feature (does this sentence hold the kind of value asked for?);
`answer_spans` marks the words of an answer sentence that answer: the duration for 几天/多久/how long, the
money for 多少钱, the date for 哪一年/什么时候, the number with its unit for 几/多少, or the value of a
"name：value" field whose name the question holds (重量：2.1 kg for 星河X1 重量多少？).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from retrieval.lexical import words
from retrieval.text_rules import ASKS_WEIGHT, CJK_RUN, fold

_NUMBER = r"(?:\d+(?:\.\d+)?|[一二两兩三四五六七八九十百千万萬半]+)"
_DURATION = re.compile(  # not a date: 3 月 31 日 and 2025 年 name a day and a year, 3 个月 and 31 天 last
    r"(?<![月\d.一二两兩三四五六七八九十百千万萬半])(?<!月\s)(?!\d{4}\s*年)"
    + _NUMBER
    + r"\s*(?:(?:个|個)\s*月|(?:个|個)?\s*(?:工作日|天|日|小时|小時|周|週|星期|年|分钟|分鐘"
    r"|(?:working |business )?days?|hours?|weeks?|months?|years?))",
    re.I,
)
# A date, as one span: 2016年3月18日, 2024 年 9 月, 1月26日（周日）.
_DAY = r"\d{1,4}\s*[日号號](?:\s*[（(](?:周|週|星期)[一二三四五六日天][)）])?"
_DATE = rf"\d{{1,4}}\s*年(?:\s*\d{{1,4}}\s*月(?:\s*{_DAY})?)?|\d{{1,4}}\s*月(?:\s*{_DAY})?|{_DAY}"
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
        _DURATION,
    ),
    (  # how long, high, far: a duration (试用期多长) or a length (线缆多长, 山多高)
        "length",
        re.compile(r"多[长長高宽寬厚深远遠]"),
        re.compile(
            _DURATION.pattern
            + r"|"
            + _NUMBER
            + r"\s*(?:米|公里|千米|厘米|毫米|km|cm|mm|m\b|meters?|metres?)",
            re.I,
        ),
    ),
    (  # a weight (星河X1 多重？ 重多少？)
        "weight",
        ASKS_WEIGHT,
        re.compile(_NUMBER + r"\s*(?:kg|KG|Kg|g|克|千克|公斤|斤|吨|噸|磅|lbs?)(?![A-Za-z])"),
    ),
    (  # money
        "money",
        re.compile(
            r"多少钱|多少錢|多少元|多贵|多貴|费用是多少|費用是多少|标准是多少|標準是多少|how much", re.I
        ),
        re.compile(_NUMBER + r"\s*(?:元|块|塊|万元|萬元|美元|RMB|CNY|USD)|[¥$￥]\s*\d", re.I),
    ),
    (  # a date or time
        "date",
        re.compile(
            r"什么时候|什麼時候|甚麼時候|何时|何時|哪一?年|哪一?天|哪个月|哪個月|几月|幾月|几号|幾號|何年|when|what year",
            re.I,
        ),
        re.compile(_DATE + r"|[一二三四五六七八九十〇零]+[年月日]|世纪|世紀|年代|\b1\d{3}\b|\b20\d{2}\b"),
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

# 电话是多少？ asks for a number that names (a phone, a code, a postcode), not one that counts: the 四位 of
# 身份证后四位 is no answer to it.
_IDENTIFIER_ASKED = re.compile(
    r"(?:电话|電話|号码|號碼|编号|編號|代码|代碼|密码|密碼|邮箱|郵箱|账号|帳號|网址|網址|内线|內線|分机|分機"
    r"|邮编|郵編|区号|區號)(?:是|为|為)?多少"
)


def holds_answer(question: str, sentence: str) -> bool:
    """Return whether `sentence` holds the kind of value `question` asks for (a duration, money, a count).

    Classic answer-type matching: embeddings of a small model rank "who to ask about reimbursements"
    close to "reimbursement takes 3 working days" for 报销需要多久到账; the sentence holding a duration wins.
    A count holds only where a value would be marked (`answer_spans`): 公司有多少员工 is not answered by the
    date and the day off of "每年3月18日为公司司庆日，全体员工放假一天".
    """
    asked = asked_kind(question)
    if asked is None:
        return False
    if asked[0] == "count":
        return bool(answer_spans(question, sentence))
    return bool(asked[1].search(sentence))


def asked_kind(question: str) -> tuple[str, re.Pattern[str]] | None:
    """Return the name of the kind of value `question` asks for ("duration", "money", …) and its pattern."""
    if _IDENTIFIER_ASKED.search(question):
        return None
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
_MARKED = ("duration", "length", "weight", "money", "date", "count")
# A counted number with its unit or measure word (2.1 kg, 16 路, 8 米), for 几/多少: not a digit of a code (X1,
# XH-X1, 4K), and a Chinese numeral only with its unit (the 一 of 一体化 and the 半 of 半径 count nothing).
_MEASURE = (
    r"\s*(?:%|％|°C|(?:平方)?公[里尺顷頃斤]|[千英][米里尺寸克]|[万萬亿億]"
    r"|[个個人名位次件台项項种種所座条條家岁歲倍层層路米年月日天元块塊间間只部本首张張辆輛届屆场場架艘枚份章节節卷册冊吨噸]"
    r"|(?:kg|mm|cm|km|GB|MB|TB|Hz|W|m|g)(?![A-Za-z]))"
)
_COUNTED = re.compile(
    rf"(?<![A-Za-z0-9.])\d+(?:\.\d+)?(?:{_MEASURE})?(?![A-Za-z])|[一二两兩三四五六七八九十百千万萬]+半?{_MEASURE}"
)
# A "name：value" field of a record or labelled sentence; a value ends at the next field's comma.
_FIELD = re.compile(
    r"(?:^|(?<=[，,；;]))\s*([^：:，,。；;!?！？\s][^：:，,。；;!?！？]{0,11}?)\s*[：:]\s*([^，,；;。]+)"
)
# The names of the fields that hold a kind of value (价格 holds the money 多少钱 asks for, 保修年限 the duration
# of 保修多久), lower case.
_KIND_FIELDS = {
    "money": ("价", "费", "钱", "金额", "price", "cost", "fee"),
    "duration": ("期限", "时长", "年限", "duration"),
    "weight": ("重量", "weight"),
}
_MAX_FIELD_VALUE = 30  # longer values are prose, in which the kind of value asked for is marked instead
# More values than this, or values in different units: only the one nearest the question's words is marked.
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
}
_WORD = re.compile(r"[a-z0-9]{2,}")
_TIME_UNIT = re.compile(r"[年月日天号號]$")
# The measure word a count question names (几个人, 多少位, 多少个麦克风) and the words that hold people.
_MEASURE_ASKED = re.compile(
    r"(?:几|幾|多少)\s*(?:个|個)?\s*([人名位台次家所座件种種])|(?:几|幾|多少)\s*(个|個)"
)
_PEOPLE = ("人", "名", "位")
_NEAR = 10  # characters between a count and the question's nearest word, at most
_CLAUSE_BREAK = re.compile(r"[，,；;。!?！？]")
_LISTING = re.compile(r"[\s、和及至到~\-–。.]")  # what lies between the values of a list or a range
_BARE = re.compile(r"[\d.]+")  # a number without its unit
_NOT_UNIT = re.compile(rf"[(（][^)）]*[)）]|{_NUMBER}|\s")  # a weekday in brackets, the numbers, spaces


def answer_spans(question: str, sentence: str) -> list[tuple[int, int]]:
    """Return the [start, end) character ranges of `sentence` that answer `question`, in order; [] for none.

    In a record (every part a "name：value" field), a field whose name the question holds gives its value
    (重量：2.1 kg → 2.1 kg), as does one whose name it touches and whose value is wholly of the kind asked
    for (调休上班日期 for 春节哪天调休？). Otherwise the values of the kind asked for (durations for 几天, a
    whole date for 什么时候, the people for 几个人), all of them up to three in one unit (the tiers of a
    rule), else the one nearest the question's words. A count asked without a unit (公司有多少员工？) is a
    number in the clause of a question's word and near it, never a date or a length of time.
    """
    folded_question = fold(question).casefold()
    folded = fold(sentence).casefold()  # folding keeps length, so offsets hold in the sentence
    if len(folded) != len(sentence):
        folded = sentence.casefold()
    asked = asked_kind(question)
    fields = list(_FIELD.finditer(folded))
    parts = [p for p in re.split(r"[，,；;]", folded.rstrip(" 。.")) if p.strip()]
    if fields and len(fields) == len(parts):  # a record: every part is a "name：value" field
        named = [
            (m.start(2), m.start(2) + len(m.group(2).rstrip(" 。.!！?？")))
            for m in fields
            if len(m.group(2)) <= _MAX_FIELD_VALUE
            and (
                _names(m.group(1).strip(), folded_question)
                or (asked and _touches(m.group(1), folded_question) and _wholly(asked[1], m.group(2)))
                or (asked and any(word in m.group(1) for word in _KIND_FIELDS.get(asked[0], ())))
            )
        ]
        if named:
            return named
    if asked is None or asked[0] not in _MARKED:
        return []
    pattern = _COUNTED if asked[0] == "count" else asked[1]
    found = [(m.start(), m.end()) for m in pattern.finditer(sentence) if m.group().strip()]
    found = [
        (start + len(sentence[start:end]) - len(sentence[start:end].lstrip()), end) for start, end in found
    ]
    unit = _UNIT_ASKED.search(question)
    measure = _measure_asked(question)
    if unit and len(found) > 1:  # 几天 asks for days: a rule's "满 5 年" is its condition, "12 天" the answer
        unit_asked = (unit.group(1) or unit.group(2)).lower()  # the Chinese or the English unit
        units = next(group for key, group in _UNITS.items() if unit_asked.startswith(key))
        found = [span for span in found if _holds_unit(sentence, span, units)] or found
    elif measure and asked[0] == "count":  # 几个人 counts people: not the 16 路 of the video screens
        word = measure.group(1) or measure.group(2)
        units = _PEOPLE if word in _PEOPLE else (word,)
        found = [span for span in found if _holds_unit(sentence, span, units)]
    anchors = _anchors(folded_question, folded)
    if asked[0] == "count":  # 拾音半径 8 米 answers 多少; the bare 8 of "8 麦克风阵列" counts something else
        found = [span for span in found if not _BARE.fullmatch(sentence[span[0] : span[1]])] or found
        # 多少员工: a number with its measure by the question's words, not a date
        if not unit and not measure:
            found = [
                span
                for span in found
                if not _TIME_UNIT.search(sentence[span[0] : span[1]])
                and not _BARE.fullmatch(sentence[span[0] : span[1]])
                and any(_distance(span, anchor) <= _NEAR for anchor in _same_clause(folded, span, anchors))
            ]
    if len(found) <= _MAX_MARKS and len({_unit_of(sentence[start:end]) for start, end in found}) <= 1:
        return found  # the tiers of a rule (10 天, 12 天, 15 天)
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


@functools.lru_cache(maxsize=256)  # asked once for each sentence of a question's hits
def _measure_asked(question: str) -> re.Match[str] | None:
    """Return where a count question names its measure word (人 of 几个人, 位 of 几位), or None: not the 人
    of 多少人口, which jieba keeps in a word of its own."""
    folded = fold(question)
    measure = _MEASURE_ASKED.search(folded)
    if measure is None:
        return None
    at = measure.start(1) if measure.group(1) else measure.start(2)
    start = 0
    for word in words(folded):
        if start <= at < start + len(word):
            return measure if word[-1] == folded[at] and (len(word) == 1 or word[0] in "几幾多") else None
        start += len(word)
    return None


def _holds_unit(sentence: str, span: tuple[int, int], units: tuple[str, ...]) -> bool:
    """Return whether the value at `span` of `sentence` is in one of `units` (天 of 12 天, 人 of 426 人)."""
    return any(u in sentence[span[0] : span[1]].lower() for u in units)


def _same_clause(
    sentence: str, span: tuple[int, int], anchors: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Return the anchors with no clause break between them and the value at `span` (350 元 of 其他城市 is
    not 餐补's in "其他城市不超过 350 元；出差餐补每天 100 元")."""
    return [
        anchor
        for anchor in anchors
        if not _CLAUSE_BREAK.search(sentence[min(span[1], anchor[1]) : max(span[0], anchor[0])])
    ]


def _wholly(kind: re.Pattern[str], value: str) -> bool:
    """Return whether a field's value is values of a kind and nothing else (1月26日（周日）、2月8日（周六））."""
    return bool(kind.search(value)) and not _LISTING.sub("", kind.sub("", value))


def _touches(name: str, question: str) -> bool:
    """Return whether the question holds a character pair of a field's name (调休 of 调休上班日期)."""
    name = name.strip()
    return any(name[i : i + 2] in question for i in range(len(name) - 1))


def _unit_of(value: str) -> str:
    """Return the units of a value without its numbers (人 of 426 人, 年月日 of 2016年3月18日 (周五))."""
    return _NOT_UNIT.sub("", value)


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
