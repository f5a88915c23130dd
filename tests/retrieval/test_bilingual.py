"""Questions in another language than the documents: the CC-CEDICT term map, coverage through it, and a
search of a Chinese handbook beside an English policy (bundled e5 model, real FAISS and SQLite)."""

from __future__ import annotations

import pytest

from app.services import KnowledgeService
from app.settings import load_settings
from retrieval import SearchOptions
from retrieval.answerability import coverage
from retrieval.bilingual import is_chinese, lemma, translations

HANDBOOK = (
    "第二章 休假制度\n"
    "年假：员工累计工作满 1 年后享受带薪年假，每年 10 天。\n"
    "病假：每年享有 12 天全薪病假，超出部分按基本工资的 80% 发放。\n"
    "婚假 13 天，产假 158 天，均为全薪。\n"
)
POLICY = (
    "# Travel policy\n\n"
    "Submit the claim within 30 days of returning. Your manager approves first, then Finance reviews "
    "within 5 working days. Claims submitted more than 90 days after the trip are rejected.\n\n"
    "Hotels in Tokyo are limited to USD 200 a night; staff receive a per diem of USD 60 a day.\n"
)


def test_english_words_become_chinese_words_and_back() -> None:
    assert lemma("days") == "day" and lemma("subsidies") == "subsidy" and lemma("class") == "class"
    # A two-word gloss counts only when the question holds both words: sick leave → 病假.
    assert "病假" in translations("sick", ["sick", "leave"])
    assert "病假" not in translations("leave", ["leave", "days"])
    assert "价格" in translations("price") and "hotel" in translations("酒店")
    assert translations("xyzzy") == frozenset() and translations("火星人类学") == frozenset()
    assert is_chinese("病假：每年享有 12 天") and not is_chinese("Book hotels via TravelDesk 酒店")


def test_coverage_counts_a_translation_only_across_languages() -> None:
    weights = {"sick": 1.0, "leave": 1.0, "cup": 2.0}
    sentence = "病假：每年享有 12 天全薪病假。"
    assert coverage(sentence, weights) == 0.0  # words as written: nothing shared
    assert coverage(sentence, weights, asked_in_chinese=False) == 0.5  # sick, leave through 病假; cup not
    assert coverage(sentence, weights, asked_in_chinese=True) == 0.0  # a Chinese question: no translation
    assert coverage("Hotels in Tokyo are limited.", {"酒店": 1.0, "东京": 1.0}, asked_in_chinese=True) == 1.0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, e5_embedder) -> KnowledgeService:
    """The handbook and the policy in one knowledge base `mixed`, and the handbook alone in `zh`."""
    docs = tmp_path_factory.mktemp("docs")
    (docs / "mixed").mkdir()
    (docs / "zh").mkdir()
    for folder in ("mixed", "zh"):
        (docs / folder / "handbook.txt").write_text(HANDBOOK, encoding="utf-8")
    (docs / "mixed" / "policy.md").write_text(POLICY, encoding="utf-8")
    svc = KnowledgeService(load_settings(data_dir=tmp_path_factory.mktemp("data")))
    svc.embedder = e5_embedder
    for name in ("mixed", "zh"):
        assert not svc.ingest(name, [docs / name]).failures
    return svc


def test_an_english_question_finds_the_chinese_chunk_that_answers(service: KnowledgeService) -> None:
    found = service.retrieve("mixed", "How many days of sick leave do I get?", SearchOptions(k=3))
    assert found.hits[0].source.endswith("handbook.txt"), [h.source for h in found.hits]
    assert found.signals.unseen == 0.0  # sick and leave are held, as 病假
    # The same question in dense mode is judged the same way (answerability's signals do not depend on the mode).
    dense = service.retrieve(
        "mixed", "How many days of sick leave do I get?", SearchOptions(k=3, mode="dense")
    )
    assert dense.term_weights == found.term_weights


def test_a_question_in_the_documents_language_is_searched_as_before(service: KnowledgeService) -> None:
    """Nothing is translated when every term is held as written."""
    chinese = service.retrieve("zh", "病假一年有几天？", SearchOptions(k=3))
    assert chinese.hits[0].source.endswith("handbook.txt")
    english_words = service.retrieve("mixed", "How many days do Finance reviews take?", SearchOptions(k=3))
    assert english_words.hits[0].source.endswith("policy.md")
    # An English question on a knowledge base with no English chunk: sick and leave are held (病假) by its
    # one chunk, so they weigh as a term every chunk holds; days (天 is one character, not translated) is unseen.
    alone = service.retrieve("zh", "How many days of sick leave do I get?", SearchOptions(k=3))
    weights = alone.term_weights
    assert weights["sick"] == weights["leave"] < weights["days"]
