"""Tests of the Chinese-aware splitter, run against the real langchain splitter."""

from __future__ import annotations

import re
import subprocess
import sys

import paths
import pydantic
import pytest

from ingestion.loaders.base import Block, LoadedDocument
from ingestion.splitter import ChineseTextSplitter, Chunk, SplitterConfig

ANNUAL_LEAVE_SENTENCES = [
    "员工累计工作已满一年不满十年的，年休假五天。",
    "已满十年不满二十年的，年休假十天！",
    "年休假可以跨年度使用吗？",
    "确因工作需要，可在次年第一季度内补休……",
    "人力资源部提醒：“未休年假不折算为工资。”",
    "请各部门合理安排员工休假。",
]
ANNUAL_LEAVE = "".join(ANNUAL_LEAVE_SENTENCES)

SICK_LEAVE = (
    "员工因病需要休假的，应当提前向直属主管提出申请，并在返岗后三个工作日内补交医院出具的病假证明。"
    "病假期间的工资按照本人基本工资的百分之八十发放，但不得低于当地最低工资标准的百分之八十。"
    "连续病假超过三十天的，由人力资源部会同部门负责人评估岗位安排；病假累计超过医疗期的，按照国家有关规定处理。"
    "员工在病假期间不得从事其他有报酬的工作，否则公司有权按照旷工处理。"
)

OVERTIME = (
    "加班须事先申请。工作日加班按一点五倍计薪。休息日加班优先安排补休。无法补休的，按两倍计薪。"
    "法定节假日加班按三倍计薪。加班时长按半小时计。每月加班不超过三十六小时。夜间加班可报销打车费用。"
)

ENGLISH = (
    "The travel budget grew by 3.14 percent in 2023. "
    "Meals cost 1,000 yuan per head at most! "
    "Did the new policy work as planned? "
    "Yes, mostly; see the appendix e.g. for details."
)

TABLE_ROWS = [
    "假期类型: 年假\n天数: 5\n适用: 满一年",
    "假期类型: 婚假\n天数: 3\n适用: 全体",
    "假期类型: 产假\n天数: 158\n适用: 女职工",
    "假期类型: 陪产假\n天数: 15\n适用: 男职工",
    "假期类型: 丧假\n天数: 3\n适用: 直系亲属",
]
# Loaders may leave spaces around a row: the chunk is stripped and its offsets follow.
PADDED_ROW = "  假期类型: 事假\n天数: 按需\n适用: 全体 \n"
ROW_TEXTS = {row.strip() for row in [*TABLE_ROWS, PADDED_ROW]}


def split(document: LoadedDocument, **config: object) -> list[Chunk]:
    """Return the chunks of `document` split with a SplitterConfig built from `config`."""
    return ChineseTextSplitter(SplitterConfig(**config)).split(document)


def one_block(text: str, title: str = "员工手册") -> LoadedDocument:
    """Return a document holding `text` as its only block."""
    return LoadedDocument(title=title, blocks=[Block(text=text)])


def mixed_document() -> LoadedDocument:
    """Return a document with two pages, nested headings, text paragraphs and a table."""
    return LoadedDocument(
        title="员工手册",
        page_count=2,
        blocks=[
            Block("第三章 休假", page=1),
            Block(ANNUAL_LEAVE, page=1, heading_path=("第三章 休假", "3.1 年假")),
            Block("  年假须提前一周申请。  ", page=1, heading_path=("第三章 休假", "3.1 年假")),
            Block(SICK_LEAVE, page=1, heading_path=("第三章 休假", "3.2 病假")),
            *(
                Block(row, page=1, heading_path=("第三章 休假", "3.3 假期一览"), is_table_row=True)
                for row in [PADDED_ROW, *TABLE_ROWS]
            ),
            Block(SICK_LEAVE, page=2, heading_path=("第三章 休假", "3.3 假期一览")),
            Block("   \n  ", page=2, heading_path=("第三章 休假", "3.3 假期一览")),
            Block(ENGLISH, page=2, heading_path=("第四章 差旅",)),
        ],
    )


def cjk_or_word_tokens(text: str) -> int:
    """Return the number of tokens in `text`, counting each CJK character and each other word as one."""
    return len(re.findall(r"[\u4e00-\u9fff]|[^\s\u4e00-\u9fff]+", text))


def block_spans(document: LoadedDocument) -> list[tuple[Block, int, int]]:
    """Return each block with its (start, end) offsets in the document text."""
    spans, start = [], 0
    for block in document.blocks:
        spans.append((block, start, start + len(block.text)))
        start += len(block.text) + 2
    return spans


def test_chinese_text_is_split_after_sentence_ends() -> None:
    chunks = split(one_block(ANNUAL_LEAVE), chunk_size=25, chunk_overlap=0)

    # No two sentences fit in 25 characters, so each sentence is a chunk, its punctuation at its end.
    assert [c.text for c in chunks] == ANNUAL_LEAVE_SENTENCES
    assert not any(c.text[0] in "。！？…”" for c in chunks)


def test_small_chinese_sentences_are_merged_up_to_chunk_size() -> None:
    chunks = split(one_block(ANNUAL_LEAVE), chunk_size=45, chunk_overlap=0)

    assert [c.text for c in chunks] == [
        ANNUAL_LEAVE_SENTENCES[0] + ANNUAL_LEAVE_SENTENCES[1],
        ANNUAL_LEAVE_SENTENCES[2] + ANNUAL_LEAVE_SENTENCES[3],
        ANNUAL_LEAVE_SENTENCES[4] + ANNUAL_LEAVE_SENTENCES[5],
    ]


def test_english_text_is_split_at_sentence_ends_not_in_numbers() -> None:
    chunks = split(one_block(ENGLISH, title=""), chunk_size=50, chunk_overlap=0)

    assert [c.text for c in chunks] == [
        "The travel budget grew by 3.14 percent in 2023.",
        "Meals cost 1,000 yuan per head at most!",
        "Did the new policy work as planned?",
        "Yes, mostly; see the appendix e.g. for details.",
    ]


def test_decimal_numbers_are_not_cut_at_their_point() -> None:
    text = "The rate rose to 3.14 percent. It fell later."

    chunks = split(one_block(text, title=""), chunk_size=20, chunk_overlap=0)

    assert [c.text for c in chunks] == ["The rate rose to", "3.14 percent.", "It fell later."]


def test_long_clause_is_split_at_commas_when_no_sentence_end_fits() -> None:
    sentence = SICK_LEAVE.split("。")[0] + "。"

    chunks = split(one_block(sentence), chunk_size=30, chunk_overlap=0)

    assert len(chunks) > 1
    assert all(c.text[-1] in "，。" for c in chunks)


@pytest.mark.parametrize("chunk_size", [8, 30, 60, 200])
def test_text_chunks_respect_chunk_size(chunk_size: int) -> None:
    document = mixed_document()

    chunks = split(document, chunk_size=chunk_size, chunk_overlap=chunk_size // 4)

    too_long = [c for c in chunks if len(c.text) > chunk_size]
    rows_alone = [c for c in too_long if c.text in ROW_TEXTS]
    assert too_long == rows_alone


def test_consecutive_chunks_of_a_long_run_overlap() -> None:
    document = one_block(OVERTIME)

    chunks = split(document, chunk_size=40, chunk_overlap=20)

    assert len(chunks) >= 3
    for before, after in zip(chunks, chunks[1:], strict=False):
        shared = document.text[after.start : before.end]
        assert before.start < after.start < before.end, (before.text, after.text)
        assert 0 < len(shared) <= 20
        # The overlap is made of whole sentences, so no chunk starts in the middle of one.
        assert shared.endswith("。") and before.text.endswith(shared) and after.text.startswith(shared)


def test_overlap_repeats_no_sentence_longer_than_chunk_overlap() -> None:
    chunks = split(one_block(SICK_LEAVE), chunk_size=60, chunk_overlap=30)

    assert all(after.start >= before.end for before, after in zip(chunks, chunks[1:], strict=False))


def test_no_overlap_when_chunk_overlap_is_zero() -> None:
    chunks = split(one_block(SICK_LEAVE), chunk_size=60, chunk_overlap=0)

    assert all(after.start >= before.end for before, after in zip(chunks, chunks[1:], strict=False))
    assert "".join(c.text for c in chunks) == SICK_LEAVE


@pytest.mark.parametrize(("chunk_size", "chunk_overlap"), [(8, 0), (40, 10), (120, 50), (500, 50)])
def test_offsets_point_at_the_chunk_text_exactly(chunk_size: int, chunk_overlap: int) -> None:
    document = mixed_document()

    chunks = split(document, chunk_size=chunk_size, chunk_overlap=chunk_overlap)

    assert chunks
    for chunk in chunks:
        assert document.text[chunk.start : chunk.end] == chunk.text
        assert chunk.text == chunk.text.strip() and chunk.text
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)


def test_offsets_are_exact_when_text_repeats() -> None:
    repeated = "年假五天。" * 30
    document = LoadedDocument(title="", blocks=[Block(repeated), Block(repeated, page=2)])

    chunks = split(document, chunk_size=22, chunk_overlap=10)

    assert all(document.text[c.start : c.end] == c.text for c in chunks)
    assert {c.page for c in chunks} == {None, 2}
    assert all(c.start >= len(repeated) for c in chunks if c.page == 2)


@pytest.mark.parametrize("chunk_size", [30, 120, 1000])
def test_chunks_never_span_pages_or_sections(chunk_size: int) -> None:
    document = mixed_document()
    spans = block_spans(document)

    chunks = split(document, chunk_size=chunk_size, chunk_overlap=10)

    for chunk in chunks:
        covered = [b for b, start, end in spans if start < chunk.end and chunk.start < end]
        assert covered
        assert all(b.page == chunk.page and b.heading_path == chunk.heading_path for b in covered)
        assert len({b.is_table_row for b in covered}) == 1
    # Even with room for the whole document, each page and section is a chunk apart.
    assert len(chunks) >= 6


def test_small_paragraphs_of_one_section_are_merged() -> None:
    document = LoadedDocument(title="", blocks=[Block("第一段。"), Block("第二段。"), Block("第三段。")])

    chunks = split(document, chunk_size=100, chunk_overlap=0)

    assert [c.text for c in chunks] == ["第一段。\n\n第二段。\n\n第三段。"]
    assert (chunks[0].start, chunks[0].end) == (0, len(document.text))


def test_table_rows_are_packed_whole_and_never_cut() -> None:
    document = LoadedDocument(title="假期一览", blocks=[Block(row, is_table_row=True) for row in TABLE_ROWS])
    chunk_size = len(TABLE_ROWS[0]) + len(TABLE_ROWS[1]) + len(TABLE_ROWS[2]) + 4

    chunks = split(document, chunk_size=chunk_size, chunk_overlap=20)

    assert [c.text for c in chunks] == ["\n\n".join(TABLE_ROWS[:3]), "\n\n".join(TABLE_ROWS[3:])]
    assert all(document.text[c.start : c.end] == c.text for c in chunks)


def test_oversized_table_row_is_a_chunk_of_its_own() -> None:
    long_row = "假期类型: 探亲假\n天数: 20\n说明: " + "未婚员工探望父母每年一次，" * 10
    rows = [TABLE_ROWS[0], long_row, TABLE_ROWS[1], TABLE_ROWS[2]]
    document = LoadedDocument(title="", blocks=[Block(row, page=3, is_table_row=True) for row in rows])

    chunks = split(document, chunk_size=80, chunk_overlap=10)

    assert [c.text for c in chunks] == [TABLE_ROWS[0], long_row.strip(), "\n\n".join(TABLE_ROWS[1:3])]
    assert len(chunks[1].text) > 80
    assert all(c.page == 3 for c in chunks)


def test_table_rows_and_text_of_one_section_are_chunked_apart() -> None:
    blocks = [
        Block("各类假期如下表。", heading_path=("假期",)),
        *(Block(row, heading_path=("假期",), is_table_row=True) for row in TABLE_ROWS[:2]),
        Block("表中未列的假期按国家规定执行。", heading_path=("假期",)),
    ]

    chunks = split(LoadedDocument(title="", blocks=blocks), chunk_size=500, chunk_overlap=0)

    assert [c.text for c in chunks] == [
        "各类假期如下表。",
        "\n\n".join(TABLE_ROWS[:2]),
        "表中未列的假期按国家规定执行。",
    ]


def test_ocr_text_is_never_in_a_chunk_with_other_text() -> None:
    blocks = [
        Block("幻灯片正文。", page=2),
        Block("图片里识别出的文字。", page=2, ocr=True),
        Block("图片下方的说明。", page=2),
    ]

    chunks = split(LoadedDocument(title="", blocks=blocks), chunk_size=500, chunk_overlap=0)

    assert [(c.text, c.page, c.ocr) for c in chunks] == [
        ("幻灯片正文。", 2, False),
        ("图片里识别出的文字。", 2, True),
        ("图片下方的说明。", 2, False),
    ]


def test_table_rows_are_not_packed_across_sections() -> None:
    blocks = [
        Block(TABLE_ROWS[0], heading_path=("年假",), is_table_row=True),
        Block(TABLE_ROWS[1], heading_path=("婚假",), is_table_row=True),
    ]

    chunks = split(LoadedDocument(title="", blocks=blocks), chunk_size=500, chunk_overlap=0)

    assert [(c.text, c.heading_path) for c in chunks] == [
        (TABLE_ROWS[0], ("年假",)),
        (TABLE_ROWS[1], ("婚假",)),
    ]


def test_embed_text_has_the_context_prefix_and_text_does_not() -> None:
    document = LoadedDocument(
        title="员工手册", blocks=[Block(ANNUAL_LEAVE, heading_path=("第三章 休假", "3.1 年假"))]
    )

    chunks = split(document, chunk_size=25, chunk_overlap=0)

    for chunk in chunks:
        assert chunk.embed_text == f"员工手册 > 第三章 休假 > 3.1 年假\n{chunk.text}"
        assert "员工手册" not in chunk.text


def test_context_prefix_does_not_count_toward_chunk_size() -> None:
    document = LoadedDocument(title="员工手册" * 20, blocks=[Block(ANNUAL_LEAVE_SENTENCES[0])])

    chunks = split(document, chunk_size=len(ANNUAL_LEAVE_SENTENCES[0]), chunk_overlap=0)

    assert [c.text for c in chunks] == [ANNUAL_LEAVE_SENTENCES[0]]


def test_context_prefix_skips_an_empty_title_and_can_be_turned_off() -> None:
    untitled = LoadedDocument(
        title="", blocks=[Block("年假五天。", heading_path=("休假",)), Block("另起一节。")]
    )

    with_prefix = split(untitled, chunk_size=50, chunk_overlap=0)
    without_prefix = split(untitled, chunk_size=50, chunk_overlap=0, context_prefix=False)

    assert [c.embed_text for c in with_prefix] == ["休假\n年假五天。", "另起一节。"]
    assert [c.embed_text for c in without_prefix] == ["年假五天。", "另起一节。"]


def test_whitespace_only_blocks_are_dropped_and_chunks_stripped() -> None:
    blocks = [
        Block("  \n "),
        Block("\n  年假须提前一周申请。 \n"),
        Block("\u3000"),
        Block(" \n", heading_path=("空表",), is_table_row=True),
    ]
    document = LoadedDocument(title="", blocks=blocks)

    chunks = split(document, chunk_size=50, chunk_overlap=0)

    assert [c.text for c in chunks] == ["年假须提前一周申请。"]
    assert document.text[chunks[0].start : chunks[0].end] == "年假须提前一周申请。"


def test_a_document_without_blocks_has_no_chunks() -> None:
    assert split(LoadedDocument(title="空文档"), chunk_size=50, chunk_overlap=0) == []


def test_tokens_mode_counts_with_the_token_counter() -> None:
    document = mixed_document()
    config = SplitterConfig(chunk_size=20, chunk_overlap=5, length_unit="tokens")

    chunks = ChineseTextSplitter(config, count_tokens=cjk_or_word_tokens).split(document)

    assert all(cjk_or_word_tokens(c.text) <= 20 for c in chunks if c.text not in ROW_TEXTS)
    assert all(document.text[c.start : c.end] == c.text for c in chunks)
    # Twenty English words are far more than twenty characters: the budget really is in tokens.
    english = [c for c in chunks if c.heading_path == ("第四章 差旅",)]
    assert max(len(c.text) for c in english) > 40


def test_tokens_mode_keeps_the_budget_when_joined_text_counts_more_than_its_parts() -> None:
    # Rounding down makes a joined text count more than its parts did; langchain sums the parts.
    def estimated_tokens(text: str) -> int:
        return len(text) * 5 // 4

    document = mixed_document()
    config = SplitterConfig(chunk_size=30, chunk_overlap=8, length_unit="tokens")

    chunks = ChineseTextSplitter(config, count_tokens=estimated_tokens).split(document)

    assert all(estimated_tokens(c.text) <= 30 for c in chunks if c.text not in ROW_TEXTS)
    assert all(document.text[c.start : c.end] == c.text for c in chunks)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"chunk_size": 100, "chunk_overlap": 100}, "chunk_overlap"),
        ({"chunk_size": 100, "chunk_overlap": 150}, "chunk_overlap"),
        ({"chunk_size": 0, "chunk_overlap": 0}, "chunk_size"),
        ({"chunk_size": -5}, "chunk_size"),
        ({"chunk_overlap": -1}, "chunk_overlap"),
        ({"length_unit": "words"}, "length_unit"),
        ({"chunk_sise": 100}, "chunk_sise"),
    ],
)
def test_invalid_config_is_rejected(config: dict[str, object], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        SplitterConfig(**config)


def test_defaults_are_valid() -> None:
    config = SplitterConfig()

    assert (config.chunk_size, config.chunk_overlap, config.length_unit, config.context_prefix) == (
        500,
        50,
        "chars",
        True,
    )


def test_tokens_mode_without_a_token_counter_is_rejected() -> None:
    with pytest.raises(ValueError, match="count_tokens"):
        ChineseTextSplitter(SplitterConfig(length_unit="tokens"))


def test_importing_the_splitter_does_not_import_langchain() -> None:
    code = "import sys, ingestion.splitter; print('langchain_text_splitters' in sys.modules)"
    root = paths.REPO

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "False"
