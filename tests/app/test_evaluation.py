"""Retrieval evaluation: the metrics on hand-computed rankings, the SQuAD reader, and `kbqa eval retrieval`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from app.evaluation import Case, Paragraph, ndcg, percentile, read_squad, relevance, select, write_paragraphs
from app.evaluation import metrics as compute_metrics
from retrieval.calibration import Calibration

KBQA = str(Path(sys.executable).parent / "kbqa")

# Four Chinese paragraphs in two articles, six questions, in SQuAD format.
SQUAD = {
    "version": "test",
    "data": [
        {
            "title": "長江",
            "paragraphs": [
                {
                    "context": "長江是中國第一長河，全長約六千三百公里，發源於青藏高原的唐古拉山脈，最後在上海注入東海。",
                    "qas": [
                        {
                            "id": "1",
                            "question": "長江全長大約多少公里？",
                            "answers": [{"text": "六千三百公里"}],
                        },
                        {
                            "id": "2",
                            "question": "長江在哪裡注入東海？",
                            "answers": [{"text": "上海"}, {"text": "上海"}],
                        },
                    ],
                },
                {
                    "context": "三峽大壩位於湖北省宜昌市，是世界上裝機容量最大的水力發電站，於二零零六年完工。",
                    "qas": [
                        {"id": "3", "question": "三峽大壩位於哪個城市？", "answers": [{"text": "宜昌市"}]}
                    ],
                },
            ],
        },
        {
            "title": "熊貓",
            "paragraphs": [
                {
                    "context": "大熊貓主要生活在四川省的山區竹林中，每天要花十多個小時進食竹子。",
                    "qas": [
                        {"id": "4", "question": "大熊貓主要吃什麼？", "answers": [{"text": "竹子"}]},
                        {"id": "5", "question": "大熊貓生活在哪個省？", "answers": [{"text": "四川省"}]},
                    ],
                },
                {
                    "context": "臥龍自然保護區建立於一九六三年，是中國最早以保護大熊貓為主的自然保護區之一。",
                    "qas": [
                        {
                            "id": "6",
                            "question": "臥龍自然保護區建立於哪一年？",
                            "answers": [{"text": "一九六三年"}],
                        }
                    ],
                },
            ],
        },
    ],
}


@pytest.fixture
def squad_file(tmp_path: Path) -> Path:
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(SQUAD, ensure_ascii=False), encoding="utf-8")
    return path


def test_metrics_of_a_hit_at_rank_two() -> None:
    result = compute_metrics([[False, True] + [False] * 8])
    assert result["recall@1"] == 0.0
    assert result["recall@5"] == 1.0
    assert result["recall@10"] == 1.0
    assert result["mrr@10"] == 0.5
    assert result["ndcg@10"] == pytest.approx(1 / math.log2(3))


def test_metrics_average_over_questions() -> None:
    rankings = [
        [True] + [False] * 9,  # rank 1
        [False] * 6 + [True] + [False] * 3,  # rank 7
        [False] * 10,  # missed
        [False, False, True, True] + [False] * 6,  # ranks 3 and 4
    ]
    result = compute_metrics(rankings)
    assert result["recall@1"] == pytest.approx(1 / 4)
    assert result["recall@5"] == pytest.approx(2 / 4)
    assert result["recall@10"] == pytest.approx(3 / 4)
    assert result["mrr@10"] == pytest.approx((1 + 1 / 7 + 0 + 1 / 3) / 4)
    two_hits = (1 / math.log2(4) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert result["ndcg@10"] == pytest.approx((1 + 1 / math.log2(8) + 0 + two_hits) / 4)


def test_metrics_ignore_hits_past_k_and_empty_input() -> None:
    assert compute_metrics([[False] * 10 + [True]])["recall@10"] == 0.0
    assert compute_metrics([])["mrr@10"] == 0.0
    assert ndcg([]) == 0.0
    assert ndcg([True, True]) == pytest.approx(1.0)


def test_percentile_is_nearest_rank() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert percentile([float(v) for v in range(1, 101)], 0.95) == 95.0
    assert percentile([], 0.5) == 0.0


def test_read_squad(squad_file: Path) -> None:
    paragraphs = read_squad(squad_file)
    assert [p.index for p in paragraphs] == [0, 1, 2, 3]
    assert [p.article for p in paragraphs] == [0, 0, 1, 1]
    assert paragraphs[0].source == "paragraphs/p00001.txt"
    assert paragraphs[3].file_name == "p00004.txt"
    assert paragraphs[0].questions[1].text == "長江在哪裡注入東海？"
    assert paragraphs[0].questions[1].answers == ("上海",)  # duplicate answer texts collapse
    assert sum(len(p.questions) for p in paragraphs) == 6


def test_select_limits_questions_and_keeps_their_articles(squad_file: Path) -> None:
    paragraphs = read_squad(squad_file)
    everything, cases = select(paragraphs, None)
    assert len(everything) == 4 and len(cases) == 6
    chosen, cases = select(paragraphs, 2)
    assert [c.question.text for c in cases] == ["長江全長大約多少公里？", "長江在哪裡注入東海？"]
    assert [p.index for p in chosen] == [0, 1]  # the article's other paragraph is a distractor


def test_relevance_by_answer_and_by_paragraph(squad_file: Path) -> None:
    paragraph = read_squad(squad_file)[0]
    case = Case(paragraph.questions[1], paragraph)
    hits = [("在上海注入東海", "paragraphs/p00002.txt"), ("長江是中國第一長河", "paragraphs/p00001.txt")]
    assert relevance(hits, case) == {"answer": [True, False], "paragraph": [False, True]}


@pytest.mark.slow
def test_cli_eval_retrieval(squad_file: Path, tmp_path: Path) -> None:
    command = [KBQA, "--data-dir", str(tmp_path / "data"), "eval", "retrieval", "--kb", "eval-kb"]
    command += ["--dataset", str(squad_file), "--json"]
    for _run in range(2):  # the second run reuses the knowledge base
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["questions"] == 6 and report["paragraphs"] == 4
        assert report["kb"] == "eval-kb" and report["rerank"] is False
        for definition in ("answer", "paragraph"):
            values = report["metrics"][definition]
            assert set(values) == {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"}
            assert all(0.0 <= value <= 1.0 for value in values.values())
        assert report["metrics"]["paragraph"]["recall@10"] == 1.0
    files = sorted(p.name for p in (tmp_path / "data" / "eval" / "eval-kb" / "paragraphs").iterdir())
    assert files == ["p00001.txt", "p00002.txt", "p00003.txt", "p00004.txt"]

    limited = subprocess.run(
        [*command[:-1], "--limit", "2", "--json"], capture_output=True, text=True, timeout=300
    )
    assert limited.returncode == 1
    assert "not among the evaluated paragraphs" in " ".join(limited.stderr.split())


def test_writing_paragraphs_leaves_only_the_ones_asked_for(tmp_path: Path) -> None:
    first = [Paragraph(0, 0, "甲", ()), Paragraph(1, 0, "乙", ())]
    write_paragraphs(first, tmp_path)
    written = (tmp_path / "p00001.txt").stat().st_mtime_ns
    write_paragraphs(first[:1], tmp_path)  # a later run over fewer paragraphs: the other is not indexed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p00001.txt"]
    assert (tmp_path / "p00001.txt").stat().st_mtime_ns == written  # unchanged text is not rewritten


def write_city_dataset(
    path: Path,
    cities: list[str],
    paragraph: Callable[[str, int, int], str],
    questions: Callable[[str, int, int], list[tuple[str, str]]],
) -> Path:
    """Write a SQuAD-format file of one article per city, each of two paragraphs: `paragraph(city, number,
    part)` is a paragraph's text and `questions(city, number, part)` its (question, answer) pairs."""
    articles = [
        {
            "title": city,
            "paragraphs": [
                {
                    "context": paragraph(city, number, part),
                    "qas": [
                        {"id": f"{number}-{part}-{i}", "question": question, "answers": [{"text": answer}]}
                        for i, (question, answer) in enumerate(questions(city, number, part))
                    ],
                }
                for part in (1, 2)
            ],
        }
        for number, city in enumerate(cities)
    ]
    path.write_text(json.dumps({"version": "test", "data": articles}, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.mark.slow
def test_cli_eval_answers_on_a_later_slice_of_articles(tmp_path: Path) -> None:
    cities = ["北京", "上海", "广州", "深圳", "成都", "杭州"]
    dataset = write_city_dataset(
        tmp_path / "slices.json",
        cities,
        lambda city, number, part: f"{city}的第{part}段：{city}有{10 * number + part}座博物馆。",
        lambda city, number, part: [(f"{city}第{part}段说有几座博物馆？", f"{10 * number + part}座")],
    )
    command = [KBQA, "--data-dir", str(tmp_path / "data"), "eval", "answers", "--kb", "later", "--json"]
    command += ["--dataset", str(dataset), "--articles", "3", "--skip-articles", "3", "--holdout", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # Of articles 3-5: one left out whole (2 off-topic questions), one's last paragraph (1 same-topic).
    assert (report["off_topic"], report["same_topic"]) == (2, 1)
    folder = tmp_path / "data" / "eval" / "later" / "paragraphs"
    indexed = [p.read_text(encoding="utf-8") for p in folder.iterdir()]
    assert len(indexed) == 3 and all(text.split("的")[0] in cities[3:] for text in indexed)


@pytest.mark.slow
def test_cli_eval_conversations_asks_follow_ups_four_ways(tmp_path: Path) -> None:
    cities = ["北京", "上海", "广州", "深圳", "成都", "杭州"]
    dataset = write_city_dataset(
        tmp_path / "cities.json",
        cities,
        lambda city, number, part: f"{city}的第{part}段：{city}有{10 * number + part}座博物馆。",
        lambda city, number, part: [(f"{city}第{part}段说有几座博物馆？", f"{10 * number + part}座")],
    )
    command = [KBQA, "--data-dir", str(tmp_path / "data"), "eval", "conversations", "--kb", "talk", "--json"]
    command += ["--dataset", str(dataset), "--holdout", "1", "--limit", "3"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # Every question names its city (the title): at most 3 answerable follow-ups; held out: the two
    # questions of the article left out and the last paragraph's of another.
    assert report["answerable_followups"] == 3 and report["held_out_followups"] == 3
    for key in ("followup_hit_with_history", "original_hit", "original_hit_after_unrelated"):
        assert 0.0 <= report[key] <= 1.0
    assert report["followups_rewritten"] == 1.0  # every 它 question was searched with its city


def test_conversation_parts_split_the_follow_ups_by_article() -> None:
    from app.answer_evaluation import AnswerCase, AnswerSet
    from app.conversation_evaluation import conversation_set
    from app.evaluation import Question

    cities = ["北京", "上海", "广州", "深圳", "成都"]
    paragraphs = [
        Paragraph(
            number,
            number,
            f"{city}有{number}座桥，{number + 1}条河。",
            (
                Question(f"{city}有几座桥？", (f"{number}座",)),
                Question(f"{city}有几条河？", (f"{number + 1}条",)),
            ),
        )
        for number, city in enumerate(cities)
    ]
    cases = [AnswerCase(q, "answerable") for p in paragraphs for q in p.questions]
    chosen = AnswerSet(paragraphs, cases)
    titles = dict(enumerate(cities))

    def asked(part: str) -> set[str]:
        return {f.original.question.text for f in conversation_set(chosen, paragraphs, titles, part=part)}

    tune, report, every = asked("tune"), asked("report"), asked("all")
    assert {q[:2] for q in tune} == {"北京", "广州", "成都"} and {q[:2] for q in report} == {"上海", "深圳"}
    assert tune | report == every and not tune & report
    with pytest.raises(ValueError, match="part"):
        conversation_set(chosen, paragraphs, titles, part="odd")


@pytest.mark.slow
def test_cli_eval_calibrate_pools_rounds_and_teaches_the_reader_every_answerable_question(
    tmp_path: Path,
) -> None:
    dataset = write_city_dataset(
        tmp_path / "cities.json",
        ["北京", "上海", "广州", "深圳", "成都", "杭州", "南京", "武汉"],
        lambda city, number, part: (
            f"{city}第{part}区有{10 * number + part}座博物馆。{city}第{part}区的河叫{city}{part}河。"
        ),
        lambda city, number, part: [
            (f"{city}第{part}区有几座博物馆？", f"{10 * number + part}座"),
            (f"{city}第{part}区的河叫什么？", f"{city}{part}河"),
        ],
    )
    data = tmp_path / "data"
    command = [KBQA, "--data-dir", str(data), "eval", "calibrate", "--kb", "cal", "--json"]
    command += ["--dataset", str(dataset), "--holdout", "1", "--rounds", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["report"]
    # Each round leaves out one article (4 off-topic questions) and one paragraph (2 same-topic), and asks
    # as many answerable ones: 12 questions a round, fitted together.
    assert (report["questions"], report["answerable_share"], report["rounds"]) == (24, 0.5, 2)
    # The reader learns from the indexed paragraphs' other questions too, not only the 6 answerable a round.
    assert report["reader_questions"] > 2 * 6
    assert {p.name for p in (data / "kbs").iterdir()} == {"cal", "cal-2"}
    stored = Calibration.read(data / "calibrations" / "multilingual-e5-small.json")
    assert stored.report["rounds"] == 2 and stored.reader is not None
