"""The extractive reader answers from the retrieved sentences, judged with the real bundled e5 model."""

from __future__ import annotations

import re

import pytest
from hits import search_hit

from llm.answer_types import asked_kind, holds_answer
from llm.config import ExtractiveConfig
from llm.extractive import READER_FEATURES, ExtractiveReader
from retrieval import SearchHit
from retrieval.text_rules import split_sentences

EXPENSE = (
    "## 报销流程\n\n"
    "差旅费用应在出差结束后 30 天内提交报销申请，逾期不予受理。"
    "报销单经部门经理审批后转财务部复核，复核一般需要 3 个工作日。"
    "复核通过的报销款在每周四统一付款，通常提交后 10 个工作日内到账。"
)
LEAVE = (
    "年假：员工累计工作满 1 年后享受带薪年假。累计工作满 1 年不满 5 年的，每年 10 天；"
    "满 5 年不满 10 年的，每年 12 天；满 10 年及以上的，每年 15 天。"
    "当年未休完的年假可顺延至次年 3 月 31 日，逾期作废，不折算现金。"
)
BACKUP = (
    "### 数据备份\n\n"
    "生产数据库每天凌晨 2 点自动全量备份，每小时做一次增量备份。备份文件保存在异地机房，保留 30 天。"
    "如需恢复误删的数据，请在星河OA中提交“数据恢复”工单，注明时间点和数据范围。"
)
CLAIMS = (
    "## Submitting a claim\n\n"
    '1. Submit the claim in the Xinghe OA system under "Expense Claim" within 30 days of returning.\n'
    "2. Attach a receipt for every single expense above USD 25.\n"
    "3. Your manager approves first, then Finance reviews within 5 working days.\n"
    "4. Approved claims are paid to your salary account in the next weekly payment run, every Thursday.\n"
)
MEALS = (
    "Staff receive a per diem of USD 60 per travel day for meals and incidentals; no receipts are needed\n"
    "for the per diem. Client dinners are claimed separately and must list every guest and their company."
)


def make_hits(*texts: str) -> list[SearchHit]:
    """Return hits ranked in the order given."""
    return [search_hit(i, text) for i, text in enumerate(texts)]


def sentences_of(answer: str) -> list[tuple[str, int]]:
    """Return (sentence, citation number) pairs of an answer."""
    return [(text.strip(), int(n)) for text, n in re.findall(r"(.+?)\s?\[(\d+)\]", answer)]


@pytest.fixture(scope="module")
def reader(e5_embedder) -> ExtractiveReader:
    """The reader with its default settings over the bundled e5 model."""
    return ExtractiveReader(e5_embedder)


@pytest.mark.parametrize(
    ("question", "texts", "answer", "citation"),
    [
        ("报销需要多久到账？", (LEAVE, EXPENSE, BACKUP), "通常提交后 10 个工作日内到账", 2),
        ("出差回来多久内要报销？", (EXPENSE, LEAVE, BACKUP), "出差结束后 30 天内提交报销申请", 1),
        ("年假没休完怎么办？", (BACKUP, EXPENSE, LEAVE), "可顺延至次年 3 月 31 日", 3),
        ("数据库多久备份一次？", (BACKUP, LEAVE, EXPENSE), "每天凌晨 2 点自动全量备份", 1),
        ("误删的数据怎么恢复？", (LEAVE, BACKUP), "提交“数据恢复”工单", 2),
    ],
)
def test_the_answer_leads_with_the_sentence_that_answers(reader, question, texts, answer, citation) -> None:
    extract = reader.read(question, make_hits(*texts))
    assert extract is not None
    (first, cited), *rest = sentences_of(extract.text)
    assert answer in first and cited == citation
    assert extract.cited[0] == citation and sorted(set(extract.cited)) == sorted(extract.cited)
    assert len(rest) < reader.config.max_sentences
    # Chinese sentences keep their punctuation, and the marker follows it directly.
    assert re.search(r"。\[\d+\]", extract.text) and "##" not in extract.text


def test_an_english_question_gets_an_english_answer(reader) -> None:
    extract = reader.read("When are approved claims paid?", make_hits(MEALS, CLAIMS))
    assert extract is not None
    assert extract.text.startswith(
        "Approved claims are paid to your salary account in the next weekly payment run, every Thursday. [2]"
    )
    # A wrapped line is one sentence; list marks are gone.
    extract = reader.read("Do I need receipts for meals?", make_hits(MEALS, CLAIMS))
    assert extract is not None and extract.cited[0] == 1
    assert extract.text.startswith(
        "Staff receive a per diem of USD 60 per travel day for meals and incidentals;"
    )


def test_nothing_to_answer_with_gives_none(reader) -> None:
    assert reader.read("报销需要多久到账？", []) is None
    assert reader.read("报销需要多久到账？", make_hits("## 报销流程\n\n---\n", "……")) is None
    assert reader.read("   ", make_hits(EXPENSE)) is None
    strict = ExtractiveReader(reader.embedder, ExtractiveConfig(min_score=1.5))
    assert strict.read("报销需要多久到账？", make_hits(EXPENSE)) is None


def test_a_chunk_that_is_one_huge_sentence_still_gives_a_short_answer(reader) -> None:
    filler = "公司的各项制度由相关部门负责解释并根据实际情况不定期更新" * 40
    huge = filler + "，复核通过的报销款通常在提交后十个工作日内到账，" + filler + "。"
    extract = reader.read("报销需要多久到账？", make_hits(huge, LEAVE))
    assert extract is not None
    pieces = sentences_of(extract.text)
    assert "十个工作日内到账" in pieces[0][0] and pieces[0][1] == 1
    limit = reader.config.max_sentence_chars + 1  # a cut piece ends with "…"
    assert all(len(text) <= limit for text, _ in pieces) and len(pieces) <= reader.config.max_sentences


def test_no_sentence_appears_twice(e5_embedder) -> None:
    generous = ExtractiveReader(e5_embedder, ExtractiveConfig(max_sentences=6, min_relative_score=0.0))
    copy = EXPENSE.replace("## 报销流程\n\n", "")
    extract = generous.read("报销需要多久到账？", make_hits(EXPENSE, LEAVE, copy + "\n" + copy))
    assert extract is not None
    texts = [text for text, _ in sentences_of(extract.text)]
    # Several sentences chosen, some of them held by two hits (the copy), each written once.
    assert len(texts) >= 3 and set(texts) & set(split_sentences(copy)) and len(set(texts)) == len(texts)
    # A sentence found in several chunks is cited from the best-ranked one: hit 3 only repeats hit 1.
    assert 3 not in extract.cited
    # After the best sentence, the others read in source order: hit rank, then position in the chunk.
    rest = sentences_of(extract.text)[1:]
    order = [(n, EXPENSE.find(text) if n == 1 else LEAVE.find(text)) for text, n in rest]
    assert order == sorted(order)


def test_the_sentence_count_follows_the_settings(e5_embedder) -> None:
    hits = make_hits(EXPENSE, LEAVE, BACKUP)
    one = ExtractiveReader(e5_embedder, ExtractiveConfig(max_sentences=1)).read("报销需要多久到账？", hits)
    assert one is not None and len(sentences_of(one.text)) == 1 and one.cited == [1]
    three = ExtractiveReader(e5_embedder, ExtractiveConfig(min_relative_score=0.0)).read(
        "报销需要多久到账？", hits
    )
    assert three is not None and len(sentences_of(three.text)) == 3


def test_lexical_overlap_breaks_the_near_ties_of_embeddings(e5_embedder) -> None:
    # e5 scores "复核一般需要 3 个工作日" a hair above the sentence about the money arriving (到账);
    # the share of the question's bigrams (报销, 到账) each sentence holds decides between them.
    hits = make_hits(EXPENSE)
    embeddings_only = ExtractiveReader(e5_embedder, ExtractiveConfig(lexical_weight=0.0, max_sentences=1))
    assert "到账" not in embeddings_only.read("报销需要多久到账？", hits).text
    assert (
        "到账"
        in ExtractiveReader(e5_embedder, ExtractiveConfig(max_sentences=1))
        .read("报销需要多久到账？", hits)
        .text
    )


def test_all_sentences_are_embedded_in_one_batch(e5_embedder) -> None:
    class CountingEmbedder:
        """The real embedder, counting its batches."""

        def __init__(self) -> None:
            self.batches: list[int] = []

        def embed_documents(self, texts: list[str]):
            self.batches.append(len(texts))
            return e5_embedder.embed_documents(texts)

        def embed_query(self, text: str):
            return e5_embedder.embed_query(text)

    counting = CountingEmbedder()
    ExtractiveReader(counting).read("报销需要多久到账？", make_hits(EXPENSE, LEAVE, BACKUP))
    assert counting.batches == [len(split_sentences(EXPENSE + "\n" + LEAVE + "\n" + BACKUP))]


def test_sentences_are_split_for_reading() -> None:
    assert split_sentences(BACKUP) == [
        "生产数据库每天凌晨 2 点自动全量备份，每小时做一次增量备份。",
        "备份文件保存在异地机房，保留 30 天。",
        "如需恢复误删的数据，请在星河OA中提交“数据恢复”工单，注明时间点和数据范围。",
    ]
    assert split_sentences("他说：“好的。”然后走了！真的？\n第二行没有句号") == [
        "他说：“好的。”",
        "然后走了！",
        "真的？",
        "第二行没有句号",
    ]
    english = "Economy is the default, e.g. the cheapest fare. It costs 3.5 dollars! Really?  Yes."
    assert split_sentences(english) == [
        "Economy is the default, e.g. the cheapest fare.",
        "It costs 3.5 dollars!",
        "Really?",
        "Yes.",
    ]
    table = "| 系统 | 地址 |\n| --- | --- |\n| 星河OA | https://oa.xinghe.example |\n\n- **注意**：请用域账号登录。"
    assert split_sentences(table) == [
        "系统：星河OA，地址：https://oa.xinghe.example",
        "注意：请用域账号登录。",
    ]
    # A row or record as kbqa's loaders write it ("name: value" lines) reads as one sentence.
    record = (
        "假期: 中秋节、国庆节\n放假日期: 10月1日至10月8日\n天数: 8\n\nCity: Tokyo\nNightly limit (USD): 200"
    )
    assert split_sentences(record) == [
        "假期: 中秋节、国庆节，放假日期: 10月1日至10月8日，天数: 8",
        "City: Tokyo, Nightly limit (USD): 200",
    ]
    # A line that opens with a short label is about it throughout: its later sentences carry the label.
    labelled = "年假：员工满 1 年后享受年假。满 1 年不满 5 年的，每年 10 天；满 5 年的，每年 12 天。当年的年假可顺延。"
    assert split_sentences(labelled) == [
        "年假：员工满 1 年后享受年假。",
        "年假：满 1 年不满 5 年的，每年 10 天；满 5 年的，每年 12 天。",  # a ；joins the tiers of one rule
        "当年的年假可顺延。",  # it names the label itself
    ]
    assert split_sentences("甲" * 50 + "，" + "乙" * 50 + "。", max_chars=60) == [
        "甲" * 50 + "…",
        "乙" * 50 + "。",
    ]


@pytest.mark.parametrize(
    ("question", "holds", "lacks"),
    [
        ("报销需要多久到账？", "审核通过后 3 个工作日内打入工资卡。", "报销问题请联系财务部张敏。"),
        ("How long does approval take?", "Finance reviews within 5 working days.", "Finance reviews claims."),
        ("住宿标准是多少钱？", "每晚不超过 500 元。", "住宿需要事先审批。"),
        ("年假有几天？", "每年十天。", "年假需要提前申请。"),
        ("年假有几天？", "满 5 年的，每年 12 天；", "当年未休完的年假可顺延至次年 3 月 31 日。"),  # a date
        ("年假有几天？", "合同期 3 个月。", "放假日期: 1月28日至2月4日"),
        ("保修期多久？", "整机保修 2 年。", "该型号于 2025 年发布。"),  # a year
        # A count asked without a unit: a number by the question's words, not a date nor a day off.
        ("公司有多少员工？", "公司共有员工 426 人。", "每年3月18日为公司司庆日，全体员工放假一天。"),
    ],
)
def test_answer_type_matches_the_value_asked_for(question: str, holds: str, lacks: str) -> None:
    assert holds_answer(question, holds) and not holds_answer(question, lacks)


@pytest.mark.parametrize(
    ("question", "holds", "lacks"),
    [
        ("公司什么时候成立？", "公司于2016年3月18日成立。", "公司位于杭州。"),
        ("總部在哪裡？", "總部位於臺北市。", "總部有三百名員工。"),
        ("报销找谁？", "报销问题请联系财务部张敏。", "报销需附发票。"),
        ("Who approves claims?", "Claims are approved by Zhang Min.", "Claims are approved."),
    ],
)
def test_dates_places_and_people_are_answer_types(question: str, holds: str, lacks: str) -> None:
    assert holds_answer(question, holds) and not holds_answer(question, lacks)


def test_questions_without_an_answer_type() -> None:
    assert asked_kind("年假没休完怎么办？") is None and asked_kind("Why are claims rejected?") is None
    assert not holds_answer("年假没休完怎么办？", "当年未休完的年假可顺延至次年 3 月 31 日。")


def test_the_features_place_each_sentence_among_the_others(e5_embedder) -> None:
    reader = ExtractiveReader(e5_embedder)
    hits = [search_hit(0, "他出生于上海。他于1990年去世。"), search_hit(1, "额亦都是清朝的开国功臣。")]
    sentences = reader.sentences(hits)
    assert [s.text for s in sentences] == ["他出生于上海。", "他于1990年去世。", "额亦都是清朝的开国功臣。"]
    weights = {"额亦都": 3.0, "去世": 1.0}
    rows = reader.features("额亦都是在哪一年去世的？", sentences, weights, 0.9)
    column = {name: rows[:, i] for i, name in enumerate(READER_FEATURES)}
    # Only the death sentence holds a year; it ranks first by type, the subject's sentence first by coverage.
    assert column["type_rank"].tolist() == [pytest.approx(1 / 3), 1.0, 0.5]
    assert column["full_rank"][2] == 1.0
    # The sentence before the death sentence is its chunk's first; the chunk's first has none before it.
    assert column["previous_coverage"][0] == 0.0 and column["previous_coverage"][2] == 0.0
    assert column["previous_coverage"][1] == column["coverage"][0]
    # 额亦都是在哪一年去世的 has 11 distinct characters; 他于1990年去世 holds 年, 去, 世.
    assert column["char_overlap"][1] == pytest.approx(3 / 11)
