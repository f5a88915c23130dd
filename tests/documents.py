"""Documents the tests build: a slide deck, a PDF with a ruled table, scanned pages and a photo."""

from __future__ import annotations

import io
import re
import subprocess
import zipfile
from pathlib import Path

import docx
import numpy as np
import pptx
import pypdfium2
import pytest
from fpdf import FPDF
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pptx.util import Inches
from pypdf import PdfReader, PdfWriter
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.utils import ImageReader as PdfImage
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Paragraph, SimpleDocTemplate, Table, TableStyle


def make_pptx(path: Path, core_title: str = "") -> Path:
    """Return `path` after writing a deck: a title slide, a slide with a table, a text box and notes."""
    deck = pptx.Presentation()
    deck.core_properties.title = core_title
    first = deck.slides.add_slide(deck.slide_layouts[0])  # title and subtitle
    first.shapes.title.text = "2024 年第三季度经营报告"
    first.placeholders[1].text = "财务部\nFinance team"
    second = deck.slides.add_slide(deck.slide_layouts[5])  # title only
    second.shapes.title.text = "各地区销售额"
    # Added before the table but placed below it: read after it, as a reader would.
    second.shapes.add_textbox(Inches(1), Inches(5), Inches(6), Inches(1)).text_frame.text = "数据截至九月底。"
    rows = [("地区", "销售额", "同比增长"), ("华东", "1200 万元", "12%"), ("华南", "860 万元", "8%")]
    table = second.shapes.add_table(3, 3, Inches(1), Inches(2), Inches(6), Inches(2)).table
    for r, values in enumerate(rows):
        for c, value in enumerate(values):
            table.cell(r, c).text = value
    group = second.shapes.add_group_shape()
    group.shapes.add_textbox(Inches(1), Inches(6), Inches(3), Inches(1)).text_frame.text = "华北另行统计"
    second.notes_slide.notes_text_frame.text = "强调华东增长最快。\n\nQ4 目标另议。"
    deck.slides.add_slide(deck.slide_layouts[6])  # blank: no text, still counted
    deck.save(str(path))
    return path


def table_pdf(path: Path) -> Path:
    """Return `path` after writing a one-page PDF: a paragraph, a ruled Chinese table, a paragraph."""
    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))  # built into every PDF reader: no font file
    style = ParagraphStyle("zh", fontName="STSong-Light", fontSize=11, leading=16)
    rows = [
        ["城市", "差旅补贴", "住宿标准"],
        ["北京", "每天 200 元", "每晚 600 元"],
        ["上海", "每天 180 元", "每晚 550 元，含早餐"],
        ["Shenzhen", "150 yuan a day", "500 yuan a night"],
    ]
    # The narrow last column wraps "每晚 550 元，含早餐" after "550": its lines join without the space.
    table = Table(rows, colWidths=[70, 110, 70])
    table.setStyle(
        TableStyle(
            [("FONTNAME", (0, 0), (-1, -1), "STSong-Light"), ("GRID", (0, 0), (-1, -1), 0.5, colors.black)]
        )
    )
    table._cellvalues[2][2] = Paragraph(rows[2][2], style)
    story = [Paragraph("差旅标准如下表所示。", style), table, Paragraph("超出标准的部分由员工自理。", style)]
    SimpleDocTemplate(str(path), pagesize=A4).build(story)
    return path


SCANNED_ZH = "扫描件：差旅报销须在三十天内提交。"
SCANNED_EN = "Scanned notice: the server room code is 4711."
PHOTO_ZH = "会议室预订须提前一天。"
PHOTO_EN = "Room booking: call 8021"


def cjk_font() -> str:
    """Return the path of an installed font with Chinese glyphs; skip the test when there is none."""
    try:
        listed = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, check=False)
    except FileNotFoundError:  # no fontconfig, so no fonts either
        listed = subprocess.CompletedProcess([], 0, stdout="")
    paths = sorted(line.split(":")[0] for line in listed.stdout.splitlines() if line.strip())
    if not paths:
        pytest.skip("needs a Chinese font (Debian: fonts-wqy-microhei, installed by .ci/run)")
    return paths[0]


def text_page_image(lines: list[str], size: tuple[float, float] = (420, 120)) -> Image.Image:
    """Return a small PDF page with `lines` (the Chinese font embedded), rendered at 200 dpi by pdfium."""
    pdfmetrics.registerFont(TTFont("CJK", cjk_font(), subfontIndex=0))
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=size)
    canvas.setFont("CJK", 13)
    for n, line in enumerate(lines):
        canvas.drawString(20, size[1] - 40 - 26 * n, line)
    canvas.save()
    return pypdfium2.PdfDocument(buffer.getvalue())[0].render(scale=200 / 72).to_pil()


def image_pdf(pages: list[Image.Image], dpi: int = 200) -> bytes:
    """Return a PDF whose pages are only the given images (kept lossless, as a clean scan), at `dpi`."""
    buffer = io.BytesIO()
    canvas = Canvas(buffer)
    for image in pages:
        width, height = image.width * 72 / dpi, image.height * 72 / dpi
        canvas.setPageSize((width, height))
        canvas.drawImage(PdfImage(image), 0, 0, width, height)
        canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def scanned_pdf(path: Path) -> Path:
    """Return `path` after writing a two-page PDF: page 1 has a text layer, page 2 is only an image."""
    cover = FPDF()
    cover.set_font("helvetica", size=12)
    cover.add_page()
    cover.multi_cell(0, 8, "Cover page with a text layer.")
    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(cover.output())))
    writer.append(PdfReader(io.BytesIO(image_pdf([text_page_image([SCANNED_ZH, SCANNED_EN])]))))
    writer.write(path)
    return path


def photo_png(path: Path) -> Path:
    """Return `path` after writing a photo-like PNG: grey gradient and noise, one straight and one tilted line."""
    rng = np.random.default_rng(7)
    width, height = 640, 260
    background = np.linspace(222, 250, width)[None, :, None] + rng.normal(0, 6, (height, width, 3))
    photo = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    font = ImageFont.truetype(cjk_font(), 30)
    ImageDraw.Draw(photo).text((30, 30), PHOTO_ZH, font=font, fill=(30, 30, 40))
    tilted = Image.new("L", (560, 56), 0)
    ImageDraw.Draw(tilted).text((10, 8), PHOTO_EN, font=font, fill=255)
    tilted = tilted.rotate(8, expand=True, resample=Image.Resampling.BICUBIC)
    photo.paste(Image.new("RGB", tilted.size, (20, 20, 60)), (30, 115), tilted)
    photo.filter(ImageFilter.GaussianBlur(0.6)).save(path)
    return path


def char_accuracy(expected: str, got: str) -> float:
    """Return 1 - (edit distance / length) over the non-space characters of `expected` and `got`."""
    a, b = "".join(expected.split()), "".join(got.split())
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return 1 - row[-1] / len(a)


def make_docx(path: Path, core_title: str = "") -> Path:
    """Return `path` after writing a .docx with a title, headings, paragraphs and a table, in that order."""
    document = docx.Document()
    document.core_properties.title = core_title
    document.add_heading("产品说明", level=0)
    document.add_paragraph("概述段落。")
    document.add_heading("规格", level=1)
    document.add_heading("硬件", level=2)
    table = document.add_table(rows=3, cols=3)
    rows = [("参数", "规格", "备注"), ("重量", "2.1 kg", ""), ("功耗", "25 W", "最大")]
    for row, values in zip(table.rows, rows, strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    document.add_paragraph("表格后的段落。")
    document.add_paragraph("   ")
    document.add_heading("保修", level=1)
    document.add_paragraph("整机保修 2 年。")
    document.save(str(path))
    return path


def docx_bomb(path: Path, paragraphs: int) -> Path:
    """Return `path` after writing a valid .docx whose body repeats one paragraph `paragraphs` times."""
    make_docx(path.with_suffix(".plain.docx"))
    with zipfile.ZipFile(path.with_suffix(".plain.docx")) as plain:
        parts = {info.filename: plain.read(info) for info in plain.infolist()}
    body = parts["word/document.xml"].decode()
    paragraph = "<w:p><w:r><w:t>员工入职满一年后，每年享有十天带薪年假。</w:t></w:r></w:p>"
    start = body.index("<w:body>") + len("<w:body>")
    parts["word/document.xml"] = (body[:start] + paragraph * paragraphs + body[start:]).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as bomb:
        for name, data in parts.items():
            bomb.writestr(name, data)
    return path


LAST_ROW = '<row r="1048576"><c r="XFD1048576" t="inlineStr"><is><t>end</t></is></c></row>'


def xlsx_dimension_bomb(path: Path) -> Path:
    """Return `path` after writing a 5 KB .xlsx whose sheet claims the size A1:XFD1048576 (16,384 columns
    by 1,048,576 rows): two real rows at the top and one cell, "end", at XFD1048576."""
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["编号", "规定"])
    sheet.append(["KB0001", "员工入职满一年后，每年享有十天带薪年假。"])
    workbook.save(path.with_suffix(".plain.xlsx"))
    with zipfile.ZipFile(path.with_suffix(".plain.xlsx")) as plain:
        parts = {info.filename: plain.read(info) for info in plain.infolist()}
    xml = parts["xl/worksheets/sheet1.xml"].decode()
    xml = re.sub(r'<dimension ref="[^"]*"\s*/>', '<dimension ref="A1:XFD1048576"/>', xml)
    # One cell in the sheet's last row and column: every row between is missing, and is made up.
    parts["xl/worksheets/sheet1.xml"] = xml.replace("</sheetData>", LAST_ROW + "</sheetData>").encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bomb:
        for name, data in parts.items():
            bomb.writestr(name, data)
    return path
