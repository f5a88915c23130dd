"""Fine-tune evaluation: each metric on hand-computed cases, refusal accuracy both ways, base model and a
random LoRA adapter side by side on a tiny Qwen2, the end-to-end mode through an answer callable, and
`kbqa finetune eval` on a tiny registered dataset."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from models import build_random_lora_adapter, build_tiny_causal_lm

from finetune.conversation import Conversation
from finetune.evaluate import (
    ADAPTER,
    Example,
    char_bleu4,
    evaluate_answers,
    evaluate_model,
    exact_match,
    examples_from,
    is_refusal,
    llm_config,
    normalize,
    question_of,
    report,
    rouge,
    rouge_l,
    rouge_n,
    score,
    words,
)
from llm.backends import load_chat_model
from llm.config import LLMConfig
from llm.prompt import PromptConfig
from llm.types import BASE_MODEL, GenerationParams, Message

PROMPT = PromptConfig()
REFUSAL_ZH, REFUSAL_EN = PROMPT.refusal_zh, PROMPT.refusal_en


def conversation(question: str, reference: str, source: str = "") -> Conversation:
    return Conversation((Message("user", question), Message("assistant", reference)), source)


# --- metrics ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("  年假 为\t五天。 ", "年假为五天."),
        ("年假：五天！（含周末）", "年假:五天!(含周末)"),
        ("“好”，‘对’", "\"好\",'对'"),
        ("five   days\n", "five days"),
        ("ＡＢＣ１２３", "ABC123"),
    ],
)
def test_normalize_evens_width_and_whitespace(text: str, normalised: str) -> None:
    assert normalize(text) == normalised


def test_exact_match_after_normalisation_only() -> None:
    assert exact_match(" 年假为五天。", "年假为 五天.") == 1.0
    assert exact_match("年假：五天", "年假:五天") == 1.0
    assert exact_match("Five days", "five days") == 0.0  # case is kept
    assert exact_match("年假为五天", "年假为五天。") == 0.0  # punctuation is kept


def test_char_bleu4_hand_computed() -> None:
    assert char_bleu4("年假五天", "年假五天") == pytest.approx(1.0)
    # Precisions 4/4, 2/3 (年假, 五天), 0/2 -> 1/(2*2), 0/1 -> 1/(4*1); brevity exp(1 - 5/4).
    expected = math.exp(1 - 5 / 4) * (1 * 2 / 3 * 1 / 4 * 1 / 4) ** 0.25
    assert char_bleu4("年假五天", "年假有五天") == pytest.approx(expected)
    # One character: no 2-, 3-, 4-grams at all, smoothed to 1/2, 1/4, 1/8 (as nltk's method3 does).
    assert char_bleu4("是", "是") == pytest.approx((1 / 64) ** 0.25)
    # Longer than the reference: no brevity penalty; 1-grams 4/5, 2-grams 3/4, 3-grams 2/3, 4-grams 1/2.
    assert char_bleu4("年假五天。", "年假五天") == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    assert char_bleu4("报销", "年假五天") == 0.0  # no character in common
    assert char_bleu4("", "年假五天") == 0.0
    assert char_bleu4("年假：五天", "年假:五天") == pytest.approx(1.0)  # scored after normalisation


def test_rouge_n_and_l_hand_computed() -> None:
    prediction, reference = ["年假", "有", "五", "天"], ["年假", "是", "五", "天", "。"]
    # 1-grams: 3 shared; P 3/4, R 3/5. 2-grams: only 五天 shared; P 1/3, R 1/4. LCS 年假 五 天 = 3.
    assert rouge_n(prediction, reference, 1) == pytest.approx(2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))
    assert rouge_n(prediction, reference, 2) == pytest.approx(2 / 7)
    assert rouge_l(prediction, reference) == pytest.approx(2 / 3)
    # Order matters to ROUGE-L only: every word shared, longest common subsequence 1 of 3.
    assert rouge_n(["甲", "乙", "丙"], ["丙", "乙", "甲"], 1) == pytest.approx(1.0)
    assert rouge_l(["甲", "乙", "丙"], ["丙", "乙", "甲"]) == pytest.approx(1 / 3)
    # Repeated words are clipped to the reference's count: overlap 1, P 1/3, R 1/2.
    assert rouge_n(["的", "的", "的"], ["的", "好"], 1) == pytest.approx(2 / 5)
    assert rouge_n([], ["的"], 1) == 0.0 and rouge_l(["好"], []) == 0.0


def test_rouge_uses_jieba_words() -> None:
    assert words("我爱 北京天安门") == ["我", "爱", "北京", "天安门"]
    # 4 words against 3 (我, 爱, 北京): P 3/3, R 3/4 for ROUGE-1 and -L; 2-grams 2 of 2 and of 3.
    scores = rouge("我爱北京", "我爱北京天安门")
    assert scores["rouge_1"] == pytest.approx(2 * 0.75 / 1.75)
    assert scores["rouge_2"] == pytest.approx(2 * (2 / 3) / (1 + 2 / 3))
    assert scores["rouge_l"] == pytest.approx(2 * 0.75 / 1.75)


def test_refusal_is_the_answerers_test_in_either_language() -> None:
    assert is_refusal(REFUSAL_ZH, PROMPT) and is_refusal("根据已知信息无法回答该问题", PROMPT)
    assert is_refusal(f" {REFUSAL_EN.upper()} ", PROMPT)
    assert not is_refusal("年假五天。", PROMPT)
    # A refusal sentence buried in a long answer is an answer, as the answerer decides.
    assert not is_refusal(f"年假五天，满十年为十天，报销需三十天内提交。{REFUSAL_ZH}", PROMPT)


def test_refusal_accuracy_both_ways() -> None:
    references = [REFUSAL_ZH, REFUSAL_ZH, "年假五天。", "年假五天。", REFUSAL_EN]
    predictions = ["根据已知信息，无法回答该问题", "年假五天。", "年假五天。", REFUSAL_ZH, "Five days."]
    scores = score(predictions, references, PROMPT)
    # Right: refusal refused (1st), answer answered (3rd). Wrong: 2nd, 4th, 5th.
    assert (scores.unanswerable, scores.refused_unanswerable, scores.answered_answerable) == (3, 1, 1)
    assert scores.refusal_accuracy == pytest.approx(2 / 5)
    assert scores.examples == 5 and scores.exact_match == pytest.approx(1 / 5)


def test_score_is_the_mean_of_the_per_example_metrics() -> None:
    predictions, references = ["年假五天", "年假五天", "报销"], ["年假五天", "年假有五天", "年假五天"]
    scores = score(predictions, references)
    bleu = [char_bleu4(p, r) for p, r in zip(predictions, references, strict=True)]
    rouges = [rouge(p, r) for p, r in zip(predictions, references, strict=True)]
    assert scores.exact_match == pytest.approx(1 / 3)
    assert scores.bleu_4 == pytest.approx(sum(bleu) / 3)
    assert scores.rouge_l == pytest.approx(sum(r["rouge_l"] for r in rouges) / 3)
    assert scores.refusal_accuracy == 1.0  # nothing refused, nothing should have been
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        score(predictions[:2], references)


def test_examples_split_the_reference_from_the_prompt() -> None:
    turns = (
        Message("system", "你是助手。"),
        Message("user", "年假几天？"),
        Message("assistant", "五天。"),
        Message("user", "满十年呢？"),
        Message("assistant", "十天。"),
    )
    [example] = examples_from([Conversation(turns, "dev.json#0")])
    assert example == Example(turns[:-1], "十天。", "dev.json#0")
    assert question_of(example) == "满十年呢？"
    with pytest.raises(ValueError, match=r"dev.json#1: .*must end with the assistant's reference"):
        examples_from([Conversation(turns[:-1], "dev.json#1")])


def test_question_of_a_rag_prompt_is_the_question_alone() -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    chunks = [{"n": 1, "text": "员工年假为五天。", "source": "手册.pdf", "page": 3}]
    for template, refusal, question in (
        (PROMPT.template_zh, REFUSAL_ZH, "年假有几天？"),
        (PROMPT.template_en, REFUSAL_EN, "How many days of leave?"),
    ):
        user = ImmutableSandboxedEnvironment().from_string(template)
        rendered = user.render(chunks=chunks, question=question, refusal=refusal)
        assert question_of(Example((Message("user", rendered),), "")) == question


def test_question_of_rag_training_data_and_its_refusal_targets() -> None:
    from finetune.rag import Passage, RagOptions, RagSample, build_rag_conversations

    samples = [
        RagSample(
            "年假有几天？",
            "五天",
            Passage("员工年假为五天。", "手册.pdf", 3),
            (Passage("报销需三十天内提交。", "b"),),
        ),
        RagSample("How long is the leave?", "Five days", Passage("Leave is five days.", "h.md")),
        RagSample("谁审批报销？", "部门经理", Passage("报销由部门经理审批。", "c")),
    ]
    conversations = build_rag_conversations(samples, PROMPT, RagOptions(k=1, refusal_share=1 / 3, seed=0))
    examples = examples_from(conversations)
    assert [question_of(example) for example in examples] == [sample.question for sample in samples]
    assert sum(is_refusal(example.reference, PROMPT) for example in examples) == 1


# --- generation: base model and adapter ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random Qwen2 chat model and a random LoRA adapter for it."""
    root = tmp_path_factory.mktemp("finetune-eval")
    model_dir = build_tiny_causal_lm(root / "qwen2")
    return model_dir, build_random_lora_adapter(model_dir, root / "adapter", seed=1)


QUESTIONS = ["年假有几天？", "报销需要多久？", "服务器几点备份？"]
GREEDY = GenerationParams(max_new_tokens=8)


def test_base_and_adapter_give_two_rows_from_one_model(tiny_model: tuple[Path, Path]) -> None:
    model_dir, adapter_dir = tiny_model
    chat = load_chat_model(
        llm_config(str(model_dir), adapter_dir, base=None).model_copy(update={"device": "cpu"})
    )
    prompts = [[Message("user", q)] for q in QUESTIONS]
    # References are the base model's own greedy replies, so base scores 1 and the adapter less.
    references = [chat.generate(p, GREEDY.model_copy(update={"adapter": BASE_MODEL})).text for p in prompts]
    adapted = [chat.generate(p, GREEDY.model_copy(update={"adapter": ADAPTER})).text for p in prompts]
    assert references != adapted  # the random adapter changes the replies
    examples = examples_from([conversation(q, r) for q, r in zip(QUESTIONS, references, strict=True)])
    ticks: list[int] = []

    rows = evaluate_model(chat, examples, params=GREEDY, advance=lambda: ticks.append(1))
    assert [row.name for row in rows] == [BASE_MODEL, ADAPTER] and len(ticks) == 6
    base, adapter = rows
    assert base.predictions == references and adapter.predictions == adapted
    assert base.scores.exact_match == 1.0 and adapter.scores.exact_match < 1.0
    assert adapter.scores == score(adapted, references)
    assert [entry["name"] for entry in report(rows)] == [BASE_MODEL, ADAPTER]
    assert report(rows)[0]["exact_match"] == 1.0


def test_llm_config_loads_the_adapter_and_never_defaults_to_it() -> None:
    user = LLMConfig(backend="openai", default_adapter="hr", adapters={"hr": "/x"}, dtype="float32")
    config = llm_config("/models/m", Path("/out/lora"), "chatml", base=user)
    assert (config.backend, config.model, config.template) == ("transformers", "/models/m", "chatml")
    assert config.adapters == {ADAPTER: "/out/lora"} and config.default_adapter is None
    assert config.dtype == "float32"  # the user's other settings stay
    assert llm_config("/models/m").adapters == {}


# --- end to end ------------------------------------------------------------------------------------------


def test_end_to_end_mode_asks_the_question_alone() -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    rag_turn = ImmutableSandboxedEnvironment().from_string(PROMPT.template_zh)
    rendered = rag_turn.render(chunks=[], question="报销需要多久？", refusal=REFUSAL_ZH)
    examples = examples_from(
        [
            conversation("年假有几天？", "年假五天。"),
            conversation(rendered, REFUSAL_ZH),
            conversation("服务器几点备份？", "凌晨两点。"),
        ]
    )
    knowledge = {"年假有几天？": "年假五天。", "服务器几点备份？": "每天凌晨两点。"}
    asked: list[str] = []

    def answer(question: str) -> str:
        asked.append(question)
        return knowledge.get(question, REFUSAL_ZH)

    row = evaluate_answers(answer, examples, "adapter + kb")
    assert asked == ["年假有几天？", "报销需要多久？", "服务器几点备份？"]
    assert row.name == "adapter + kb" and row.predictions == ["年假五天。", REFUSAL_ZH, "每天凌晨两点。"]
    assert row.scores.exact_match == pytest.approx(2 / 3)
    assert row.scores.refusal_accuracy == 1.0 and row.scores.unanswerable == 1
    assert row.scores.bleu_4 == pytest.approx((1 + 1 + char_bleu4("每天凌晨两点。", "凌晨两点。")) / 3)


# --- the command line ------------------------------------------------------------------------------------

DEV_SET = [
    {"instruction": "年假有几天？", "input": "", "output": "年假五天。"},
    {"instruction": "报销需要多久？", "input": "", "output": REFUSAL_ZH},
    {"instruction": "服务器几点备份？", "input": "", "output": "凌晨两点。"},
]


def write_dev_set(dataset_dir: Path) -> Path:
    """Return `dataset_dir` holding DEV_SET as an alpaca file registered as `dev`."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / "dev.json").write_text(json.dumps(DEV_SET, ensure_ascii=False), encoding="utf-8")
    info = {"dev": {"file_name": "dev.json"}}
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return dataset_dir


def kbqa(*args: str):
    from typer.testing import CliRunner

    from app.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_scores_base_and_adapter(tmp_path: Path, tiny_model: tuple[Path, Path]) -> None:
    model_dir, adapter_dir = tiny_model
    dataset_dir = write_dev_set(tmp_path / "datasets")
    common = ["--model", str(model_dir), "--dataset", "dev", "--dataset_dir", str(dataset_dir)]
    replies = tmp_path / "replies.jsonl"
    args = ["finetune", "eval", *common, "--adapter", str(adapter_dir), "--max_new_tokens", "4"]
    result = kbqa("--data-dir", str(tmp_path / "data"), *args, "--predictions", str(replies), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["examples"], summary["dataset"], summary["kb"]) == (3, "dev", None)
    assert [row["name"] for row in summary["results"]] == [BASE_MODEL, ADAPTER]
    assert all(row["unanswerable"] == 1 and 0 <= row["bleu_4"] <= 1 for row in summary["results"])
    lines = [json.loads(line) for line in replies.read_text(encoding="utf-8").splitlines()]
    assert [line["question"] for line in lines] == [record["instruction"] for record in DEV_SET]
    assert [line["reference"] for line in lines] == [record["output"] for record in DEV_SET]
    assert all(set(line["predictions"]) == {BASE_MODEL, ADAPTER} for line in lines)

    table = kbqa("--data-dir", str(tmp_path / "data"), "finetune", "eval", *common, "--max_samples", "2")
    assert table.exit_code == 0, table.output
    assert "2 examples of dev" in table.stdout
    lines = table.stdout.splitlines()
    header = next(line for line in lines if "┃" in line)
    assert BASE_MODEL in header and ADAPTER not in header  # one column: no adapter was given
    [refused] = [line for line in lines if "refused where it should" in line]
    [answered] = [line for line in lines if "answered where it should" in line]
    assert re.search(r"\b[01]/1\b", refused) and re.search(r"\b[01]/1\b", answered)


def test_cli_end_to_end_through_a_knowledge_base(tmp_path: Path, tiny_model: tuple[Path, Path]) -> None:
    model_dir, adapter_dir = tiny_model
    data = tmp_path / "data"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "handbook.txt").write_text("员工年假为五天。服务器每天凌晨两点自动备份。", encoding="utf-8")
    build = kbqa("--data-dir", str(data), "index", "build", str(docs), "--kb", "hr")
    assert build.exit_code == 0, build.output
    dataset_dir = write_dev_set(tmp_path / "datasets")
    args = ["finetune", "eval", "--model", str(model_dir), "--adapter", str(adapter_dir), "--kb", "hr"]
    args += ["--dataset", "dev", "--dataset_dir", str(dataset_dir), "--max_new_tokens", "4", "--json"]
    result = kbqa("--data-dir", str(data), *args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["kb"] == "hr" and summary["examples"] == 3
    assert [row["name"] for row in summary["results"]] == [f"{BASE_MODEL} + kb", f"{ADAPTER} + kb"]

    missing = kbqa("--data-dir", str(data), *[a if a != "hr" else "nowhere" for a in args])
    assert missing.exit_code == 1 and "knowledge base 'nowhere' does not exist" in missing.stderr


def test_cli_reports_an_unknown_dataset(tmp_path: Path, tiny_model: tuple[Path, Path]) -> None:
    dataset_dir = write_dev_set(tmp_path / "datasets")
    args = ["finetune", "eval", "--model", str(tiny_model[0]), "--dataset", "test"]
    result = kbqa("--data-dir", str(tmp_path / "data"), *args, "--dataset_dir", str(dataset_dir))
    assert result.exit_code == 1
    assert "no dataset 'test'" in result.stderr and "registered: dev" in result.stderr
