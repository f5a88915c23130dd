"""Regenerate the binary sample documents of examples/docs/ (PDF, Word, Excel) and the Chinese PDF fixture.

The text samples (.md, .txt, .csv) are written by hand and live next to the generated files. Run from
anywhere: `python examples/make_docs.py`. Needs reportlab (`pip install reportlab`) besides the
project's dependencies. reportlab's built-in CID font STSong-Light needs no font file and gives PDFs
whose Chinese text pypdf extracts exactly; `check_pdf` makes sure it still does.
"""

from __future__ import annotations

from pathlib import Path

import docx
import openpyxl
from openpyxl.styles import Font
from pypdf import PdfReader
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "examples" / "docs"
FIXTURES = ROOT / "tests" / "data"
CJK_FONT = "STSong-Light"

# Each page: a heading and its paragraphs.
HANDBOOK_PAGES: list[tuple[str, list[str]]] = [
    (
        "第一章 总则与工作时间",
        [
            "本手册适用于杭州星河智联科技有限公司（以下简称“公司”）全体正式员工及试用期员工，"
            "自2025年1月1日起施行，由人力资源部负责解释。",
            "公司实行标准工时制：周一至周五 9:00–18:00，午休 12:00–13:30。研发、产品岗位可申请弹性工作制，"
            "上班打卡时间为 8:30–10:00，每日工作满 8 小时即可。",
            "考勤以星河OA系统打卡记录为准。每月允许补卡 3 次，超过 3 次的缺卡按事假半天处理。"
            "迟到 30 分钟以内每月累计不超过 3 次的不扣薪。",
            "试用期一般为 3 个月，表现优秀者可由部门负责人申请提前转正，最短不少于 1 个月。",
        ],
    ),
    (
        "第二章 休假制度",
        [
            "年假：员工累计工作满 1 年后享受带薪年假。累计工作满 1 年不满 5 年的，每年 10 天；"
            "满 5 年不满 10 年的，每年 12 天；满 10 年及以上的，每年 15 天。"
            "当年未休完的年假可顺延至次年 3 月 31 日，逾期作废，不折算现金。",
            "病假：每年享有 12 天全薪病假，超出部分按基本工资的 80% 发放。"
            "连续病假 2 天以上须提供二级及以上医院出具的病假证明。",
            "婚假 13 天（含法定 3 天），产假 158 天，陪产假 15 天，均为全薪。丧假 3 天。",
            "请假流程：所有假期须在星河OA系统“请假申请”中提交。年假须提前 3 个工作日申请；"
            "连续请假 3 天以上须经部门总监审批，5 天以上还须抄送人力资源部。",
        ],
    ),
    (
        "第三章 费用报销",
        [
            "报销时限：费用发生后 30 天内在星河OA系统“费用报销”中提交，并附电子发票。"
            "财务部在 5 个工作日内完成审核，审核通过后 3 个工作日内打入员工工资卡。"
            "超过 90 天未提交的费用原则上不予报销。",
            "差旅标准：北京、上海、广州、深圳住宿每晚不超过 500 元，其他城市不超过 350 元；"
            "出差餐补每天 100 元，无需发票。城际交通乘坐高铁二等座或飞机经济舱，"
            "单程 4 小时以上的航班经部门总监批准可乘坐超级经济舱。",
            "招待费：单次超过 2000 元须事先填写《业务招待申请》并经分管副总裁批准。",
            "发票要求：抬头为“杭州星河智联科技有限公司”，须填写公司税号。"
            "报销问题请联系财务部张敏，邮箱 finance@xinghe.example，内线 8012。",
        ],
    ),
]

PRODUCT_SPECS = [
    ("参数", "规格"),
    ("摄像头", "4K 超高清，120° 广角，10 倍数字变焦"),
    ("麦克风", "8 麦克风阵列，拾音半径 8 米"),
    ("扬声器", "2 × 10 W 全频扬声器"),
    ("网络", "Wi-Fi 6、千兆以太网口"),
    ("接口", "HDMI 输出 × 2，USB-C × 1，USB-A × 2"),
    ("尺寸", "620 × 90 × 95 mm"),
    ("重量", "2.1 kg"),
    ("整机功耗", "不超过 25 W"),
    ("工作温度", "0 °C 至 40 °C"),
]

PRICE_SHEETS: dict[str, list[tuple[object, ...]]] = {
    "会议终端": [
        ("产品", "型号", "价格", "保修年限", "备注"),
        ("星河X1 智能会议终端", "XH-X1", 2999, 2, "适合 4–12 人会议室"),
        ("星河X1 Pro 智能会议终端", "XH-X1P", 4599, 3, "含 55 英寸触控屏支架"),
        ("星河S2 桌面会议宝", "XH-S2", 899, 1, None),
    ],
    "配件": [
        ("产品", "型号", "价格", "保修年限", "备注"),
        ("扩展麦克风", "XH-M8", 699, 1, "每台终端最多级联 2 个"),
        ("遥控器", "XH-RC1", 129.5, 1, None),
        ("壁挂支架", "XH-WB2", 199, None, "免费上门安装（限杭州市区）"),
    ],
}


def write_pdf(path: Path, title: str, pages: list[tuple[str, list[str]]]) -> None:
    """Write a PDF with one page per (heading, paragraphs) item, set in a built-in Chinese font."""
    pdfmetrics.registerFont(UnicodeCIDFont(CJK_FONT))
    body = ParagraphStyle("body", fontName=CJK_FONT, fontSize=11, leading=19, spaceAfter=8, wordWrap="CJK")
    heading = ParagraphStyle("heading", parent=body, fontSize=16, leading=26, spaceAfter=12)
    story: list = []
    for number, (page_heading, paragraphs) in enumerate(pages):
        if number:
            story.append(PageBreak())
        story.append(Paragraph(page_heading, heading))
        story.extend(Paragraph(text, body) for text in paragraphs)
    # invariant: no timestamps or random IDs, so regenerating gives the same bytes.
    document = SimpleDocTemplate(str(path), pagesize=A4, title=title, author="星河智联", invariant=True)
    document.build(story)


def check_pdf(path: Path, expected_pages: int, phrases: list[str]) -> None:
    """Raise if pypdf does not read back the page count and each phrase (line breaks ignored)."""
    pages = [page.extract_text().replace("\n", "") for page in PdfReader(path).pages]
    missing = [phrase for phrase in phrases if not any(phrase in page for page in pages)]
    if len(pages) != expected_pages or missing:
        raise SystemExit(f"{path.name}: pypdf read {len(pages)} pages; phrases not found: {missing}")


def write_product_manual(path: Path) -> None:
    """Write the 星河X1 product manual: headings, paragraphs and a specification table."""
    document = docx.Document()
    document.core_properties.title = "星河X1 智能会议终端产品说明"
    document.add_heading("星河X1 智能会议终端产品说明", level=0)
    document.add_heading("1 产品概述", level=1)
    document.add_paragraph(
        "星河X1 是杭州星河智联科技有限公司于 2024 年 9 月发布的一体化智能会议终端，集摄像头、麦克风阵列、"
        "扬声器和会议软件于一体，适合 4 至 12 人的中小型会议室，开箱 10 分钟即可完成部署。"
    )
    document.add_heading("2 主要功能", level=1)
    document.add_heading("2.1 视频会议", level=2)
    document.add_paragraph(
        "支持腾讯会议、飞书、钉钉和 Zoom 等主流会议平台，最多同时显示 16 路视频画面。"
        "发言人追踪功能会在 1 秒内把镜头对准正在说话的人。"
    )
    document.add_heading("2.2 智能降噪", level=2)
    document.add_paragraph("内置 AI 降噪算法，可消除键盘敲击声、空调声等常见噪声，回声消除延迟低于 30 毫秒。")
    document.add_heading("3 技术规格", level=1)
    table = document.add_table(rows=len(PRODUCT_SPECS), cols=2)
    table.style = "Table Grid"
    for row, values in zip(table.rows, PRODUCT_SPECS, strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    document.add_heading("4 保修与服务", level=1)
    document.add_paragraph(
        "整机保修 2 年，麦克风和遥控器等配件保修 1 年。保修期内非人为损坏免费维修，"
        "杭州、上海、北京三地提供 48 小时上门服务。"
        "售后邮箱 support@xinghe.example，服务时间为工作日 9:00–18:00。"
    )
    document.save(str(path))


def write_price_list(path: Path) -> None:
    """Write the 2025 price list workbook, one sheet per product family."""
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    workbook.properties.title = "2025 年产品价格表"
    for name, rows in PRICE_SHEETS.items():
        sheet = workbook.create_sheet(name)
        for row in rows:
            sheet.append(row)
        for cell in sheet[1]:
            cell.font = Font(bold=True)
    workbook.save(path)


def main() -> None:
    """Write every generated sample document and the test fixture, checking the PDFs read back."""
    handbook = DOCS / "employee_handbook.pdf"
    write_pdf(handbook, "星河智联员工手册（2025版）", HANDBOOK_PAGES)
    check_pdf(handbook, 3, ["每年 10 天", "费用发生后 30 天内", "finance@xinghe.example"])
    write_product_manual(DOCS / "product_manual_x1.docx")
    write_price_list(DOCS / "price_list_2025.xlsx")

    fixture = FIXTURES / "zh_two_pages.pdf"
    write_pdf(
        fixture, "中文测试文档", [("第一页", ["年假每年十天。"]), ("第二页", ["报销须在三十天内提交。"])]
    )
    check_pdf(fixture, 2, ["年假每年十天。", "报销须在三十天内提交。"])
    for path in (handbook, DOCS / "product_manual_x1.docx", DOCS / "price_list_2025.xlsx", fixture):
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
