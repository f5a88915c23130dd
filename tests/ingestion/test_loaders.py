"""Tests for the document loaders: real files built in tmp_path (and one committed Chinese PDF)."""

from __future__ import annotations

import datetime as dt
import io
import json
import tracemalloc
from pathlib import Path

import docx
import openpyxl
import paths
import pptx
import pytest
from documents import (
    PHOTO_EN,
    PHOTO_ZH,
    SCANNED_EN,
    SCANNED_ZH,
    char_accuracy,
    docx_bomb,
    image_pdf,
    make_docx,
    make_pptx,
    photo_png,
    scanned_pdf,
    table_pdf,
    text_page_image,
)
from docx.enum.style import WD_STYLE_TYPE
from fpdf import FPDF
from PIL import Image
from pptx.util import Inches
from pypdf import PdfWriter

from ingestion.loaders import (
    SUPPORTED_SUFFIXES,
    Block,
    ImageReader,
    LoadedDocument,
    LoaderError,
    LoadLimits,
    OcrConfig,
    load_file,
)
from ingestion.loaders import ocr as ocr_module
from ingestion.loaders.ocr import ocr_installed
from ingestion.loaders.pdf import unwrap_lines

DATA = paths.TEST_DATA
EXAMPLES = paths.SAMPLE_DOCS

ZH_SIMPLIFIED = (
    "公司成立于2016年，总部位于杭州。员工每年可享受十天带薪年假。"
    "报销申请须在费用发生后三十天内提交，财务部审核后五个工作日内打款。"
)
ZH_TRADITIONAL = (
    "本公司成立於2016年，總部位於臺北。員工每年可享有十天特休假。"
    "報銷申請須於費用發生後三十天內提交，財務部門審核後五個工作日內撥款。"
)


def write(path: Path, content: str | bytes) -> Path:
    """Return `path` after writing `content` to it (str as UTF-8)."""
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def english_pdf(path: Path, pages: list[str], title: str | None = None) -> Path:
    """Return `path` after writing a PDF with one page of Latin text per item of `pages`."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    if title:
        pdf.set_title(title)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


def texts(document: LoadedDocument) -> list[str]:
    """Return the text of each block."""
    return [block.text for block in document.blocks]


# --- dispatch and generic errors ---------------------------------------------------------------------


def test_supported_suffixes_are_sorted_and_complete() -> None:
    assert list(SUPPORTED_SUFFIXES) == sorted(SUPPORTED_SUFFIXES)
    expected = {
        ".bmp",
        ".csv",
        ".docx",
        ".htm",
        ".html",
        ".jpeg",
        ".jpg",
        ".json",
        ".jsonl",
        ".md",
        ".markdown",
        ".pdf",
        ".png",
        ".pptx",
        ".tif",
        ".tiff",
        ".txt",
        ".webp",
        ".xlsx",
    }
    assert set(SUPPORTED_SUFFIXES) == expected


def test_unsupported_type_lists_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(
        LoaderError, match=r"unsupported file type '\.ppt'; supported: \.bmp, \.csv, \.docx, "
    ):
        load_file(write(tmp_path / "slides.ppt", b"\xd0\xcf\x11\xe0"))


def test_suffix_is_matched_case_insensitively(tmp_path: Path) -> None:
    document = load_file(write(tmp_path / "NOTE.TXT", "hello"))
    assert texts(document) == ["hello"]


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="^file is empty$"):
        load_file(write(tmp_path / "empty.md", b""))


def test_whitespace_only_file_has_no_text(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="no text could be extracted"):
        load_file(write(tmp_path / "blank.txt", " \n\n\t\n"))


def test_binary_bytes_with_text_suffix(tmp_path: Path) -> None:
    with pytest.raises(LoaderError):
        load_file(write(tmp_path / "odd.txt", b"\xff\xfe\x00"))


def test_deeply_nested_json(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="nested too deeply"):
        load_file(write(tmp_path / "deep.json", "[" * 100_000 + "]" * 100_000))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="cannot read file"):
        load_file(tmp_path / "nowhere.txt")


# --- PDF ------------------------------------------------------------------------------------------


def test_pdf_pages_numbers_and_title(tmp_path: Path) -> None:
    pages = [f"Page {n}: annual leave is {n + 9} days." for n in (1, 2, 3)]
    document = load_file(english_pdf(tmp_path / "policy.pdf", pages, title="Leave Policy"))
    assert document.title == "Leave Policy"
    assert document.page_count == 3
    assert [(block.page, block.text) for block in document.blocks] == list(enumerate(pages, start=1))


def test_pdf_title_falls_back_to_stem(tmp_path: Path) -> None:
    assert load_file(english_pdf(tmp_path / "handbook.pdf", ["Some text."])).title == "handbook"


def test_pdf_chinese_text_is_extracted() -> None:
    document = load_file(DATA / "zh_two_pages.pdf")
    assert document.title == "中文测试文档"
    assert document.page_count == 2
    assert [(block.page, block.text) for block in document.blocks] == [
        (1, "第一页\n年假每年十天。"),
        (2, "第二页\n报销须在三十天内提交。"),
    ]


def test_pdf_ruled_table_rows_keep_their_column_names_in_reading_order(tmp_path: Path) -> None:
    document = load_file(table_pdf(tmp_path / "travel.pdf"))
    got = [(block.page, block.is_table_row, block.text) for block in document.blocks]
    assert got == [
        (1, False, "差旅标准如下表所示。"),
        (1, True, "城市: 北京\n差旅补贴: 每天 200 元\n住宿标准: 每晚 600 元"),
        (1, True, "城市: 上海\n差旅补贴: 每天 180 元\n住宿标准: 每晚 550元，含早餐"),
        (1, True, "城市: Shenzhen\n差旅补贴: 150 yuan a day\n住宿标准: 500 yuan a night"),
        (1, False, "超出标准的部分由员工自理。"),
    ]


def test_pdf_page_with_a_rule_but_no_table_is_read_as_text(tmp_path: Path) -> None:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, "Heading above a rule.")
    pdf.line(10, 30, 200, 30)
    pdf.rect(10, 40, 100, 20)  # a box around nothing is not a table either
    pdf.text(12, 50, "Boxed note.")
    pdf.output(str(tmp_path / "ruled.pdf"))
    document = load_file(tmp_path / "ruled.pdf")
    assert [(block.is_table_row, block.text) for block in document.blocks] == [
        (False, "Heading above a rule.\nBoxed note.")
    ]


def test_pdf_layout_line_wraps_are_joined() -> None:
    page = (
        "第二章 休假制度\n"
        "年假：员工累计工作满 1 年后享受带薪年假。累计工作满 1 年不满 5 年的，每年 10 \n"
        "天；满 5 年不满 10 年的，每年 12 天。当年未休完的年假可顺延至次年 3 月 31 日，逾\n"
        "期作废。\n"
        "Reimbursements are paid within five working days of the approval by the\n"
        "finance department.\n"
        "病假另行规定。"
    )
    assert unwrap_lines(page).split("\n") == [
        "第二章 休假制度",
        "年假：员工累计工作满 1 年后享受带薪年假。累计工作满 1 年不满 5 年的，每年 10 "
        "天；满 5 年不满 10 年的，每年 12 天。当年未休完的年假可顺延至次年 3 月 31 日，逾期作废。",
        "Reimbursements are paid within five working days of the approval by the finance department.",
        "病假另行规定。",
    ]


def encrypt(source: Path, target: Path, user_password: str, algorithm: str = "RC4-128") -> Path:
    """Return `target` after writing `source` encrypted with `algorithm`."""
    writer = PdfWriter(clone_from=source)
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm=algorithm)
    writer.write(target)
    return target


def test_pdf_aes_encrypted_with_empty_user_password_opens(tmp_path: Path) -> None:
    plain = english_pdf(tmp_path / "plain.pdf", ["Acrobat restricts printing with AES by default."])
    document = load_file(encrypt(plain, tmp_path / "aes.pdf", "", algorithm="AES-256"))
    assert "restricts printing" in document.text


def test_pdf_encrypted_with_empty_user_password_opens(tmp_path: Path) -> None:
    plain = english_pdf(tmp_path / "plain.pdf", ["Printing is restricted, reading is not."])
    document = load_file(encrypt(plain, tmp_path / "restricted.pdf", user_password=""))
    assert texts(document) == ["Printing is restricted, reading is not."]


def test_pdf_encrypted_with_password(tmp_path: Path) -> None:
    plain = english_pdf(tmp_path / "plain.pdf", ["Secret salaries."])
    with pytest.raises(LoaderError, match="^PDF is encrypted with a password$"):
        load_file(encrypt(plain, tmp_path / "locked.pdf", user_password="open-sesame"))


def test_pdf_without_text_looks_scanned(tmp_path: Path) -> None:
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 60, style="F")
    pdf.output(str(tmp_path / "scan.pdf"))
    with pytest.raises(LoaderError, match="no text could be extracted: the PDF looks scanned.*OCR"):
        load_file(tmp_path / "scan.pdf")


def test_pdf_garbage(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="^not a valid PDF: "):
        load_file(write(tmp_path / "garbage.pdf", b"this is not a pdf at all\x00\xff" * 20))


def test_pdf_truncated(tmp_path: Path) -> None:
    whole = english_pdf(tmp_path / "whole.pdf", ["First page.", "Second page."]).read_bytes()
    with pytest.raises(LoaderError, match="^not a valid PDF: "):
        load_file(write(tmp_path / "truncated.pdf", whole[: len(whole) // 2]))


# --- plain text -------------------------------------------------------------------------------------


def test_text_paragraphs_become_blocks(tmp_path: Path) -> None:
    path = write(
        tmp_path / "notice.txt", "第一段第一行\r\n第一段第二行   \r\n\r\n\r\n\r\n第二段\r\n  \r\n第三段"
    )
    document = load_file(path)
    assert document.title == "notice"
    assert texts(document) == ["第一段第一行\n第一段第二行", "第二段", "第三段"]
    assert all(block.page is None and block.heading_path == () for block in document.blocks)


@pytest.mark.parametrize(
    ("content", "encoding"),
    [
        (ZH_SIMPLIFIED, "gbk"),
        (ZH_SIMPLIFIED, "gb18030"),
        (ZH_TRADITIONAL, "big5"),
        # Short enough that an unrestricted detector takes it for Korean (cp949).
        ("報銷申請須於三十天內提交", "big5"),
        (ZH_SIMPLIFIED, "utf-8-sig"),
        (ZH_SIMPLIFIED, "utf-16"),
    ],
)
def test_text_encodings_are_detected(tmp_path: Path, content: str, encoding: str) -> None:
    document = load_file(write(tmp_path / f"{encoding}.txt", content.encode(encoding)))
    assert texts(document) == [content]


# --- Markdown ---------------------------------------------------------------------------------------

MARKDOWN = """\
# 运维手册

开头的说明。

## 账号

重置密码请访问门户。
第二行。

### 锁定

输错 5 次锁定 30 分钟。

## 系统列表

| 系统 | 地址 | 负责人 |
|:-----|------|-------:|
| OA | https://oa.example | 王磊 |
| Git | a\\|b |  |

```bash
echo one

echo two
```

#not-a-heading

---

# 附录

结尾。
"""


def test_markdown_headings_tables_and_code(tmp_path: Path) -> None:
    document = load_file(write(tmp_path / "ops.md", MARKDOWN))
    assert document.title == "运维手册"
    got = [(block.heading_path, block.is_table_row, block.text) for block in document.blocks]
    assert got == [
        (("运维手册",), False, "开头的说明。"),
        (("运维手册", "账号"), False, "重置密码请访问门户。\n第二行。"),
        (("运维手册", "账号", "锁定"), False, "输错 5 次锁定 30 分钟。"),
        (("运维手册", "系统列表"), True, "系统: OA\n地址: https://oa.example\n负责人: 王磊"),
        (("运维手册", "系统列表"), True, "系统: Git\n地址: a|b"),
        (("运维手册", "系统列表"), False, "```bash\necho one\n\necho two\n```"),
        (("运维手册", "系统列表"), False, "#not-a-heading"),
        (("附录",), False, "结尾。"),
    ]


def test_markdown_title_falls_back_to_stem(tmp_path: Path) -> None:
    document = load_file(write(tmp_path / "faq.markdown", "## 只有二级标题\n\n正文"))
    assert document.title == "faq"
    assert document.blocks == [Block("正文", heading_path=("只有二级标题",))]


def test_markdown_unclosed_fence_runs_to_the_end(tmp_path: Path) -> None:
    document = load_file(write(tmp_path / "code.md", "Intro\n\n~~~\nline 1\n\n# not a heading\n"))
    assert texts(document) == ["Intro", "~~~\nline 1\n\n# not a heading"]


# --- Word -------------------------------------------------------------------------------------------


def test_docx_body_order_headings_and_table(tmp_path: Path) -> None:
    document = load_file(make_docx(tmp_path / "manual.docx"))
    assert document.title == "产品说明"
    got = [(block.heading_path, block.is_table_row, block.text) for block in document.blocks]
    assert got == [
        (("产品说明",), False, "概述段落。"),
        (("产品说明", "规格", "硬件"), True, "参数: 重量\n规格: 2.1 kg"),
        (("产品说明", "规格", "硬件"), True, "参数: 功耗\n规格: 25 W\n备注: 最大"),
        (("产品说明", "规格", "硬件"), False, "表格后的段落。"),
        (("产品说明", "保修"), False, "整机保修 2 年。"),
    ]


def test_docx_title_from_core_properties(tmp_path: Path) -> None:
    assert load_file(make_docx(tmp_path / "manual.docx", core_title="星河X1 说明书")).title == "星河X1 说明书"


def test_docx_chinese_heading_style_names(tmp_path: Path) -> None:
    document = docx.Document()
    heading_style = document.styles.add_style("标题 1", WD_STYLE_TYPE.PARAGRAPH)
    document.add_paragraph("第一章 休假", style=heading_style)
    document.add_paragraph("年假十天。")
    document.save(str(tmp_path / "zh.docx"))
    loaded = load_file(tmp_path / "zh.docx")
    assert loaded.title == "第一章 休假"
    assert loaded.blocks == [Block("年假十天。", heading_path=("第一章 休假",))]


def test_docx_random_bytes(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match=r"^not a valid \.docx file: it is not a ZIP package"):
        load_file(write(tmp_path / "broken.docx", bytes(range(256)) * 8))


def test_docx_zip_that_is_not_word(tmp_path: Path) -> None:
    workbook = openpyxl.Workbook()
    workbook.active.append(["a"])
    workbook.save(tmp_path / "renamed.docx")
    with pytest.raises(LoaderError, match=r"^not a valid \.docx file: "):
        load_file(tmp_path / "renamed.docx")


# --- HTML -------------------------------------------------------------------------------------------

HTML = """<!DOCTYPE html>
<html><head><meta charset="gbk"><title> 公司 通知 </title>
<style>p { color: red }</style><script>var hidden = "脚本内容";</script></head>
<body>
<nav><a href="/">首页</a> 导航内容</nav>
<h1>假期安排</h1>
<p>春节放假 <b>8 天</b>，<br>请提前安排工作。</p>
<!-- 注释不应出现 -->
<div>直接写在 div 里的文字
  <h2>报销</h2>
  <ul><li>30 天内提交</li><li>附发票</li></ul>
</div>
<table>
  <tr><th>节日</th><th>天数</th></tr>
  <tr><td>清明节</td><td>3</td></tr>
  <tr><td colspan="2">合并单元格</td></tr>
</table>
<pre>代码  保留
  缩进</pre>
</body></html>
"""


def test_html_structure_and_declared_charset(tmp_path: Path) -> None:
    document = load_file(write(tmp_path / "notice.html", HTML.encode("gbk")))
    assert document.title == "公司 通知"
    got = [(block.heading_path, block.is_table_row, block.text) for block in document.blocks]
    assert got == [
        (("假期安排",), False, "春节放假 8 天，\n请提前安排工作。"),
        (("假期安排",), False, "直接写在 div 里的文字"),
        (("假期安排", "报销"), False, "30 天内提交"),
        (("假期安排", "报销"), False, "附发票"),
        (("假期安排", "报销"), True, "节日: 清明节\n天数: 3"),
        (("假期安排", "报销"), True, "节日: 合并单元格\n天数: 合并单元格"),
        (("假期安排", "报销"), False, "代码  保留\n  缩进"),
    ]
    assert "脚本" not in document.text and "导航" not in document.text and "注释" not in document.text


def test_html_title_from_first_h1_and_detected_encoding(tmp_path: Path) -> None:
    page = f"<html><body><h1>公告</h1><p>{ZH_TRADITIONAL}</p></body></html>"
    document = load_file(write(tmp_path / "page.htm", page.encode("big5")))
    assert document.title == "公告"
    assert texts(document) == [ZH_TRADITIONAL]


# --- CSV and Excel ------------------------------------------------------------------------------------


def test_csv_gbk_rows(tmp_path: Path) -> None:
    content = '产品,价格,备注\r\n星河X1,2999,\r\n,,\r\n星河S2,899,"含税, 包邮"\r\n'
    document = load_file(write(tmp_path / "prices.csv", content.encode("gbk")))
    assert document.title == "prices"
    assert document.blocks == [
        Block("产品: 星河X1\n价格: 2999", is_table_row=True),
        Block("产品: 星河S2\n价格: 899\n备注: 含税, 包邮", is_table_row=True),
    ]


def test_csv_semicolon_delimiter_is_sniffed(tmp_path: Path) -> None:
    document = load_file(write(tmp_path / "eu.csv", "name;price\nwidget;3,50\ngadget;12\n"))
    assert texts(document) == ["name: widget\nprice: 3,50", "name: gadget\nprice: 12"]


def test_xlsx_sheets_numbers_and_empty_cells(tmp_path: Path) -> None:
    workbook = openpyxl.Workbook()
    prices = workbook.active
    prices.title = "价格"
    prices.append([None])
    prices.append(["产品", "价格", "上市日期", "备注"])
    prices.append(["星河X1", 2999.0, dt.datetime(2024, 9, 1), None])
    prices.append([None, None, None, None])
    prices.append(["遥控器", 129.5, None, "配件"])
    workbook.create_sheet("空表")
    stock = workbook.create_sheet("库存")
    stock.append(["仓库", "数量"])
    stock.append(["杭州", 120])
    workbook.save(tmp_path / "prices.xlsx")

    document = load_file(tmp_path / "prices.xlsx")
    assert document.title == "prices"
    assert document.blocks == [
        Block("产品: 星河X1\n价格: 2999\n上市日期: 2024-09-01", heading_path=("价格",), is_table_row=True),
        Block("产品: 遥控器\n价格: 129.5\n备注: 配件", heading_path=("价格",), is_table_row=True),
        Block("仓库: 杭州\n数量: 120", heading_path=("库存",), is_table_row=True),
    ]


def test_xlsx_garbage(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match=r"^not a valid \.xlsx file: "):
        load_file(write(tmp_path / "old.xlsx", b"\xd0\xcf\x11\xe0 old binary excel"))


# --- JSON and JSON Lines ----------------------------------------------------------------------------


def test_json_list_of_objects(tmp_path: Path) -> None:
    records = [{"问题": "年假几天？", "答案": "10 天", "标签": ["假期", "HR"]}, {"问题": "空", "答案": None}]
    document = load_file(write(tmp_path / "faq.json", json.dumps(records, ensure_ascii=False)))
    assert document.blocks == [
        Block('问题: 年假几天？\n答案: 10 天\n标签: ["假期","HR"]', is_table_row=True),
        Block("问题: 空", is_table_row=True),
    ]


def test_json_object_holding_one_list(tmp_path: Path) -> None:
    data = {"version": 2, "products": [{"name": "X1", "price": 2999.0, "spec": {"weight": "2.1 kg"}}]}
    document = load_file(write(tmp_path / "catalog.json", json.dumps(data)))
    assert document.blocks == [
        Block(
            'name: X1\nprice: 2999\nspec: {"weight":"2.1 kg"}', heading_path=("products",), is_table_row=True
        )
    ]


def test_json_single_object(tmp_path: Path) -> None:
    document = load_file(
        write(tmp_path / "company.json", '{"name": "星河智联", "employees": 426, "listed": false}')
    )
    assert texts(document) == ["name: 星河智联\nemployees: 426\nlisted: false"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"a": 1,', r"^not valid JSON: .* at line 1, column \d+$"),
        ("[1, 2]", r"^JSON list item 1 is a number; expected a list of objects$"),
        ('"just a string"', r"^JSON must be an object or a list of objects, not a string$"),
    ],
)
def test_json_malformed(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(LoaderError, match=message):
        load_file(write(tmp_path / "bad.json", content))


def test_jsonl_records(tmp_path: Path) -> None:
    content = (
        '{"q": "报销多久到账？", "a": "审核通过后 3 个工作日"}\n\n{"q": "VPN 地址", "a": "vpn.example"}\n'
    )
    document = load_file(write(tmp_path / "qa.jsonl", content))
    assert texts(document) == ["q: 报销多久到账？\na: 审核通过后 3 个工作日", "q: VPN 地址\na: vpn.example"]
    assert all(block.is_table_row for block in document.blocks)


def test_jsonl_bad_line_is_named(tmp_path: Path) -> None:
    content = '{"q": 1}\n{"q": 2}\n{"q": 3,,}\n'
    with pytest.raises(LoaderError, match=r"^not valid JSON Lines: line 3: "):
        load_file(write(tmp_path / "bad.jsonl", content))


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match=r"^not valid JSON Lines: line 2 is an array, not an object$"):
        load_file(write(tmp_path / "bad.jsonl", '{"q": 1}\n[1, 2]\n'))


# --- the sample documents of the quick start ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fact"),
    [
        ("employee_handbook.pdf", "每年 10 天"),
        ("product_manual_x1.docx", "拾音半径 8 米"),
        ("it_faq.md", "vpn.xinghe.example"),
        ("company_profile.txt", "2016年3月18日"),
        ("price_list_2025.xlsx", "价格: 2999"),
        ("holidays_2025.csv", "放假日期: 10月1日至10月8日"),
        ("travel_expense_policy.md", "per diem of USD 60"),
    ],
)
def test_example_documents_load(name: str, fact: str) -> None:
    document = load_file(EXAMPLES / name)
    assert fact in document.text.replace("\n", "")


# --- PowerPoint -------------------------------------------------------------------------------------


def test_pptx_slides_are_pages_with_titles_tables_and_notes(tmp_path: Path) -> None:
    document = load_file(make_pptx(tmp_path / "report.pptx"))
    assert document.title == "2024 年第三季度经营报告"
    assert document.page_count == 3
    got = [(block.page, block.heading_path, block.is_table_row, block.text) for block in document.blocks]
    title, sales = ("2024 年第三季度经营报告",), ("各地区销售额",)
    assert got == [
        (1, title, False, "财务部\nFinance team"),
        (2, sales, True, "地区: 华东\n销售额: 1200 万元\n同比增长: 12%"),
        (2, sales, True, "地区: 华南\n销售额: 860 万元\n同比增长: 8%"),
        (2, sales, False, "数据截至九月底。"),
        (2, sales, False, "华北另行统计"),
        (2, (*sales, "Speaker notes"), False, "强调华东增长最快。"),
        (2, (*sales, "Speaker notes"), False, "Q4 目标另议。"),
    ]


def test_pptx_title_from_core_properties(tmp_path: Path) -> None:
    assert load_file(make_pptx(tmp_path / "r.pptx", core_title="Q3 经营")).title == "Q3 经营"


def test_pptx_random_bytes(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match=r"^not a valid \.pptx file: it is not a ZIP package .*\.ppt file"):
        load_file(write(tmp_path / "old.pptx", bytes(range(256)) * 8))


def test_pptx_zip_that_is_not_powerpoint(tmp_path: Path) -> None:
    make_docx(tmp_path / "renamed.pptx")
    with pytest.raises(LoaderError, match=r"^not a valid \.pptx file: "):
        load_file(tmp_path / "renamed.pptx")


# --- OCR: scanned PDF pages, image files, pictures in documents ---------------------------------------

needs_ocr = pytest.mark.skipif(not ocr_installed(), reason="needs the `ocr` extra (rapidocr-onnxruntime)")


def report_accuracy(capsys: pytest.CaptureFixture[str], what: str, expected: str, got: str) -> float:
    """Return the OCR character accuracy of `got`, printed past pytest's capture so every run shows it."""
    accuracy = char_accuracy(expected, got)
    with capsys.disabled():
        print(f"\n  OCR character accuracy, {what}: {accuracy:.1%} ({got!r})")
    return accuracy


@needs_ocr
def test_scanned_pdf_page_is_read_by_ocr_with_its_page_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pages: list[str] = []
    reader = ImageReader(on_image=pages.append)
    document = load_file(scanned_pdf(tmp_path / "scan.pdf"), reader)
    assert document.page_count == 2
    assert pages == ["page 2/2"]  # the page with a text layer is not OCR'd
    assert [(b.page, b.ocr) for b in document.blocks] == [(1, False), (2, True), (2, True)]
    assert document.blocks[0].text == "Cover page with a text layer."
    scanned = "\n".join(b.text for b in document.blocks if b.page == 2)
    assert report_accuracy(capsys, "scanned PDF page", SCANNED_ZH + SCANNED_EN, scanned) >= 0.9
    assert "三十天" in scanned and "server room code" in scanned


@needs_ocr
def test_photo_with_a_tilted_line_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = load_file(photo_png(tmp_path / "notice.png"))
    assert document.title == "notice"
    assert all(block.ocr and block.page is None for block in document.blocks)
    got = "\n".join(texts(document))
    assert report_accuracy(capsys, "photo-like PNG with a tilted line", PHOTO_ZH + PHOTO_EN, got) >= 0.9
    assert "8021" in got


@needs_ocr
def test_multi_page_tiff_frames_are_pages(tmp_path: Path) -> None:
    first, second = text_page_image(["第一页：年假十天。"]), text_page_image(["第二页：病假另计。"])
    first.save(tmp_path / "fax.tiff", save_all=True, append_images=[second])
    document = load_file(tmp_path / "fax.tiff")
    assert document.page_count == 2
    assert [(block.page, "年假" in block.text, "病假" in block.text) for block in document.blocks] == [
        (1, True, False),
        (2, False, True),
    ]


class FailsOnFirstPage(ImageReader):
    """Reads images like ImageReader, except that the first page fails as an engine error would."""

    def read_image(self, image: object, where: str) -> str:
        if where.startswith("page 1/"):
            raise LoaderError(f"{where}: OCR failed: onnxruntime error")
        return super().read_image(image, where)


@needs_ocr
def test_a_page_failing_ocr_is_reported_and_the_others_kept(tmp_path: Path) -> None:
    first, second = text_page_image(["第一页：年假十天。"]), text_page_image(["第二页：病假另计。"])
    write(tmp_path / "two.pdf", image_pdf([first, second]))
    document = load_file(tmp_path / "two.pdf", FailsOnFirstPage())
    assert document.problems == ["page 1/2: OCR failed: onnxruntime error"]
    assert [block.page for block in document.blocks] == [2]
    assert "病假" in document.blocks[0].text


@needs_ocr
def test_pictures_in_documents_are_read_only_when_asked(tmp_path: Path) -> None:
    picture = io.BytesIO()
    text_page_image(["图中文字：机房门禁密码每月更换。"]).save(picture, "PNG")
    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[5])
    slide.shapes.title.text = "门禁"
    slide.shapes.add_picture(io.BytesIO(picture.getvalue()), Inches(1), Inches(2))
    deck.save(str(tmp_path / "deck.pptx"))
    word = docx.Document()
    word.add_heading("门禁", level=1)
    word.add_picture(io.BytesIO(picture.getvalue()))
    word.add_paragraph("图后的段落。")
    word.save(str(tmp_path / "doc.docx"))

    with pytest.raises(LoaderError, match="^no text could be extracted$"):  # off by default: only a picture
        load_file(tmp_path / "deck.pptx")
    assert texts(load_file(tmp_path / "doc.docx")) == ["图后的段落。"]
    reader = ImageReader(OcrConfig(embedded_images=True))
    slides = load_file(tmp_path / "deck.pptx", reader).blocks
    assert [(b.page, b.heading_path, b.ocr) for b in slides] == [(1, ("门禁",), True)]
    assert "每月更换" in slides[0].text
    words = load_file(tmp_path / "doc.docx", reader).blocks
    assert [(b.heading_path, b.ocr) for b in words] == [(("门禁",), True), (("门禁",), False)]
    assert "门禁密码" in words[0].text


class Stop(BaseException):
    """What a progress callback raises to stop an ingestion (the server's JobInterrupted is one)."""


def stop(where: str) -> None:
    raise Stop(where)


@needs_ocr
def test_a_stop_raised_by_the_progress_callback_is_not_turned_into_a_failed_file(tmp_path: Path) -> None:
    with pytest.raises(Stop, match="page 2/2"):
        load_file(scanned_pdf(tmp_path / "scan.pdf"), ImageReader(on_image=stop))
    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[5])
    slide.shapes.title.text = "图"
    picture = io.BytesIO()
    text_page_image(["图中文字"]).save(picture, "PNG")
    slide.shapes.add_picture(picture, Inches(1), Inches(2))
    deck.save(str(tmp_path / "deck.pptx"))
    with pytest.raises(Stop, match="slide 1"):
        load_file(tmp_path / "deck.pptx", ImageReader(OcrConfig(embedded_images=True), on_image=stop))


def test_scanned_pdf_without_ocr_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ocr_module, "ocr_installed", lambda: False)  # as on an install without the extra
    blank_scan = write(tmp_path / "scan.pdf", image_pdf([Image.new("RGB", (200, 100), "white")]))
    with pytest.raises(LoaderError, match=r"the PDF looks scanned .*pip install 'kbqa\[ocr\]'"):
        load_file(blank_scan)
    with pytest.raises(
        LoaderError, match=r"^an image is read by OCR, and OCR is not installed; .*kbqa\[ocr\]"
    ):
        load_file(photo_png(tmp_path / "photo.png"))


def test_ocr_off_refuses_images_and_on_without_the_extra_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(LoaderError, match=r"OCR is off \(ingestion\.ocr\.enabled\)"):
        load_file(photo_png(tmp_path / "photo.png"), ImageReader(OcrConfig(enabled="off")))
    monkeypatch.setattr(ocr_module, "ocr_installed", lambda: False)
    with pytest.raises(ValueError, match=r"ingestion\.ocr\.enabled is 'on' but OCR is not installed"):
        ImageReader(OcrConfig(enabled="on"))


def test_image_that_is_not_one(tmp_path: Path) -> None:
    if not ocr_installed():
        pytest.skip("needs the `ocr` extra")
    with pytest.raises(LoaderError, match="^not a readable image: "):
        load_file(write(tmp_path / "fake.jpg", b"GIF89a but not really" * 10))


# --- limits: zip bombs and giant documents -------------------------------------------------------------


def test_docx_bomb_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    bomb = docx_bomb(tmp_path / "bomb.docx", 300_000)  # 27 MiB of XML in about 100 KB
    assert bomb.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(LoaderError, match=r"unpacks to \d+ times its size.*max_zip_ratio"):
            load_file(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"refusing the bomb took {peak} bytes"
    # Each limit on its own, and a document under them all still loads.
    with pytest.raises(
        LoaderError, match=r"XML unpacks to 27 MiB, more than 16 MiB \(ingestion.max_tree_xml_mb\)"
    ):
        load_file(bomb, limits=LoadLimits(max_zip_ratio=10_000, max_tree_xml_mb=16))
    with pytest.raises(
        LoaderError, match=r"unpacks to 27 MiB, more than 10 MiB \(ingestion.max_unzipped_mb\)"
    ):
        load_file(bomb, limits=LoadLimits(max_unzipped_mb=10))
    with pytest.raises(LoaderError, match=r"holds \d+ entries, more than 5 \(ingestion.max_zip_entries\)"):
        load_file(bomb, limits=LoadLimits(max_zip_entries=5))
    small = docx_bomb(tmp_path / "small.docx", 1_000)
    assert len(load_file(small).blocks) > 1_000


def test_xlsx_with_too_many_entries_is_refused(tmp_path: Path) -> None:
    workbook = openpyxl.Workbook()
    for i in range(30):
        workbook.create_sheet(f"s{i}").append(["a", i])
    workbook.save(tmp_path / "many.xlsx")
    with pytest.raises(LoaderError, match=r"entries, more than 20"):
        load_file(tmp_path / "many.xlsx", limits=LoadLimits(max_zip_entries=20))
    assert load_file(tmp_path / "many.xlsx").blocks


def test_a_document_over_max_document_chars_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "long.txt", ("年假十天。" * 2_000).encode())
    with pytest.raises(
        LoaderError, match=r"holds 10000 characters of text, more than 9999 \(ingestion.max_document_chars\)"
    ):
        load_file(path, limits=LoadLimits(max_document_chars=9_999))
    assert load_file(path, limits=LoadLimits(max_document_chars=10_000)).blocks
