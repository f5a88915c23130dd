"""Answers people can trust, on the sample documents as a new user meets them: the bundled calibration
refuses what the documents do not hold, whatever the backend, and the learned reader picks the sentence
that answers. Real bundled e5 model, real knowledge base built from examples/docs."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import paths
import pytest
from models import ScriptedModel

from app.services import KnowledgeService
from app.settings import load_settings
from llm import Answerer, AnswerOptions, GenerationParams, PromptConfig
from retrieval import SearchOptions

SAMPLE_DOCS = paths.SAMPLE_DOCS


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, e5_embedder) -> KnowledgeService:
    """The service on the offline defaults with the sample knowledge base `demo`."""
    svc = KnowledgeService(load_settings(data_dir=tmp_path_factory.mktemp("data")))
    svc.embedder = e5_embedder
    assert not svc.ingest("demo", [SAMPLE_DOCS]).failures
    return svc


def first_sentence(text: str) -> str:
    """Return an extractive answer's first sentence, without its citation."""
    return re.split(r"\s?\[\d+\]", text, maxsplit=1)[0]


@pytest.mark.parametrize(
    ("question", "holds"),
    [
        ("报销需要多久到账？", "3 个工作日内打入员工工资卡"),  # the README's first example
        ("报销款多久到账？", "3 个工作日内打入员工工资卡"),  # the web page's placeholder
        ("差旅住宿标准是多少？", "住宿每晚不超过 500 元"),  # the README's second example
        ("公司的创始人是谁？", "创始人兼首席执行官为林思远"),
        ("What is the hotel limit in Tokyo?", "Tokyo, Nightly limit (USD): 200"),
        # A table row is read whole: the holiday, its dates and the make-up working days together.
        ("国庆节放几天假，哪天调休上班？", "10月1日至10月8日，天数: 8，调休上班日期: 9月28日"),
        ("星河X1 的麦克风拾音距离是多少？", "拾音半径 8 米"),
        # Every tier of the rule, not the top one alone (a ；joins them) nor holiday rows (年假 is one word).
        ("年假有几天？", "每年 10 天；满 5年不满 10 年的，每年 12 天；满 10 年及以上的，每年 15 天"),
        # 病假 and 年假 share 假 and a duration; the sick-leave rule holds the whole question (full_coverage).
        ("病假一年有几天？", "病假：每年享有 12 天全薪病假"),
        # A key-value table row reads as its key and value.
        ("星河X1 重量多少？", "重量：2.1 kg"),
        # Asked without the field's name: the weight is searched under 重量 (多重 is no word of the documents).
        ("星河X1 重多少？", "重量：2.1 kg"),
        ("星河X1 有多重？", "重量：2.1 kg"),
        # The reader ranks the product's description first; the price row, whose 2999 answers, leads.
        ("星河X1 多少钱？", "价格: 2999"),
    ],
)
def test_the_sample_questions_get_the_sentence_that_answers(demo: KnowledgeService, question, holds) -> None:
    answer = demo.ask("demo", question).read()
    assert not answer.refused and answer.answerability is not None
    assert answer.answerability >= demo.settings.llm.min_answerability
    assert holds in first_sentence(answer.text), answer.text
    assert answer.closest == []


@pytest.mark.parametrize(
    "question", ["Who won the 2022 World Cup?", "公司年会在哪里举办？", "火星的首都是哪座城市？"]
)
def test_questions_the_documents_cannot_answer_are_refused(demo: KnowledgeService, question: str) -> None:
    answer = demo.ask("demo", question).read()
    assert answer.refused and not answer.grounded and answer.citations == []
    assert answer.text == PromptConfig().refusal(question)
    assert answer.answerability is not None and answer.answerability < demo.settings.llm.min_answerability
    # The closest passages still come back, numbered, for a person to look at.
    assert [c.n for c in answer.closest] == list(range(1, len(answer.closest) + 1)) and answer.closest


def test_a_generating_backend_is_not_called_below_the_threshold(demo: KnowledgeService) -> None:
    model = ScriptedModel("世界杯冠军是阿根廷[1]。")
    qa = copy.copy(demo)  # the service searches; an answerer with a scripted model answers
    qa.answerer = Answerer(PromptConfig(), GenerationParams(), model=model, min_answerability=0.2)
    refused = qa.ask("demo", "Who won the 2022 World Cup?").read()
    assert refused.refused and model.prompts == [] and refused.closest
    answered = qa.ask("demo", "报销需要多久到账？").read()
    assert len(model.prompts) == 1 and not answered.refused and answered.answerability >= 0.2


def test_answerability_zero_never_refuses(demo: KnowledgeService) -> None:
    model = ScriptedModel("我不知道。")
    qa = copy.copy(demo)
    qa.answerer = Answerer(PromptConfig(), GenerationParams(), model=model, min_answerability=0.0)
    answer = qa.ask("demo", "Who won the 2022 World Cup?").read()
    assert not answer.refused and len(model.prompts) == 1 and answer.answerability is not None


def test_without_a_calibration_nothing_is_refused_and_it_is_said_once(
    tmp_path: Path, tiny_embedder, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a.md").write_text("# 报销\n\n报销款三个工作日内到账。\n", encoding="utf-8")
    svc = KnowledgeService(load_settings(data_dir=tmp_path / "data"))
    svc.embedder = tiny_embedder  # a model kbqa ships no calibration for
    svc.ingest("tiny", [tmp_path / "a.md"])
    with caplog.at_level("WARNING"):
        answers = [svc.ask("tiny", "Who won the 2022 World Cup?").read() for _ in range(2)]
    assert all(not a.refused and a.answerability is None for a in answers)
    warnings = [r for r in caplog.records if "no answerability calibration" in r.getMessage()]
    assert len(warnings) == 1
    assert svc.info("tiny").calibrated is False
    # An explicit threshold still refuses.
    options = AnswerOptions(retrieval=SearchOptions(score_threshold=1.0))
    assert svc.ask("tiny", "Who won the 2022 World Cup?", options=options).read().refused
