"""Search on real knowledge bases: dense, lexical (BM25) and hybrid ranking, filters, thresholds,
neighbours, duplicates, the incremental lexical index, the reranker, bad input, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from models import build_tiny_cross_encoder
from pydantic import ValidationError

from app.services import KnowledgeService
from app.settings import load_settings
from retrieval import KnowledgeBaseNotFound, Reranker, SearchHit, SearchOptions
from retrieval.lexical import terms

KBQA = str(Path(sys.executable).parent / "kbqa")

LEAVE = "# 带薪休假\n\n正式员工每年享有带薪年休假十五日，需提前一周在人事系统中提交申请。\n"
CORPUS = {
    "docs/hr/leave.md": LEAVE,
    "docs/hr/expenses.md": "# 报销流程\n\n差旅费用应在出差结束后三十天内通过财务系统提交报销申请，并附上发票原件。\n",
    "docs/it/backup.txt": "机房运维说明\n\n数据库每天凌晨两点自动备份，备份文件保留三十天。\n",
    "docs/product/router.md": "# 产品手册\n\n型号 XH-Q7Z3 的路由器支持双频无线网络，出厂默认管理地址为 192.168.10.1。\n",
    "docs/product/router-ax.md": "# 产品手册\n\n型号 XH-Q7Z5 的路由器支持三频无线网络，出厂默认管理地址为 192.168.1.1。\n",
    "docs/people/award.md": "# 年度表彰\n\n市场部的欧阳娜娜因出色完成新品发布活动，获得本年度优秀员工奖。\n",
    "docs/people/award-2.md": "# 年度表彰\n\n研发部的欧阳明明因主导核心系统重构，获得本年度技术创新奖。\n",
    "docs/en/security.md": "# Security policy\n\nPasswords must be rotated every ninety days and must contain at least "
    "twelve characters.\n",
    "notes/canteen.txt": "食堂通知\n\n公司食堂午餐供应时间为十一点半到一点，周末不营业。\n",
    # Near-duplicates: the same text but for whitespace, and the same text but for one character.
    "dup/meeting-a.txt": "会议室管理\n\n会议室需要提前一天在行政系统中预约，每次最多预约两个小时。\n",
    "dup/meeting-b.txt": "会议室管理\n\n会议室需要 提前一天在行政系统中预约，\n每次最多预约两个小时。  \n",
    "near/parking-a.txt": "停车须知\n\n访客车辆请停放在地下二层的访客车位，离开时在前台登记车牌号码。\n",
    "near/parking-b.txt": "停车须知\n\n访客车辆请停放在地下三层的访客车位，离开时在前台登记车牌号码。\n",
}
# Six sentences, so that chunks of at most 40 characters cut it into several pieces in order.
LONG = (
    "第一节：公司成立于二零零八年，总部位于杭州市西湖区。"
    "第二节：公司主要业务是为中小企业提供云端财务软件。"
    "第三节：公司目前拥有员工五百余人，其中研发人员占六成。"
    "第四节：公司在北京、上海和深圳设有三个分支机构。"
    "第五节：公司每年投入营业收入的两成用于技术研发。"
    "第六节：公司的愿景是让每一家小企业都能轻松记账。"
)


def write_files(root: Path, files: dict[str, str]) -> None:
    for source, text in files.items():
        path = root / source
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def make_service(data_dir: Path, embedder, **settings) -> KnowledgeService:
    svc = KnowledgeService(load_settings(data_dir=data_dir, **settings))
    svc.embedder = embedder  # the session's loaded model, to avoid loading it again
    return svc


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_files(root, CORPUS)
    (root / "long").mkdir()
    (root / "long" / "company.txt").write_text("公司简介\n\n" + LONG + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path, e5_embedder) -> KnowledgeService:
    """A service over a data directory holding `corpus` (the corpus) and `long` (small chunks)."""
    data_dir = tmp_path_factory.mktemp("data")
    svc = make_service(data_dir, e5_embedder)
    report = svc.ingest(
        "corpus", [corpus_dir / "docs", corpus_dir / "notes", corpus_dir / "dup", corpus_dir / "near"]
    )
    assert not report.failures and report.count("added") == len(CORPUS)
    small = make_service(data_dir, e5_embedder, splitter={"chunk_size": 40, "chunk_overlap": 0})
    assert not small.ingest("long", [corpus_dir / "long"]).failures
    return svc


def sources(hits: list[SearchHit]) -> list[str]:
    return [hit.source for hit in hits]


def rank(hits: list[SearchHit], source: str) -> int:
    """Return the 1-based rank of the first hit from `source`, or a rank past the end if none."""
    return next((i for i, hit in enumerate(hits, 1) if hit.source == source), len(hits) + 100)


# --- ranking ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "source"),
    [
        ("XH-Q7Z3 支持哪些无线频段", "docs/product/router.md"),
        ("XH-Q7Z3", "docs/product/router.md"),
        ("欧阳娜娜", "docs/people/award.md"),
        ("欧阳娜娜获得了什么奖", "docs/people/award.md"),
    ],
)
def test_rare_exact_term_ranks_first_lexically_and_helps_hybrid(
    service: KnowledgeService, query: str, source: str
) -> None:
    options = {"k": 10, "dedupe": False}
    lexical = service.search("corpus", query, SearchOptions(mode="lexical", **options))
    dense = service.search("corpus", query, SearchOptions(mode="dense", **options))
    hybrid = service.search("corpus", query, SearchOptions(mode="hybrid", **options))
    assert rank(lexical, source) == 1
    assert lexical[0].lexical_score is not None and lexical[0].lexical_score > 0
    assert rank(hybrid, source) <= min(rank(dense, source), 2)
    assert hybrid[0].fusion_score is not None
    assert all(hit.fusion_score is not None for hit in hybrid)
    fusion = [hit.fusion_score for hit in hybrid]
    assert fusion == sorted(fusion, reverse=True)


@pytest.mark.parametrize(
    ("query", "source"),
    [
        ("职工一年可以歇多少天", "docs/hr/leave.md"),
        ("中午几点开饭", "notes/canteen.txt"),
    ],
)
def test_paraphrase_without_shared_words_is_found_by_dense_and_hybrid(
    service: KnowledgeService, query: str, source: str
) -> None:
    document = (CORPUS[source] + " " + source).replace("\n", " ")
    assert not set(terms(query)) & set(terms(document))  # no word in common: lexical cannot find it
    assert rank(service.search("corpus", query, SearchOptions(mode="lexical", k=10)), source) > 10
    dense = service.search("corpus", query, SearchOptions(mode="dense", k=5))
    hybrid = service.search("corpus", query, SearchOptions(mode="hybrid", k=5))
    assert sources(dense)[0] == source
    assert sources(hybrid)[0] == source
    scores = [hit.score for hit in dense]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)


# --- threshold, filters, neighbours, duplicates ---------------------------------------------------


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_threshold_is_a_cosine_in_every_mode(service: KnowledgeService, mode: str) -> None:
    query = "数据库 备份 报销 路由器 员工"  # matches several documents lexically, too
    everything = service.search("corpus", query, SearchOptions(mode=mode, k=50, dedupe=False))
    assert len(everything) >= 3
    cosines = sorted(hit.score for hit in everything)
    threshold = cosines[len(cosines) // 2]  # a cosine between the worst and the best hit
    assert cosines[0] < threshold
    kept = service.search(
        "corpus", query, SearchOptions(mode=mode, k=50, dedupe=False, score_threshold=threshold)
    )
    assert kept and all(hit.score >= threshold for hit in kept)
    assert {hit.chunk_id for hit in kept} == {hit.chunk_id for hit in everything if hit.score >= threshold}
    lower = service.search(
        "corpus", query, SearchOptions(mode=mode, k=50, dedupe=False, score_threshold=threshold - 0.05)
    )
    assert {hit.chunk_id for hit in kept} <= {hit.chunk_id for hit in lower}
    assert len(lower) >= len(kept)
    assert service.search("corpus", query, SearchOptions(mode=mode, k=50, score_threshold=1.0)) == []


def test_source_glob_and_document_filters(service: KnowledgeService) -> None:
    query = "产品 手册 路由器 员工"
    for mode in ("dense", "lexical", "hybrid"):
        hits = service.search(
            "corpus", query, SearchOptions(mode=mode, k=50, source="docs/product/*", dedupe=False)
        )
        assert set(sources(hits)) == {"docs/product/router.md", "docs/product/router-ax.md"}, mode
        assert service.search("corpus", query, SearchOptions(mode=mode, source="nothing/*")) == []

    kb = service.open("corpus")
    try:
        award = kb.document_by_source("docs/people/award.md")
        leave = kb.document_by_source("docs/hr/leave.md")
    finally:
        kb.close()
    hits = service.search("corpus", query, SearchOptions(k=50, document_ids=[award.id, leave.id]))
    assert set(sources(hits)) == {"docs/people/award.md", "docs/hr/leave.md"}
    assert {hit.document_id for hit in hits} == {award.id, leave.id}
    assert service.search("corpus", query, SearchOptions(document_ids=[10**6])) == []
    assert service.search("corpus", query, SearchOptions(document_ids=[])) == []
    # Both filters together: documents in the list that also match the glob.
    both = service.search(
        "corpus", query, SearchOptions(k=50, document_ids=[award.id, leave.id], source="docs/hr/*")
    )
    assert sources(both) == ["docs/hr/leave.md"]


def test_neighbours_are_the_chunks_before_and_after_in_order(service: KnowledgeService) -> None:
    kb = service.open("long")
    try:
        document = kb.documents()[0]
        chunks = sorted(kb.store.chunks(list(kb.store.chunk_ids())).values(), key=lambda c: c.ordinal)
    finally:
        kb.close()
    assert document.chunk_count == len(chunks) >= 3
    texts = [chunk.text for chunk in chunks]
    middle = next(i for i, text in enumerate(texts) if "第三节" in text)
    assert 0 < middle < len(texts) - 1

    plain = service.search("long", "公司有多少名员工", SearchOptions(k=1, mode="lexical"))
    assert plain[0].context_before == () and plain[0].context_after == ()

    for mode in ("dense", "lexical", "hybrid"):
        hit = service.search(
            "long", "公司有多少名员工，研发人员占比", SearchOptions(k=1, mode=mode, neighbours=1)
        )[0]
        assert "第三节" in hit.text, mode
        assert hit.context_before == (texts[middle - 1],)
        assert hit.context_after == (texts[middle + 1],)

    last = service.search("long", "公司的愿景是什么", SearchOptions(k=1, mode="lexical", neighbours=2))[0]
    assert "第六节" in last.text and last.text == texts[-1]
    assert last.context_before == tuple(texts[-3:-1])
    assert last.context_after == ()


@pytest.mark.parametrize(
    ("query", "glob", "expected"),
    [
        ("会议室怎么预约", "dup/*", {"dup/meeting-a.txt", "dup/meeting-b.txt"}),  # whitespace only
        ("访客车辆停在哪里", "near/*", {"near/parking-a.txt", "near/parking-b.txt"}),  # one character
    ],
)
@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_near_duplicates_are_dropped_only_with_dedupe(
    service: KnowledgeService, query: str, glob: str, expected: set[str], mode: str
) -> None:
    both = service.search("corpus", query, SearchOptions(k=10, mode=mode, source=glob, dedupe=False))
    assert set(sources(both)) == expected
    one = service.search("corpus", query, SearchOptions(k=10, mode=mode, source=glob, dedupe=True))
    assert len(one) == 1 and one[0].chunk_id == both[0].chunk_id
    # Without the source filter the duplicate is dropped among the other documents as well.
    everything = service.search("corpus", query, SearchOptions(k=50, mode=mode))
    assert len(set(sources(everything)) & expected) == 1


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_similar_but_distinct_chunks_survive_dedupe(service: KnowledgeService, mode: str) -> None:
    # Two product sheets share their wording but differ in model, bands and address (cosine about 0.988).
    hits = service.search(
        "corpus", "路由器的默认管理地址", SearchOptions(k=10, mode=mode, source="docs/product/*")
    )
    assert set(sources(hits)) == {"docs/product/router.md", "docs/product/router-ax.md"}


# --- incremental lexical index --------------------------------------------------------------------

INCREMENTAL = {
    "a.md": "# 考勤\n\n员工每天九点上班，迟到三次扣除当月全勤奖。",
    "b.md": "# 差旅\n\n出差住宿标准为每晚五百元，超出部分由员工自行承担。",
    "c.txt": "网络说明\n\n办公室无线网络名称为 Office-5G，密码每季度更换一次。",
    "d.txt": "Printer guide\n\nThe color printer on the third floor needs a badge to release jobs.",
}
CHANGED_B = "# 差旅\n\n出差住宿标准调整为每晚八百元，高铁可乘坐一等座，员工凭发票报销。"
ADDED_E = "# 福利\n\n员工生日当月可领取两百元购物卡，并享受半天生日假。"
LEXICAL_QUERIES = [
    "员工",
    "出差 住宿 每晚",
    "自行承担",
    "高铁 一等座",
    "无线网络 密码",
    "printer badge",
    "生日假",
]


def lexical_results(svc: KnowledgeService, name: str) -> dict[str, list[tuple]]:
    results = {}
    for query in LEXICAL_QUERIES:
        hits = svc.search(name, query, SearchOptions(k=50, mode="lexical", dedupe=False))
        results[query] = sorted((hit.source, hit.text, round(hit.lexical_score, 6)) for hit in hits)
    return results


def test_lexical_index_is_updated_incrementally(tmp_path: Path, e5_embedder) -> None:
    svc = make_service(tmp_path / "data", e5_embedder)
    folder = tmp_path / "files"
    write_files(folder, INCREMENTAL)
    assert svc.ingest("inc", [folder]).count("added") == 4
    assert sources(svc.search("inc", "自行承担", SearchOptions(mode="lexical"))) == ["files/b.md"]

    (folder / "b.md").write_text(CHANGED_B, encoding="utf-8")
    (folder / "e.md").write_text(ADDED_E, encoding="utf-8")
    report = svc.ingest("inc", [folder])
    assert {o.source: o.status for o in report.outcomes}["files/b.md"] == "replaced"
    kb = svc.open("inc")
    try:
        with kb.writing():
            kb.delete_documents([kb.document_by_source("files/d.txt").id])
        assert kb.check().ok
        assert kb.counts()[0] == 4
    finally:
        kb.close()
    (folder / "d.txt").unlink()

    fresh = make_service(tmp_path / "fresh", e5_embedder)
    assert fresh.ingest("inc", [folder]).count("added") == 4
    incremental, scratch = lexical_results(svc, "inc"), lexical_results(fresh, "inc")
    assert incremental == scratch
    assert incremental["自行承担"] == [] and incremental["printer badge"] == []
    assert [row[0] for row in incremental["高铁 一等座"]] == ["files/b.md"]
    assert {row[0] for row in incremental["员工"]} == {"files/a.md", "files/b.md", "files/e.md"}
    kb = svc.open("inc")
    try:
        assert kb.check().ok
    finally:
        kb.close()


# --- reranker -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = build_tiny_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-cross-encoder")
    from sentence_transformers import CrossEncoder

    scores = CrossEncoder(str(directory), device="cpu").predict([("年假", "员工每年享有带薪年假")])
    assert len(scores) == 1
    return directory


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_rerank_orders_by_cross_encoder_score(
    service: KnowledgeService, cross_encoder_dir: Path, e5_embedder, mode: str
) -> None:
    reranking = make_service(
        service.settings.data_dir,
        e5_embedder,
        retrieval={"reranker": {"model": str(cross_encoder_dir), "device": "cpu", "top_n": 6}},
    )
    query = "员工 报销 备份 路由器 年度"
    hits = reranking.search("corpus", query, SearchOptions(k=4, mode=mode, rerank=True))
    assert 1 <= len(hits) <= 4
    assert all(isinstance(hit.rerank_score, float) for hit in hits)
    scores = [hit.rerank_score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    # The reranked hits are the best of the first `top_n` candidates by the cross-encoder's score.
    head = reranking.search("corpus", query, SearchOptions(k=6, mode=mode))
    assert {hit.chunk_id for hit in hits} <= {hit.chunk_id for hit in head}
    # The same cross-encoder, loaded by the public Reranker from the retriever's own settings.
    pairs = Reranker(reranking.retriever.config.reranker).scores(query, [hit.text for hit in head])
    best = sorted(zip(pairs.tolist(), (hit.chunk_id for hit in head), strict=True), reverse=True)[: len(hits)]
    assert [hit.chunk_id for hit in hits] == [chunk_id for _, chunk_id in best]
    assert all(hit.rerank_score is None for hit in head)


def test_rerank_without_a_configured_reranker_is_refused(service: KnowledgeService) -> None:
    with pytest.raises(ValueError, match="no reranker model is configured"):
        service.search("corpus", "年假", SearchOptions(rerank=True))


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "   ", "\n\t　"])
def test_empty_query_is_refused(service: KnowledgeService, query: str) -> None:
    with pytest.raises(ValueError, match="the query is empty"):
        service.search("corpus", query, SearchOptions())


@pytest.mark.parametrize(
    "options",
    [
        {"k": 0},
        {"k": 10**6},
        {"mode": "fuzzy"},
        {"score_threshold": 2},
        {"score_threshold": -1.5},
        {"neighbours": 6},
    ],
)
def test_invalid_options_are_refused(options: dict) -> None:
    with pytest.raises(ValidationError):
        SearchOptions(**options)


def test_unknown_knowledge_base(service: KnowledgeService) -> None:
    with pytest.raises(KnowledgeBaseNotFound):
        service.search("nope", "年假", SearchOptions())


@pytest.mark.parametrize("query", ["？！。", "...", "—— ！"])
def test_punctuation_only_query(service: KnowledgeService, query: str) -> None:
    assert service.search("corpus", query, SearchOptions(mode="lexical")) == []
    hybrid = service.search("corpus", query, SearchOptions(mode="hybrid", k=3))
    assert len(hybrid) == 3 and all(hit.lexical_score is None for hit in hybrid)


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_search(tmp_path: Path, corpus_dir: Path, e5_embedder) -> None:
    data = tmp_path / "data"
    svc = make_service(data, e5_embedder)
    assert not svc.ingest("cli", [corpus_dir / "docs", corpus_dir / "notes"]).failures

    def kbqa(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [KBQA, "--data-dir", str(data), "search", "--kb", "cli", *args],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            timeout=120,
        )

    found = kbqa("欧阳娜娜 食堂", "--mode", "lexical", "--source", "docs/*", "--json", "-k", "5")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert hits and hits[0]["source"] == "docs/people/award.md"
    assert all(hit["source"].startswith("docs/") for hit in hits)  # not notes/canteen.txt
    assert hits[0]["lexical_score"] > 0 and -1.0 <= hits[0]["score"] <= 1.0

    bad = kbqa("欧阳娜娜", "--mode", "fuzzy")
    assert bad.returncode != 0
    assert "mode" in bad.stderr and "Traceback" not in bad.stderr + bad.stdout


# --- metadata -------------------------------------------------------------------------------------

# Each folder of the corpus indexed in its own run, with that run's metadata (notes/ has none).
META_RUNS = [
    ("docs/hr", {"team": "hr", "lang": "zh"}),
    ("docs/en", {"team": "hr", "lang": "en"}),
    ("docs/product", {"team": "product", "lang": "zh"}),
    ("notes", None),
]
# A query that every document above matches lexically, so each mode can return all of the allowed ones.
META_QUERY = "员工 报销 路由器 passwords 食堂"


@pytest.fixture(scope="module")
def meta_service(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path, e5_embedder) -> KnowledgeService:
    svc = make_service(tmp_path_factory.mktemp("meta-data"), e5_embedder)
    for folder, metadata in META_RUNS:
        report = svc.ingest("meta", [corpus_dir / folder], metadata=metadata)
        assert not report.failures and report.count("added") >= 1
    return svc


def test_metadata_is_stored_per_run_and_returned(meta_service: KnowledgeService) -> None:
    kb = meta_service.open("meta")
    try:
        metadata = {document.source: document.metadata for document in kb.documents()}
    finally:
        kb.close()
    assert metadata == {
        "hr/leave.md": {"team": "hr", "lang": "zh"},
        "hr/expenses.md": {"team": "hr", "lang": "zh"},
        "en/security.md": {"team": "hr", "lang": "en"},
        "product/router.md": {"team": "product", "lang": "zh"},
        "product/router-ax.md": {"team": "product", "lang": "zh"},
        "notes/canteen.txt": {},
    }
    assert meta_service.info("meta").metadata == {"lang": ["en", "zh"], "team": ["hr", "product"]}
    hits = meta_service.search("meta", META_QUERY, SearchOptions(k=50, dedupe=False))
    assert {hit.source: hit.metadata for hit in hits} == metadata


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"metadata": {"team": "hr"}}, {"hr/leave.md", "hr/expenses.md", "en/security.md"}),
        ({"metadata": {"team": "hr", "lang": "zh"}}, {"hr/leave.md", "hr/expenses.md"}),
        (
            {"metadata": {"lang": "zh"}},
            {"hr/leave.md", "hr/expenses.md", "product/router.md", "product/router-ax.md"},
        ),
        ({"metadata": {"team": "hr"}, "source": "en/*"}, {"en/security.md"}),
        ({"metadata": {"lang": "zh"}, "source": "product/*"}, {"product/router.md", "product/router-ax.md"}),
        (
            {"metadata": {}},
            {
                "hr/leave.md",
                "hr/expenses.md",
                "en/security.md",
                "product/router.md",
                "product/router-ax.md",
                "notes/canteen.txt",
            },
        ),  # no condition: everything
    ],
)
def test_metadata_filter_in_every_mode(
    meta_service: KnowledgeService, mode: str, filters: dict, expected: set[str]
) -> None:
    hits = meta_service.search("meta", META_QUERY, SearchOptions(k=50, mode=mode, dedupe=False, **filters))
    assert set(sources(hits)) == expected


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
@pytest.mark.parametrize(
    "filters",
    [
        {"metadata": {"team": "finance"}},  # no such value
        {"metadata": {"team": "hr", "lang": "fr"}},  # each matches some document, both none
        {"metadata": {"owner": "hr"}},  # no such key
        {"metadata": {"team": "HR"}},  # values match exactly
        {"metadata": {"team": "hr"}, "source": "product/*"},
    ],
)
def test_metadata_filter_matching_nothing_finds_nothing(
    meta_service: KnowledgeService, mode: str, filters: dict
) -> None:
    assert meta_service.search("meta", META_QUERY, SearchOptions(k=50, mode=mode, **filters)) == []


def test_metadata_filter_combines_with_document_ids(meta_service: KnowledgeService) -> None:
    kb = meta_service.open("meta")
    try:
        ids = {document.source: document.id for document in kb.documents()}
    finally:
        kb.close()
    chosen = [ids["hr/leave.md"], ids["en/security.md"], ids["product/router.md"]]
    hits = meta_service.search(
        "meta", META_QUERY, SearchOptions(k=50, document_ids=chosen, metadata={"lang": "zh"})
    )
    assert set(sources(hits)) == {"hr/leave.md", "product/router.md"}


@pytest.mark.parametrize(
    "key", ["", "a.b", "a[0]", "$", 'a"b', "a b", "a\\b", "x') OR 1=1 --", "k" * 65, "名\n字"]
)
def test_metadata_keys_that_could_escape_their_json_path_are_refused(key: str) -> None:
    with pytest.raises(ValidationError, match="invalid metadata key"):
        SearchOptions(metadata={key: "x"})


def test_metadata_keys_may_be_chinese() -> None:
    assert SearchOptions(metadata={"部门": "人事", "doc-type_2": ""}).metadata == {
        "部门": "人事",
        "doc-type_2": "",
    }


def test_reindexing_unchanged_files_updates_metadata_without_embedding(tmp_path: Path, e5_embedder) -> None:
    svc = make_service(tmp_path / "data", e5_embedder)
    folder = tmp_path / "files"
    write_files(folder, INCREMENTAL)
    assert svc.ingest("kb", [folder], metadata={"team": "hr"}).count("added") == 4

    def state() -> tuple[list[int], int, dict[str, dict[str, str]]]:
        kb = svc.open("kb")
        try:
            documents = {d.source: d.metadata for d in kb.documents()}
            return kb.store.chunk_ids().tolist(), kb.store.generation, documents
        finally:
            kb.close()

    chunk_ids, generation, _ = state()
    report = svc.ingest("kb", [folder], metadata={"team": "finance", "year": "2024"})
    assert {o.status for o in report.outcomes} == {"updated"} and report.chunks == 0
    after_ids, after_generation, metadata = state()
    # The same chunks (ids are never reused, so a re-embedded document would have new ones), and no write
    # transaction of chunks: the FAISS index was not touched.
    assert (after_ids, after_generation) == (chunk_ids, generation)
    assert set(map(json.dumps, metadata.values())) == {json.dumps({"team": "finance", "year": "2024"})}
    assert svc.search("kb", "员工", SearchOptions(metadata={"team": "hr"})) == []
    assert sources(svc.search("kb", "出差 住宿", SearchOptions(k=1, metadata={"year": "2024"}))) == [
        "files/b.md"
    ]

    # The same metadata again, or none: nothing to do. A changed file without metadata keeps its own.
    assert {
        o.status for o in svc.ingest("kb", [folder], metadata={"team": "finance", "year": "2024"}).outcomes
    } == {"skipped"}
    assert {o.status for o in svc.ingest("kb", [folder]).outcomes} == {"skipped"}
    (folder / "b.md").write_text(CHANGED_B, encoding="utf-8")
    report = svc.ingest("kb", [folder])
    assert {o.source: o.status for o in report.outcomes}["files/b.md"] == "replaced"
    _, _, metadata = state()
    assert metadata["files/b.md"] == {"team": "finance", "year": "2024"}
    kb = svc.open("kb")
    try:
        assert kb.check().ok
    finally:
        kb.close()


def test_bad_metadata_stops_ingestion_before_anything_is_created(tmp_path: Path, e5_embedder) -> None:
    svc = make_service(tmp_path / "data", e5_embedder)
    folder = tmp_path / "files"
    write_files(folder, INCREMENTAL)
    with pytest.raises(ValueError, match="invalid metadata key"):
        svc.ingest("kb", [folder], metadata={"a.b": "x"})
    with pytest.raises(ValueError, match="must be a string"):
        svc.ingest("kb", [folder], metadata={"year": 2024})
    assert not svc.catalog.exists("kb")


def test_cli_search_with_meta(tmp_path: Path, corpus_dir: Path, e5_embedder) -> None:
    data = tmp_path / "data"
    svc = make_service(data, e5_embedder)
    assert not svc.ingest("cli", [corpus_dir / "docs" / "hr"], metadata={"team": "hr"}).failures
    assert not svc.ingest("cli", [corpus_dir / "docs" / "product"], metadata={"team": "product"}).failures

    def kbqa(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [KBQA, "--data-dir", str(data), *args], capture_output=True, text=True, timeout=120
        )

    found = kbqa("search", "--kb", "cli", META_QUERY, "--meta", "team=product", "--json", "-k", "10")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert {hit["source"] for hit in hits} == {"product/router.md", "product/router-ax.md"}
    assert all(hit["metadata"] == {"team": "product"} for hit in hits)
    both = kbqa("search", "--kb", "cli", META_QUERY, "--meta", "team=hr", "--meta", "team=product")
    assert both.returncode == 2 and "given twice" in both.stderr

    text = kbqa("search", "--kb", "cli", META_QUERY, "--meta", "team=hr", "--source", "hr/leave*")
    assert text.returncode == 0 and "hr/leave.md — 带薪休假 [team=hr]" in text.stdout
    assert "expenses" not in text.stdout

    info = json.loads(kbqa("kb", "info", "cli", "--json").stdout)
    assert info["metadata"] == {"team": ["hr", "product"]}
    for bad, message in [
        ("team", "malformed metadata 'team'"),
        ("=hr", "malformed"),
        ("a.b=1", "invalid metadata key"),
    ]:
        result = kbqa("search", "--kb", "cli", "路由器", "--meta", bad)
        assert result.returncode == 2, bad
        assert message in " ".join(result.stderr.split()) and "Traceback" not in result.stderr


RARE_CODE_DOCS = {
    "price.md": "# 价格表\n\n产品多少钱？标准版价格三千元，专业版价格五千元，价格每季度更新。\n",
    "quote.md": "# 报价\n\n报价单中的价格含税，价格有效期三十天。\n",
    "buy.md": "# 采购\n\n采购价格须经财务审核，价格超过一万元需总经理批准。\n",
    "part.md": "# Warehouse\n\nWarehouse inventory: shelves A to F hold cables, screws, adapters and spare fans; "
    "bin KB0003X sits on shelf C next to the printer toner.\n",
}


def test_hybrid_tie_goes_to_the_chunk_holding_a_rare_exact_term(tmp_path: Path, e5_embedder) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in RARE_CODE_DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    # One candidate from each list: the top dense hit and the top lexical hit tie in fusion.
    service = KnowledgeService(load_settings(data_dir=tmp_path / "data", retrieval={"candidates": 1}))
    service.embedder = e5_embedder
    service.ingest("kb", [docs])
    query = "KB0003X 价格"
    dense = service.search("kb", query, SearchOptions(mode="dense", k=1))[0]
    lexical = service.search("kb", query, SearchOptions(mode="lexical", k=1))[0]
    assert (dense.source, lexical.source) == ("docs/price.md", "docs/part.md")  # the setting of the tie
    best = service.search("kb", query, SearchOptions(mode="hybrid", k=1))[0]
    assert best.source == "docs/part.md"
    assert best.fusion_score == 1 / (60 + 1)  # first of one list only: the same as the top dense hit
