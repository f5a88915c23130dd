"""Ingestion end to end on real files: skip unchanged, replace changed, fail bad files alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from documents import make_pptx, photo_png, scanned_pdf, table_pdf

from app.services import KnowledgeService
from app.settings import load_settings
from ingestion.loaders import ocr as ocr_module
from ingestion.loaders.ocr import ocr_installed
from retrieval import SearchOptions

ANNUAL_LEAVE = (
    "# 年假制度\n\n正式员工每年享有带薪年假。工作满一年不满十年的，年假为五天；满十年的，年假为十天。\n"
)
EXPENSES = "# 报销流程\n\n差旅费用应在出差结束后三十天内通过财务系统提交报销申请，并附上发票原件。\n"
BACKUP = "机房运维说明\n\n数据库每天凌晨两点自动备份，备份文件保留三十天。\n"


@pytest.fixture
def service(tmp_path: Path, e5_embedder) -> KnowledgeService:
    svc = KnowledgeService(load_settings(data_dir=tmp_path / "data"))
    svc.embedder = e5_embedder  # the session's loaded model, to avoid loading it once per test
    return svc


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    (folder / "hr").mkdir(parents=True)
    (folder / "hr" / "leave.md").write_text(ANNUAL_LEAVE, encoding="utf-8")
    (folder / "expenses.md").write_text(EXPENSES, encoding="utf-8")
    (folder / "backup.txt").write_bytes(BACKUP.encode("gbk"))
    return folder


def statuses(report) -> dict[str, str]:
    return {outcome.source: outcome.status for outcome in report.outcomes}


def test_build_search_skip_and_replace(service: KnowledgeService, docs: Path) -> None:
    report = service.ingest("hr", [docs])
    assert statuses(report) == {
        "docs/hr/leave.md": "added",
        "docs/expenses.md": "added",
        "docs/backup.txt": "added",
    }
    assert report.chunks >= 3

    hits = service.search("hr", "员工一年有几天年假？", SearchOptions(k=3))
    assert hits[0].source == "docs/hr/leave.md"
    assert hits[0].heading_path == ("年假制度",)
    assert "五天" in hits[0].text
    assert -1.0 <= hits[-1].score <= hits[0].score <= 1.0
    gbk_hits = service.search("hr", "数据库什么时候备份", SearchOptions(k=1))
    assert gbk_hits[0].source == "docs/backup.txt" and "凌晨两点" in gbk_hits[0].text

    again = service.ingest("hr", [docs])
    assert set(statuses(again).values()) == {"skipped"}

    (docs / "expenses.md").write_text(EXPENSES.replace("三十天", "十五天"), encoding="utf-8")
    changed = service.ingest("hr", [docs])
    assert statuses(changed)["docs/expenses.md"] == "replaced"
    kb = service.open("hr")
    assert kb.counts()[0] == 3
    assert kb.check().ok
    texts = " ".join(hit.text for hit in service.search("hr", "报销申请的期限", SearchOptions(k=5)))
    assert "十五天" in texts and "三十天内通过" not in texts


def test_same_content_under_another_name_is_skipped(
    service: KnowledgeService, docs: Path, tmp_path: Path
) -> None:
    service.ingest("hr", [docs])
    copy = tmp_path / "copy-of-leave.md"
    copy.write_text(ANNUAL_LEAVE, encoding="utf-8")
    report = service.ingest("hr", [copy])
    assert report.outcomes[0].status == "skipped"


def test_a_changed_file_equal_to_another_document_replaces_its_old_version_and_keeps_its_id(
    service: KnowledgeService, docs: Path
) -> None:
    service.ingest("hr", [docs])
    kb = service.open("hr")
    before = {d.source: d for d in kb.documents()}
    # Unchanged means unchanged for that source: expenses.md now holds what leave.md holds.
    (docs / "expenses.md").write_text(ANNUAL_LEAVE, encoding="utf-8")
    report = service.ingest("hr", [docs])
    assert statuses(report)["docs/expenses.md"] == "replaced"
    after = {d.source: d for d in kb.documents()}
    assert after["docs/expenses.md"].content_hash == after["docs/hr/leave.md"].content_hash
    assert after["docs/expenses.md"].id == before["docs/expenses.md"].id  # links to it stay valid
    assert after["docs/expenses.md"].created_at == before["docs/expenses.md"].created_at
    texts = " ".join(hit.text for hit in service.search("hr", "差旅费用报销申请", SearchOptions(k=5)))
    assert "差旅费用应在出差结束后" not in texts
    assert kb.check().ok


def test_bad_files_fail_alone_and_leave_the_knowledge_base_as_it_was(
    service: KnowledgeService, docs: Path, tmp_path: Path
) -> None:
    service.ingest("hr", [docs])
    kb = service.open("hr")
    before = ([(d.source, d.content_hash) for d in kb.documents()], kb.counts())
    kb.close()

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.txt").write_bytes(b"")
    (bad / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (bad / "photo.png").write_bytes(b"\x89PNG\r\n")  # a truncated image
    (bad / "old.ppt").write_bytes(b"\xd0\xcf\x11\xe0")
    (bad / "blank.md").write_text("   \n\n  ", encoding="utf-8")
    (bad / "good.txt").write_text("新员工入职第一天需要领取工牌和电脑。", encoding="utf-8")
    report = service.ingest("hr", [bad, tmp_path / "missing.txt"])

    by_source = {o.source: o for o in report.outcomes}
    assert by_source["bad/empty.txt"].reason == "file is empty"
    assert "not a valid PDF" in by_source["bad/broken.pdf"].reason
    unreadable = "not a readable image" if ocr_installed() else "OCR is not installed"
    assert by_source["bad/photo.png"].status == "failed" and unreadable in by_source["bad/photo.png"].reason
    assert by_source["bad/old.ppt"].status == "skipped" and "unsupported" in by_source["bad/old.ppt"].reason
    assert "no text" in by_source["bad/blank.md"].reason
    assert by_source[str(tmp_path / "missing.txt")].reason == "no such file or folder"
    assert by_source["bad/good.txt"].status == "added"
    assert report.count("failed") == 5

    kb = service.open("hr")
    documents = [(d.source, d.content_hash) for d in kb.documents()]
    assert documents[:-1] == before[0] and documents[-1][0] == "bad/good.txt"
    assert kb.counts()[1] == before[1][1] + 1
    assert kb.check().ok


def test_unknown_type_named_directly_fails(service: KnowledgeService, tmp_path: Path) -> None:
    slides = tmp_path / "slides.ppt"
    slides.write_bytes(b"\xd0\xcf\x11\xe0")
    report = service.ingest("hr", [slides])
    assert report.outcomes[0].status == "failed"
    assert "unsupported file type '.ppt'" in report.outcomes[0].reason


def test_small_batches_still_store_whole_documents(tmp_path: Path, e5_embedder, docs: Path) -> None:
    svc = KnowledgeService(load_settings(data_dir=tmp_path / "data", ingestion={"batch_chunks": 1}))
    svc.embedder = e5_embedder
    report = svc.ingest("hr", [docs])
    assert report.count("added") == 3
    kb = svc.open("hr")
    assert kb.check().ok
    assert sum(d.chunk_count for d in kb.documents()) == kb.counts()[1]


def test_splitter_settings_are_kept_by_the_knowledge_base(tmp_path: Path, e5_embedder, docs: Path) -> None:
    small = KnowledgeService(
        load_settings(data_dir=tmp_path / "data", splitter={"chunk_size": 20, "chunk_overlap": 0})
    )
    small.embedder = e5_embedder
    small.ingest("hr", [docs / "hr"])
    # A later run with other settings still splits the way the knowledge base was created.
    default = KnowledgeService(load_settings(data_dir=tmp_path / "data"))
    default.embedder = e5_embedder
    default.ingest("hr", [docs / "expenses.md"])
    kb = default.open("hr")
    assert kb.manifest.splitter["chunk_size"] == 20
    assert all(len(chunk.text) <= 20 for chunk in kb.store.chunks(kb.store.chunk_ids().tolist()).values())


def test_chunks_measured_in_embedding_model_tokens(tmp_path: Path, e5_embedder, docs: Path) -> None:
    splitter = {"chunk_size": 16, "chunk_overlap": 0, "length_unit": "tokens"}
    svc = KnowledgeService(load_settings(data_dir=tmp_path / "data", splitter=splitter))
    svc.embedder = e5_embedder
    svc.ingest("hr", [docs])
    kb = svc.open("hr")
    chunks = kb.store.chunks(kb.store.chunk_ids().tolist()).values()
    assert len(chunks) > 6
    assert all(e5_embedder.count_tokens(chunk.text) <= 16 for chunk in chunks)
    assert max(e5_embedder.count_tokens(chunk.text) for chunk in chunks) > 8


@pytest.fixture
def office_docs(tmp_path: Path) -> Path:
    """A folder of documents as people have them: a slide deck, a PDF with a table, a scan and a photo."""
    folder = tmp_path / "office"
    folder.mkdir()
    make_pptx(folder / "report.pptx")
    table_pdf(folder / "travel.pdf")
    if ocr_installed():
        scanned_pdf(folder / "scan.pdf")
        photo_png(folder / "notice.png")
    return folder


def test_search_finds_the_slide_the_table_row_and_the_scanned_page(
    service: KnowledgeService, office_docs: Path
) -> None:
    report = service.ingest("office", [office_docs])
    assert report.failures == [] and report.count("added") == len(list(office_docs.iterdir()))

    def top(query: str):
        hit = service.search("office", query, SearchOptions(k=1))[0]
        return hit.source, hit.page, hit.heading_path, hit.ocr, hit.text

    source, page, heading_path, ocr, text = top("华南地区的销售额是多少？")
    assert (source, page, heading_path, ocr) == ("office/report.pptx", 2, ("各地区销售额",), False)
    assert "地区: 华南\n销售额: 860 万元" in text  # the row with its column names (rows are packed)
    assert top("演讲时要强调哪个地区增长最快？")[:3] == (
        "office/report.pptx",
        2,
        ("各地区销售额", "Speaker notes"),
    )

    source, page, _, ocr, text = top("上海的住宿标准是多少？")
    assert (source, page, ocr) == ("office/travel.pdf", 1, False)
    assert "城市: 上海" in text and "住宿标准: 每晚 550元" in text
    if not ocr_installed():
        return
    source, page, _, ocr, text = top("差旅报销要在多少天内提交？")
    assert (source, page, ocr) == ("office/scan.pdf", 2, True)
    assert "三十天" in text
    source, page, _, ocr, text = top("room booking phone number")
    assert (source, page, ocr) == ("office/notice.png", None, True)
    assert "8021" in text


@pytest.mark.skipif(not ocr_installed(), reason="needs the `ocr` extra")
def test_ocr_off_fails_images_and_reports_scans_as_before(tmp_path: Path, e5_embedder) -> None:
    svc = KnowledgeService(load_settings(data_dir=tmp_path / "data", ingestion={"ocr": {"enabled": "off"}}))
    svc.embedder = e5_embedder
    folder = tmp_path / "scans"
    folder.mkdir()
    scanned_pdf(folder / "scan.pdf")
    photo_png(folder / "notice.png")
    report = svc.ingest("scans", [folder])
    by_source = {o.source: o for o in report.outcomes}
    # The scan's cover page has text: it is stored, and its unread page is not reported as a problem.
    assert by_source["scans/scan.pdf"].status == "added" and by_source["scans/scan.pdf"].reason is None
    assert by_source["scans/notice.png"].status == "failed"
    assert "OCR is off (ingestion.ocr.enabled)" in by_source["scans/notice.png"].reason


def test_ocr_on_without_the_extra_fails_before_any_file(
    tmp_path: Path, e5_embedder, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ocr_module, "ocr_installed", lambda: False)  # as on an install without the extra
    svc = KnowledgeService(load_settings(data_dir=tmp_path / "data", ingestion={"ocr": {"enabled": "on"}}))
    svc.embedder = e5_embedder
    with pytest.raises(ValueError, match=r"'on' but OCR is not installed; .*pip install 'kbqa\[ocr\]'"):
        svc.ingest("hr", [docs])
    assert svc.open("hr").counts()[0] == 0
