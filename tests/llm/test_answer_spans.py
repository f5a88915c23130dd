"""The words of an answer that answer: found from the kind of value asked for, or a record's named field."""

from __future__ import annotations

import re

import pytest
from hits import search_hit

from ingestion import load_file
from llm.answer_types import answer_spans
from llm.extractive import ExtractiveReader
from retrieval.calibration import LogisticModel
from retrieval.text_rules import field_lines, split_sentences

TIERS = "年假：累计工作满 1 年不满 5 年的，每年 10 天；满 5年不满 10 年的，每年 12 天；满 10 年及以上的，每年 15 天。"


def spans_of(question: str, sentence: str) -> list[str]:
    """Return the marked words of `sentence` for `question`."""
    return [sentence[start:end] for start, end in answer_spans(question, sentence)]


@pytest.mark.parametrize(
    ("question", "sentence", "marked"),
    [
        ("星河X1 重量多少？", "重量：2.1 kg", ["2.1 kg"]),  # a key-value row: the value of the named key
        ("病假一年有几天？", "病假：每年享有 12 天全薪病假，超出部分按基本工资的 80% 发放。", ["12 天"]),
        ("How many days of sick leave do I get?", "病假：每年享有 12 天全薪病假。", ["12 天"]),
        # 几天 asks for days: the tiers' days, not the years that condition them.
        ("年假有几天？", TIERS, ["10 天", "12 天", "15 天"]),
        ("How many days of annual leave do I get?", TIERS, ["10 天", "12 天", "15 天"]),
        ("报销需要多久到账？", "审核通过后 3 个工作日内打入员工工资卡。", ["3 个工作日"]),
        ("差旅住宿每晚多少钱？", "北京住宿每晚不超过 500 元，其他城市不超过 350 元。", ["500 元", "350 元"]),
        ("额亦都是在哪一年去世的？", "额亦都于1621年去世，享年六十岁。", ["1621年"]),
        # 多少 of a measure: the value with its unit, not the bare count of something else nor the 半 of 半径.
        ("星河X1 的麦克风拾音距离是多少？", "麦克风：8 麦克风阵列，拾音半径 8 米", ["8 米"]),
        # Not the 1 of the product code X1, nor the 一 of 一体化.
        ("星河X1 有多少个麦克风？", "星河X1 配有 8 个麦克风。", ["8 个"]),
        ("会议室最多坐几个人？", "一体化设计，适合 4 至 12 人的会议室。", ["12 人"]),
        # No value in the unit asked (天): still the measured one, not the bare 8 of 编号 8.
        ("展会持续多少天？", "展位编号 8，展期 3 个月。", ["3 个"]),
        # Of several, the value after the question's word (产假 158 天), not the one ending just before it.
        ("产假多少天？", "婚假 13 天（含法定 3 天），产假 158 天，陪产假 15 天，均为全薪。", ["158 天"]),
        (
            "How long does Finance take to review?",
            "Finance reviews within 5 working days.",
            ["5 working days"],
        ),
        # A record: the field the question names, or the count it holds (天数 for 几天).
        (
            "国庆节放几天？",
            "假期: 国庆节，放假日期: 10月1日至10月8日，天数: 8，调休上班日期: 9月28日（周日）",
            ["8"],
        ),
        # 多长 asks for a duration: both of the rule's, up to three are marked.
        (
            "试用期多长？",
            "试用期一般为 3 个月，表现优秀者可申请提前转正，最短不少于 1 个月。",
            ["3 个月", "1 个月"],
        ),
        # How heavy, how high: a weight, a length.
        ("星河X1 有多重？", "尺寸：620 × 90 × 95 mm，重量：2.1 kg", ["2.1 kg"]),
        ("珠穆朗玛峰有多高？", "珠穆朗玛峰海拔 8848.86 米，2005 年测定。", ["8848.86 米"]),
        # A phone number names, it does not count: nothing is marked, not the 四位 of 身份证后四位.
        ("服务台电话是多少？", "如需立即解锁，请联系服务台并提供工号和身份证后四位。", []),
        # A weight is asked at a question's end only: 有多重要 asks for none (the 2 kg is no answer).
        ("这次升级有多重要？", "新版本重 2 kg，更轻便。", []),
        # A date is one span, the year, the month and the day together.
        ("公司什么时候成立的？", "公司成立于2016年3月18日，总部位于杭州。", ["2016年3月18日"]),
        ("星河X1 是哪一年发布的？", "星河X1 于 2024 年 9 月发布。", ["2024 年 9 月"]),
        # Counting staff: the number of people by 员工, not the 258 of 研发人员 nor the share.
        (
            "公司有多少员工？",
            "截至2024年12月31日，公司共有员工 426 人，其中研发人员 258 人，占比约 60%。",
            ["426 人"],
        ),
        # A field named by part of its name that holds the kind asked for (调休 of 调休上班日期, a date).
        (
            "春节哪天调休？",
            "假期: 春节，放假日期: 1月28日至2月4日，天数: 8，调休上班日期: 1月26日（周日）、2月8日（周六）",
            ["1月26日（周日）、2月8日（周六）"],
        ),
        # 万, 公里, 本…: a number's measure, so it is no bare number.
        ("上海有多少人口？", "上海常住人口约 2487 万，面积 6340 平方公里。", ["2487 万"]),
        # A field that holds the kind asked for: 价格 the money of 多少钱, 保修年限 the duration of 保修多久.
        ("星河S2 多少钱？", "产品: 星河S2 桌面会议宝，型号: XH-S2，价格: 899，保修年限: 1", ["899"]),
        ("星河S2 保修多久？", "产品: 星河S2 桌面会议宝，型号: XH-S2，价格: 899，保修年限: 1", ["1"]),
        (  # asked two things, both marked
            "国庆节放几天假，哪天调休上班？",
            "假期: 国庆节，放假日期: 10月1日至10月8日，天数: 8，调休上班日期: 9月28日（周日）",
            ["8", "9月28日（周日）"],
        ),
    ],
)
def test_the_words_that_answer_are_marked(question: str, sentence: str, marked: list[str]) -> None:
    assert spans_of(question, sentence) == marked


@pytest.mark.parametrize(
    ("question", "sentence"),
    [
        (
            "公司的创始人是谁？",
            "公司创始人兼首席执行官为林思远。",
        ),  # a person: not reliably found, not marked
        ("年假没休完怎么办？", "当年未休完的年假可顺延至次年 3 月 31 日。"),  # asks for no kind of value
        ("报销需要多久到账？", "报销须附电子发票。"),  # the kind asked for is not there
        # A count asked without a unit (多少员工) is not a date or a length of time, nor a number far from
        # every word of the question (10 倍 of the zoom, for the camera's 分辨率).
        ("公司有多少员工？", "每年3月18日为公司司庆日，全体员工放假一天。"),
        ("星河X1 的摄像头分辨率是多少？", "摄像头：4K 超高清，120° 广角，10 倍数字变焦"),
        # The 8 of 8 点 counts no 密码.
        ("访客 Wi-Fi 密码是多少？", "访客请连接“Xinghe-Guest”，密码每周一早上 8 点更新。"),
    ],
)
def test_nothing_is_marked_without_a_value_of_the_kind_asked_for(question: str, sentence: str) -> None:
    assert answer_spans(question, sentence) == []


def test_many_values_mark_only_the_one_nearest_the_question() -> None:
    sentence = "1998 年建校，2003 年迁址，2010 年扩建，2016 年图书馆落成，2020 年更名。"
    assert spans_of("图书馆是哪一年落成的？", sentence) == ["2016 年"]


def test_a_key_value_table_reads_as_its_keys_and_values() -> None:
    table = "| 参数 | 规格 |\n|---|---|\n| 重量 | 2.1 kg |\n| 尺寸 | 620 × 90 × 95 mm |"
    assert split_sentences(table) == ["重量：2.1 kg", "尺寸：620 × 90 × 95 mm"]
    assert split_sentences("参数: 重量\n规格: 2.1 kg\n") == ["重量：2.1 kg"]
    assert split_sentences("Parameter: Weight\nValue: 2.1 kg\n") == ["Weight: 2.1 kg"]
    # Other records keep every field's name: 产品 and 价格 say what the values are.
    assert split_sentences("产品: 星河X1\n价格: 2999\n") == ["产品: 星河X1，价格: 2999"]


def test_a_row_as_the_loaders_write_it_reads_as_one_sentence(tmp_path) -> None:
    # The loaders write a table row with `field_lines`; the reader takes the same format back.
    (tmp_path / "specs.csv").write_text("参数,规格\n重量,2.1 kg\n", encoding="utf-8")
    (tmp_path / "price.csv").write_text("产品,价格\n星河X1,2999\n", encoding="utf-8")
    rows = [load_file(tmp_path / name).blocks[0].text for name in ("specs.csv", "price.csv")]
    assert rows == [field_lines([("参数", "重量"), ("规格", "2.1 kg")]), "产品: 星河X1\n价格: 2999"]
    assert [split_sentences(row) for row in rows] == [["重量：2.1 kg"], ["产品: 星河X1，价格: 2999"]]


def test_the_extract_carries_the_spans_at_their_offsets_in_the_answer(e5_embedder) -> None:
    hits = [
        search_hit(0, "年假：员工累计工作满 1 年后享受带薪年假。" + TIERS[3:]),
        search_hit(1, "病假：每年享有 12 天全薪病假，超出部分按基本工资的 80% 发放。"),
    ]
    extract = ExtractiveReader(e5_embedder).read("病假一年有几天？", hits)
    assert extract is not None and extract.spans
    for span in extract.spans:
        assert extract.text[span.start : span.end] == span.text
        # A span never runs into a citation marker.
        assert not re.search(r"\[\d+\]", span.text)
    assert "12 天" in [span.text for span in extract.spans]


def test_a_reader_fitted_on_fewer_features_still_reads(e5_embedder) -> None:
    """A calibration a user fitted before `full_coverage` existed names its own features; the reader computes those."""
    import numpy as np

    names = ("cosine", "coverage")
    model = LogisticModel(names, (0.85, 0.3), (0.03, 0.4), (1.0, 1.0), 0.0)
    reader = ExtractiveReader(e5_embedder, model=model)
    extract = reader.read(
        "病假一年有几天？", [search_hit(0, "病假：每年享有 12 天全薪病假。年假每年 10 天。")]
    )
    assert extract is not None
    assert reader.features(
        "病假一年有几天？", reader.sentences([search_hit(0, "病假。")]), names=names
    ).shape == (
        1,
        2,
    )
    assert np.isfinite(model.probabilities(np.zeros((1, 2)))).all()


def test_a_sentence_holding_the_value_asked_for_leads_the_answer(e5_embedder) -> None:
    """The reader ranks the product's description (the first hit) above the price row, which holds no 元:
    the row holding the value that answers 多少钱 opens the answer, the description follows."""
    model = LogisticModel(("hit_rank",), (0.5,), (1.0,), (1.0,), -3.0)  # the first hit a little surer
    reader = ExtractiveReader(e5_embedder, model=model)
    hits = [
        search_hit(0, "星河X1 是一体化智能会议终端。"),
        search_hit(1, field_lines([("产品", "星河X1 智能会议终端"), ("价格", "2999")])),
    ]
    extract = reader.read("星河X1 多少钱？", hits)
    assert extract is not None
    assert extract.text.startswith("产品: 星河X1 智能会议终端，价格: 2999 [2]")
    assert "星河X1 是一体化智能会议终端。[1]" in extract.text
    assert [s.text for s in extract.spans] == ["2999"]
    # A question no sentence holds a value for keeps the reader's order.
    plain = reader.read("星河X1 是什么？", hits)
    assert plain is not None and plain.text.startswith("星河X1 是一体化智能会议终端。[1]")
