"""Answerability: the logistic model and its calibration files, the signals of a search, the split of a
dataset into answerable and unanswerable questions, and the calibration error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.answer_evaluation import AnswerCase, Asked, answer_set, expected_calibration_error, summary
from app.evaluation import Paragraph, Question
from llm import Answer, Timings, Usage
from retrieval import Calibration, KnowledgeBaseCatalog, LogisticModel, find_calibration
from retrieval.answerability import COVERAGE_SATURATION, coverage, signals, term_weights
from retrieval.calibration import BUNDLED_DIR
from retrieval.lexical import asked_fields, content_terms


def test_logistic_regression_recovers_the_weights_it_was_drawn_from() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2)) * [1.0, 3.0] + [0.5, -1.0]
    true_logit = 2.0 * (x[:, 0] - 0.5) - 0.5 * ((x[:, 1] + 1.0) / 3.0) + 0.3
    y = (rng.random(4000) < 1 / (1 + np.exp(-true_logit))).astype(float)
    model = LogisticModel.fit(("a", "b"), x, y, l2=0.0)
    # Weights are per standardised feature: 2.0 * std(a) and -0.5 for b (already scaled by its std).
    assert model.weights == pytest.approx((2.0, -0.5), abs=0.15)
    assert model.bias == pytest.approx(0.3, abs=0.1)
    # Calibrated on its own data: the mean probability is the share of positives.
    assert model.probabilities(x).mean() == pytest.approx(y.mean(), abs=0.01)
    again = LogisticModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert np.allclose(again.probabilities(x[:10]), model.probabilities(x[:10]))


def test_a_ranking_fit_learns_which_row_of_a_group_answers_and_keeps_probabilities_calibrated() -> None:
    rng = np.random.default_rng(1)
    groups, labels = [], []
    for _ in range(400):
        # "a" tells which row of a group answers; "level" is the same for every row of a group and says
        # nothing about which one, so the ranking fit must give it (almost) no weight.
        a = rng.normal(size=8)
        level = np.full(8, rng.normal())
        answer = np.zeros(8)
        answer[np.argmax(a + 0.3 * rng.normal(size=8))] = 1.0
        groups.append(np.column_stack([a, level]))
        labels.append(answer)
    model = LogisticModel.fit_ranking(("a", "level"), groups, labels)
    assert model.weights[0] > 1.0 and abs(model.weights[1]) < 0.05 * model.weights[0]
    # It picks the row with the highest "a", the best choice there is, whatever the group's level.
    assert all(np.argmax(model.probabilities(x)) == np.argmax(x[:, 0]) for x in groups)
    # The score is mapped to probabilities: their mean is the share of answering rows (1 in 8).
    assert model.probabilities(np.vstack(groups)).mean() == pytest.approx(1 / 8, abs=0.01)
    with pytest.raises(ValueError, match="both labels"):
        LogisticModel.fit_ranking(("a", "level"), groups[:2], [np.zeros(8), np.zeros(8)])


def test_fitting_needs_both_labels() -> None:
    with pytest.raises(ValueError, match="both labels"):
        LogisticModel.fit(("a",), np.ones((5, 1)), np.ones(5))


def test_a_users_calibration_comes_before_the_bundled_one(tmp_path: Path) -> None:
    bundled = find_calibration(tmp_path, "multilingual-e5-small")
    assert bundled is not None and bundled.reader is not None
    assert (BUNDLED_DIR / "multilingual-e5-small.json").is_file()
    assert find_calibration(tmp_path, "text2vec-base-chinese") is None

    model = LogisticModel(("cosine",), (0.5,), (0.1,), (1.0,), 0.0)
    own = Calibration("/models/text2vec-base-chinese", model, report={"dataset": "mine"})
    path = own.save(tmp_path / "calibrations")
    assert path.name == "text2vec-base-chinese.json"
    found = find_calibration(tmp_path, "shibing624/text2vec-base-chinese")
    assert found is not None and found.answerability == model and found.report == {"dataset": "mine"}
    # With a reranker the pair has its own file; the plain one does not stand in for it.
    assert find_calibration(tmp_path, "text2vec-base-chinese", "BAAI/bge-reranker-base") is None
    Calibration("text2vec-base-chinese", model, reranker="/m/bge-reranker-base").save(
        tmp_path / "calibrations"
    )
    assert (tmp_path / "calibrations" / "text2vec-base-chinese+bge-reranker-base.json").is_file()

    # A broken file is passed over (logged), and the bundled calibration is used instead.
    (tmp_path / "calibrations" / "multilingual-e5-small.json").write_text("{not json", encoding="utf-8")
    assert find_calibration(tmp_path, "multilingual-e5-small") == bundled


def test_question_words_are_not_content_terms() -> None:
    assert content_terms("差旅住宿标准是多少？") == ["差旅", "住宿", "标准"]
    assert content_terms("台灣的首都是哪裡？") == ["台湾", "首都"]  # folded to Simplified, as stored
    assert content_terms("Who won the 2022 World Cup?") == ["won", "2022", "world", "cup"]
    # Workplace words jieba lacks stay whole: 年假 is not 年 + 假, which every 放假 and 病假 would match.
    assert content_terms("年假有几天？") == ["年假"]
    # 多重 asks for a weight at a question's end; before another word it is a word (多重签证) or part of one.
    assert content_terms("星河X1 有多重？") == ["星河", "x1"]
    assert content_terms("多重签证怎么申请？")[:2] == ["多重", "签证"]
    assert content_terms("星河X1 多贵？") == ["星河", "x1"]
    assert asked_fields("星河X1 有多重？") == asked_fields("星河X1 重多少？") == ["重量", "weight"]
    assert asked_fields("星河X1 多少钱？") == ["价格"]
    assert asked_fields("这件事有多重要？") == asked_fields("多重签证怎么申请？") == []


def test_a_weight_or_price_is_searched_under_its_field_where_some_chunk_holds_it(
    tmp_path: Path, tiny_embedder
) -> None:
    """星河X1 有多重？ names no word of the spec row that answers it (重量: 2.1 kg): the field's name is one of
    its terms, in the search and in answerability, where some chunk holds it and only there."""
    from retrieval import SearchOptions

    docs = {
        "spec.txt": "重量：2.1 kg",
        "intro.txt": "星河X1 是一体化智能会议终端。星河X1 适合中小型会议室。",
        "leave.txt": "员工每年享有 12 天全薪病假。",
    }
    svc = _service_with(tmp_path, tiny_embedder, docs)
    found = svc.retrieve("t", "星河X1 有多重？", SearchOptions(k=3, mode="lexical"))
    assert set(found.term_weights) == {"星河", "x1", "重量"}  # weight: held by no chunk, not searched
    assert found.signals.unseen == 0.0  # 多重 is not a word the knowledge base lacks
    assert "spec.txt" in [hit.source for hit in found.hits]  # BM25 finds the row by 重量 alone
    # Without the field in any chunk, nothing is added: 多少钱 counts no unseen 价格 against the passage.
    priced = svc.retrieve("t", "星河X1 多少钱？", SearchOptions(k=3))
    assert set(priced.term_weights) == {"星河", "x1"} and priced.signals.unseen == 0.0
    svc.close()


def test_coverage_weighs_rare_terms_and_matches_whole_english_words() -> None:
    weights = {"报销": 1.0, "到账": 3.0}
    assert coverage("审核通过后报销款三个工作日内到账。", weights) == 1.0
    assert coverage("报销需要提交发票。", weights) == 0.25
    assert coverage("anything", {}) == 1.0
    assert coverage("We started the Cup.", {"art": 1.0, "cup": 1.0}) == 0.5  # "art" is not a word here
    # A term no chunk holds weighs most; a term every chunk holds weighs least.
    weights = term_weights(10, {"common": 10, "rare": 1}, ["common", "rare", "unseen"])
    assert weights["common"] < weights["rare"] < weights["unseen"]


def test_coverage_is_folded_to_simplified_and_counts_full_from_the_saturation() -> None:
    weights = {"图书馆": 1.0, "开馆": 1.0}  # terms are folded to Simplified; a Traditional passage holds them
    assert coverage("臺灣大學圖書館於1928年開館。", weights) == 1.0
    four_of_five = {"a1": 1.0, "b2": 1.0, "c3": 1.0, "d4": 1.0, "e5": 1.0}
    assert COVERAGE_SATURATION <= 0.8
    held = signals(["a1 b2 c3 d4"], [0.9], [0.8, 0.7], four_of_five, [], agreement=True)
    assert held.coverage == 1.0
    half = signals(["a1 b2"], [0.9], [0.8, 0.7], four_of_five, [], agreement=True)
    assert half.coverage == pytest.approx(0.4 / COVERAGE_SATURATION)


def test_a_knowledge_base_counts_the_chunks_holding_each_term(tmp_path: Path, tiny_embedder) -> None:
    from ingestion import IngestionPipeline, SourceFile
    from retrieval import EmbeddingIdentity

    docs = {"a.txt": "报销款三个工作日到账。", "b.txt": "出差可以乘坐高铁，报销另算。"}
    for name, text in docs.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    catalog = KnowledgeBaseCatalog(tmp_path / "data")
    kb = catalog.create("t", EmbeddingIdentity.of(tiny_embedder), {})
    with kb.writing():
        IngestionPipeline(kb, tiny_embedder).run([SourceFile(tmp_path / n, n) for n in docs])
    assert kb.term_counts(["报销", "高铁", "火星"]) == (2, {"报销": 2, "高铁": 1})
    kb.close()


def test_a_word_and_its_sub_words_weigh_once_in_the_signals(tmp_path: Path, tiny_embedder) -> None:
    """A passage about laptops does not cover a question about their price: 笔记本电脑 is one word of the
    question, not four (jieba also yields 笔记, 电脑, 笔记本), so the 价格 it lacks still weighs."""
    from retrieval import SearchOptions

    docs = {
        "it.txt": "公司配发的笔记本电脑使用满 3 年可申请更换。",
        "price.txt": "会议终端的价格是 2999 元。",
        "leave.txt": "员工每年享有 12 天全薪病假。",
    }
    svc = _service_with(tmp_path, tiny_embedder, docs)
    question = "笔记本电脑的价格是多少？"
    assert content_terms(question) == ["笔记", "电脑", "笔记本", "笔记本电脑", "价格"]
    found = svc.retrieve("t", question, SearchOptions(k=3))
    weights = found.term_weights  # the reader still reads every term, sub-words included
    assert set(weights) == set(content_terms(question))
    whole = weights["笔记本电脑"] + weights["价格"]
    assert found.signals.coverage == pytest.approx(weights["笔记本电脑"] / whole / COVERAGE_SATURATION)
    assert found.signals.coverage < 1.0  # counted four times, 笔记本电脑 alone passed the saturation
    # The share no chunk holds is of whole words too: CEO against 笔记本电脑, not against its sub-words as well.
    unseen = term_weights(3, {}, ["ceo"])["ceo"]  # three chunks, none holding it
    ceo = svc.retrieve("t", "笔记本电脑的CEO是谁？", SearchOptions(k=3)).signals
    assert ceo.unseen == pytest.approx(unseen / (unseen + weights["笔记本电脑"]))
    svc.close()


def _service_with(tmp_path: Path, embedder, docs: dict[str, str]):
    """Return the service on the defaults with the knowledge base `t` of `docs` (file name: text)."""
    from app.services import KnowledgeService
    from app.settings import load_settings

    for name, text in docs.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    svc = KnowledgeService(load_settings(data_dir=tmp_path / "data"))
    svc.embedder = embedder
    assert not svc.ingest("t", [tmp_path / n for n in docs]).failures
    return svc


def test_expected_calibration_error() -> None:
    assert expected_calibration_error([0.9] * 10, [1] * 9 + [0]) == pytest.approx(0.0)
    assert expected_calibration_error([1.0, 0.0], [0, 1]) == pytest.approx(1.0)
    assert expected_calibration_error([0.25, 0.25, 0.75, 0.75], [0, 0, 1, 1]) == pytest.approx(0.25)


def _paragraph(index: int, article: int, context: str, *answers: str) -> Paragraph:
    questions = tuple(Question(f"q{index}-{i}", (a,)) for i, a in enumerate(answers))
    return Paragraph(index, article, context, questions)


def test_a_dataset_splits_into_indexed_paragraphs_and_three_kinds_of_question() -> None:
    paragraphs = [
        _paragraph(0, 0, "甲是一座城市。甲有三条河。", "城市", "三条"),
        _paragraph(1, 0, "甲的市长是乙。", "乙"),
        _paragraph(2, 1, "丙山高八百米。", "八百米"),
        _paragraph(3, 1, "丙山在丁省。", "丁省"),
        _paragraph(4, 2, "戊湖很深。", "很深"),
        _paragraph(5, 3, "己是一种鸟。", "鸟"),
        _paragraph(6, 4, "庚是一种鱼。", "鱼"),
    ]
    chosen = answer_set(paragraphs, holdout=2, seed=1)
    kinds = [case.kind for case in chosen.cases]
    indexed_text = "".join(p.context for p in chosen.paragraphs)
    # As many answerable questions as unanswerable ones, when there are enough.
    assert 0 < kinds.count("answerable") <= kinds.count("off-topic") + kinds.count("same-topic")
    assert kinds.count("off-topic") and kinds.count("same-topic")
    for case in chosen.cases:
        held = any(answer in indexed_text for answer in case.question.answers)
        assert held == (case.kind == "answerable")
    # The indexed paragraphs' other questions are kept apart, for the reader to learn from.
    answerable = [c.question for c in chosen.cases if c.kind == "answerable"]
    more = [c.question for c in chosen.more_answerable]
    assert all(c.kind == "answerable" for c in chosen.more_answerable)
    assert sorted(q.text for q in answerable + more) == sorted(
        q.text for p in chosen.paragraphs for q in p.questions
    )
    # A same-topic question's article is in the knowledge base, less the paragraph that answers it.
    same = [c for c in chosen.cases if c.kind == "same-topic"]
    assert all(c.question.text.split("-")[0] in ("q1", "q3") for c in same)
    with pytest.raises(ValueError, match="more than 7 articles"):
        answer_set(paragraphs[:4], holdout=7)


def _asked(kind: str, text: str, answer: str, refused: bool = False, p: float | None = None) -> Asked:
    timings = Timings(1.0, 0.0, None, 2.0)
    reply = Answer(text, [], Usage(0, 0), timings, "stop", not refused, refused, answerability=p)
    return Asked(AnswerCase(Question("q", (answer,)), kind), reply, 0.002)


def test_the_summary_reads_answers_as_a_person_would() -> None:
    asked = [
        _asked("answerable", "报销三天到账。[1]另见制度。[2]", "三天", p=0.9),  # first sentence holds it
        _asked("answerable", "另见制度。[2]报销三天到账。[1]", "三天", p=0.8),  # only a later one does
        _asked("answerable", "报销制度全文。报销三天到账。", "三天", p=0.7),  # a whole chunk, no citation
        _asked("answerable", "根据已知信息无法回答该问题。", "三天", refused=True, p=0.1),
        _asked("off-topic", "根据已知信息无法回答该问题。", "x", refused=True, p=0.1),
        _asked("same-topic", "年假十天。[1]", "x", p=0.6),
    ]
    result = summary(asked)
    assert (result["answerable"], result["off_topic"], result["same_topic"]) == (4, 1, 1)
    assert result["answer_hit"] == 0.75 and result["first_sentence_hit"] == 0.25
    assert result["answerable_refused"] == 0.25
    assert result["off_topic_refused"] == 1.0 and result["same_topic_refused"] == 0.0
    assert result["ece"] == pytest.approx(
        expected_calibration_error([0.9, 0.8, 0.7, 0.1, 0.1, 0.6], [1, 1, 1, 1, 0, 0])
    )
