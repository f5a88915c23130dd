"""Follow-ups made standalone: the offline rules, the choice by answerability, and a model's rewrite with its
fallbacks (a scripted model, a failing one, a slow one, and a tiny transformers model)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hits import search_hit
from models import ScriptedModel

from app.services import KnowledgeService
from app.settings import load_settings
from llm import Answerer, FollowupConfig, GenerationParams, Message, PromptConfig, load_chat_model
from llm.config import LLMConfig
from llm.followup import REWRITE_SYSTEM, Candidate, choose, model_rewrite, rule_rewrite
from retrieval import Retrieval, Signals

LAPTOP = [Message("user", "笔记本电脑多久可以更换？"), Message("assistant", "满 3 年可申请更换。[1]")]
TRAVEL = [Message("user", "差旅住宿标准是多少？"), Message("assistant", "每晚不超过 500 元。[1]")]


def test_an_ellipsis_carries_the_previous_subject() -> None:
    candidate = rule_rewrite("那餐补呢？", TRAVEL)
    assert candidate is not None and candidate.strength == "points-back"
    assert candidate.searched == "差旅住宿标准餐补呢？"
    # The reader reads what the turn asks of 餐补, without the topic: the kind of value asked is known.
    assert candidate.read == "餐补是多少？"


@pytest.mark.parametrize(
    ("previous", "turn", "asked"),
    [
        ("年假有几天？", "那病假呢？", "病假有几天？"),
        ("试用期多长？", "实习期呢？", "实习期多长？"),
        ("星河X1 多少钱？", "星河S2 呢？", "星河S2 多少钱？"),  # the topic shares 星河 with the name
    ],
)
def test_an_ellipsis_naming_another_thing_asks_the_previous_question_of_it(
    previous: str, turn: str, asked: str
) -> None:
    candidate = rule_rewrite(turn, _after(previous))
    assert candidate is not None and candidate.strength == "points-back"
    assert candidate.searched == candidate.read == asked  # the reader reads it too: 几天 marks the days


@pytest.mark.parametrize(
    ("previous", "turn", "read"),
    [
        ("出差可以坐飞机吗？", "那高铁呢？", "那高铁呢？"),  # 高铁 stands for 飞机, not for the topic 出差
        # For 北京 alone: 上海多少？ would lose 住宿标准 in the search; it is only read.
        ("北京住宿标准多少？", "上海呢？", "上海多少？"),
        ("年假有几天？", "还有呢？", "还有呢？"),  # names nothing
    ],
)
def test_an_ellipsis_that_may_stand_for_part_of_the_question_carries_the_topic(
    previous: str, turn: str, read: str
) -> None:
    candidate = rule_rewrite(turn, _after(previous))
    assert candidate is not None and candidate.read == read and candidate.searched not in (turn, read)


def test_a_pronoun_is_replaced_by_the_subject() -> None:
    candidate = rule_rewrite("它在哪里申请？", LAPTOP)
    assert candidate is not None and candidate.strength == "points-back"
    assert candidate.searched == candidate.read == "笔记本电脑在哪里申请？"
    english = rule_rewrite("How long does it take?", [Message("user", "How do I submit an expense claim?")])
    assert english is not None and english.searched == "How long does submit expense claim take?"


def test_a_short_turn_and_a_whole_question_are_weaker_candidates() -> None:
    assert rule_rewrite("在哪里申请？", LAPTOP).strength == "short"
    assert rule_rewrite("报销款多久能打到工资卡？", LAPTOP).strength == "none"
    assert rule_rewrite("在哪里申请？", []) is None


def test_a_chain_of_follow_ups_carries_the_first_subject() -> None:
    history = [*LAPTOP, Message("user", "它在哪里申请？"), Message("assistant", "星河OA。")]
    assert rule_rewrite("这个要审批吗？", history).searched.startswith("笔记本电脑")


def _after(question: str) -> list[Message]:
    return [Message("user", question), Message("assistant", "……")]


def test_the_topic_is_cut_at_whole_words() -> None:
    # The question word 多大 is inside 多倫多大學, and 于 inside 位于: neither cuts the name.
    toronto = rule_rewrite("它有多少學生？", _after("多倫多大學位於哪裡？"))
    assert toronto.searched == "多倫多大學有多少學生？"  # in the person's own script
    park = rule_rewrite("它什么时候开始对公众开放？", _after("萱侬律位于什么地方？"))
    assert park.searched == "萱侬律什么时候开始对公众开放？"
    # A leading clause of time is passed over; a question that opens by asking has its topic after that.
    assert rule_rewrite("它的籍贯是哪里？", _after("天启三年后，史继偕为什么会家居六年？")).searched == (
        "史继偕的籍贯是哪里？"
    )
    assert rule_rewrite("它有什么毒性？", _after("什么是放线菌酮？")).searched == "放线菌酮有什么毒性？"


def test_a_question_asking_for_a_kind_has_its_topic_after_the_verb() -> None:
    # 哪一个场馆 is what was asked for, not what the question was about; 哪里 (where) asks no kind.
    stadium = _after("哪一個場館是潮州市體育的主要場館？")
    assert rule_rewrite("它的氣候如何？", stadium).searched == "潮州市體育的氣候如何？"
    assert rule_rewrite("它有多少员工？", _after("什么公司是小米的母公司？")).searched == "小米有多少员工？"
    assert (
        rule_rewrite("它多久可以更换？", _after("笔记本电脑在哪里申请？")).searched
        == "笔记本电脑多久可以更换？"
    )


def test_a_preposition_or_once_ends_the_topic() -> None:
    assert rule_rewrite("它有多长？", _after("黑龙江从哪一年开始成为边界？")).searched == "黑龙江有多长？"
    assert (
        rule_rewrite("它的人口是多少？", _after("北京曾于哪一年举办奥运会？")).searched
        == "北京的人口是多少？"
    )


def test_a_pronoun_glued_to_its_neighbour_still_points_back() -> None:
    # jieba cuts 给它 and 它会 as words; 其它 ("other") is no pronoun.
    candidate = rule_rewrite("这本书给它的建议是什么？", _after("伽利略是哪里人？"))
    assert candidate.strength == "points-back" and candidate.searched == "这本书给伽利略的建议是什么？"
    assert rule_rewrite("其它型号呢？它会坏吗？", LAPTOP).searched == "其它型号呢？笔记本电脑会坏吗？"


def test_a_new_topic_is_not_changed_by_the_history() -> None:
    candidate = rule_rewrite("多伦多大学有多少学生？", _after("笔记本电脑多久可以更换？"))
    assert candidate.strength == "none"
    chosen, searched = _choose("多伦多大学有多少学生？", candidate, {"多伦多大学有多少学生？": 0.8})
    assert chosen.searched == "多伦多大学有多少学生？" and searched == ["多伦多大学有多少学生？"]


def test_a_long_topic_or_none_carries_only_the_rarest_terms() -> None:
    held = {
        "淮海中路": 1,
        "街道": 3,
        "开始": 40,
        "彻底": 12,
        "改建": 5,
        "expense": 4,
        "claim": 6,
        "submit": 9,
    }
    seen: list[list[str]] = []

    def rarity(terms):
        seen.append(list(terms))
        return {t: held.get(t, 0) for t in terms}

    road = _after("什么时候开始，淮海中路街道开始彻底改建？")
    assert rule_rewrite("它有多长？", road).searched == "淮海中路街道开始彻底改建有多长？"
    assert rule_rewrite("它有多长？", road, rarity=rarity).searched == "淮海中路街道有多长？"
    assert sorted(seen[-1]) == sorted(["淮海中路", "街道", "开始", "彻底", "改建"])
    claim = _after("How do I submit an expense claim?")  # no topic: asking from its first word
    assert rule_rewrite("How long does it take?", claim, rarity=rarity).searched == (
        "How long does expense claim take?"
    )
    # A short topic is carried as written, whatever the knowledge base holds.
    assert rule_rewrite("那餐补呢？", TRAVEL, rarity=rarity).searched == "差旅住宿标准餐补呢？"


CAFFEINE = [
    "咖啡因是一种黄嘌呤生物碱，人体主要在肝脏中代谢咖啡因。",
    "咖啡因在人体的新陈代谢中是一种刺激剂。",
    "人类最早在新石器时代已开始使用含咖啡因的植物。",
    "世界上约有九成成年人每天摄取咖啡因。",
    "茶叶与可可豆同样含有咖啡因。",
]
# how many chunks of the knowledge base hold each term: 人类 and 时期 appear in many articles
CAFFEINE_COUNTS = {"人类": 60, "时期": 45, "咖啡因": 5, "使用": 80, "最早": 30}


def test_the_previous_questions_sources_say_what_it_was_about() -> None:
    # Its topic (the words before its asking word) is 人类; the chunks its search finds are about 咖啡因.
    asked: list[str] = []

    def sources(question: str) -> list[str]:
        asked.append(question)
        return CAFFEINE

    first = _after("人类最早在哪一个时期即使用咖啡因？")
    candidate = rule_rewrite("它在哪个器官中代谢？", first, rarity=_counts(CAFFEINE_COUNTS), sources=sources)
    assert asked == ["人类最早在哪一个时期即使用咖啡因？"]
    assert candidate.searched == "人类最早在哪个器官中代谢？"  # its topic
    assert [c.searched for c in candidate.alternatives] == ["咖啡因在哪个器官中代谢？"]
    # answerability chooses between the readings
    chosen, searched = _choose(
        "它在哪个器官中代谢？",
        candidate,
        {"人类最早在哪个器官中代谢？": 0.3, "咖啡因在哪个器官中代谢？": 0.9},
    )
    assert chosen.searched == "咖啡因在哪个器官中代谢？" and chosen.found.answerability == 0.9
    assert searched == ["人类最早在哪个器官中代谢？", "咖啡因在哪个器官中代谢？"]


def test_a_product_is_not_narrowed_to_its_brand() -> None:
    # every chunk found for 星河S2 多少钱？ holds 星河, fewer hold s2: still the S2 is what 它 names
    chunks = ["星河S2 桌面会议宝，价格 899", "星河X1 价格 2999", "星河X1 Pro 价格 4599"]
    previous = _after("星河S2 多少钱？")
    candidate = rule_rewrite(
        "它保修多久？", previous, rarity=_counts({"星河": 30, "s2": 3}), sources=lambda q: chunks
    )
    assert candidate.searched == "星河S2保修多久？" and candidate.alternatives == ()


def test_a_term_the_sources_share_with_the_whole_knowledge_base_is_not_carried() -> None:
    # 地区 is in every chunk found, but the knowledge base holds it more often than most of the question's
    # terms: it names what the chunks talk about, not a subject.
    chunks = [f"尤金袋鼠{i}分布的地区很广。" if i % 2 else f"地区{i}" for i in range(5)]
    counts = {"尤金袋鼠": 4, "分布": 50, "地区": 400}
    previous = _after("尤金袋鼠分布在哪些地区？")
    candidate = rule_rewrite(
        "它最初是何时被发现的？", previous, rarity=_counts(counts), sources=lambda q: chunks
    )
    assert candidate.searched == "尤金袋鼠分布最初是何时被发现的？" and candidate.alternatives == ()
    # a question that stands on its own does not search the previous one at all
    unused = rule_rewrite("多伦多大学有多少学生？", previous, sources=lambda q: pytest.fail("searched"))
    assert unused.strength == "none"


def test_a_pronoun_poorly_answered_with_the_topic_tries_the_previous_questions_other_names() -> None:
    # 它 of the follow-up is 新北市, which the previous question names after its topic 营造业; the chunks
    # found for that question are about 营造业, so nothing but the topic is carried at first.
    previous = _after("营造业在新北市中占了就业人口中的百分之多少？")
    counts = {"营造业": 3, "新北市": 40, "就业人口": 30, "百分之": 200}
    found = ["营造业在新北市的就业人口中占 7.7%。", "营造业的产值逐年增长。"]
    candidate = rule_rewrite(
        "它的海岸线约有多少公里？", previous, rarity=_counts(counts), sources=lambda q: found
    )
    assert candidate.searched == "营造业的海岸线约有多少公里？" and candidate.alternatives == ()
    assert [c.searched for c in candidate.fallbacks] == [  # the rarest first, at most three
        "就业人口的海岸线约有多少公里？",
        "新北市的海岸线约有多少公里？",
        "百分之的海岸线约有多少公里？",
    ]
    scores = {
        "营造业在新北市中占了就业人口中的百分之多少？": 0.95,  # the previous question, answered well
        "营造业的海岸线约有多少公里？": 0.04,
        "就业人口的海岸线约有多少公里？": 0.1,
        "新北市的海岸线约有多少公里？": 0.89,
        "百分之的海岸线约有多少公里？": 0.02,
    }
    chosen, searched = _choose("它的海岸线约有多少公里？", candidate, scores)
    assert chosen.searched == "新北市的海岸线约有多少公里？" and chosen.found.answerability == 0.89
    assert len(searched) == 5
    # answered well with the topic, or after a question the knowledge base could not answer (the article
    # is not in it), the other names are not searched
    for changed in ({candidate.searched: 0.6}, {candidate.previous: 0.2}):
        chosen, searched = _choose("它的海岸线约有多少公里？", candidate, {**scores, **changed})
        assert chosen.searched == candidate.searched
        assert set(searched) <= {candidate.searched, candidate.previous}
    # a name no chunk holds is not tried
    unheld = rule_rewrite(
        "它的海岸线约有多少公里？", previous, rarity=_counts({**counts, "新北市": 0}), sources=lambda q: found
    )
    assert "新北市的海岸线约有多少公里？" not in [c.searched for c in unheld.fallbacks]


def test_a_demonstrative_in_traditional_script_is_replaced() -> None:
    laptop = _after("筆記型電腦多久可以更換？")
    assert rule_rewrite("這個要審批嗎？", laptop).searched == "筆記型電腦要審批嗎？"
    assert (
        rule_rewrite("該公司有多少員工？", _after("什麼公司是小米的母公司？")).searched
        == "小米公司有多少員工？"
    )


def _counts(held: dict[str, int]):
    return lambda terms: {t: held.get(t, 0) for t in terms}


def _found(answerability: float | None) -> Retrieval:
    return Retrieval([], Signals(0.5, 0.1, 0.5, 0.0, 0.0), {}, answerability)


def _choose(question: str, candidate: Candidate, scores: dict[str, float | None]):
    searched: list[str] = []

    def search(query: str) -> Retrieval:
        searched.append(query)
        return _found(scores[query])

    return choose(question, candidate, search, FollowupConfig()), searched


def test_answerability_chooses_between_the_question_as_written_and_the_rewrite() -> None:
    short = Candidate("笔记本电脑在哪里申请？", "在哪里申请？", "short", "rules")
    chosen, _ = _choose("在哪里申请？", short, {"在哪里申请？": 0.59, "笔记本电脑在哪里申请？": 0.98})
    assert chosen.searched == "笔记本电脑在哪里申请？" and chosen.found.answerability == 0.98
    chosen, _ = _choose("年假有几天？", short, {"年假有几天？": 0.97, "笔记本电脑在哪里申请？": 0.99})
    assert chosen.searched == "年假有几天？"  # not clearly better: the new topic stays as typed


def test_a_short_turn_goes_on_with_the_passage_the_previous_question_found() -> None:
    """密码是多少？ after 怎么连接访客 Wi-Fi？: as written it finds the password rules first, the rewrite the
    guest Wi-Fi passage the previous question found; about as answerable, the rewrite is searched and read."""
    short = Candidate(
        "访客 Wi-Fi 密码是多少？", "密码是多少？", "short", "rules", previous="怎么连接访客 Wi-Fi？"
    )
    wifi, rules = (
        search_hit(7, "访客请连接“Xinghe-Guest”，密码每周一更新。"),
        search_hit(3, "新密码至少 12 位。"),
    )
    found = {
        "密码是多少？": Retrieval([rules, wifi], Signals(0.5, 0.1, 0.5, 0.0, 0.0), {}, 0.99),
        "访客 Wi-Fi 密码是多少？": Retrieval([wifi, rules], Signals(0.5, 0.1, 0.5, 0.0, 0.0), {}, 0.84),
        "怎么连接访客 Wi-Fi？": Retrieval([wifi], Signals(0.5, 0.1, 0.5, 0.0, 0.0), {}, 0.87),
    }
    chosen = choose("密码是多少？", short, found.__getitem__, FollowupConfig())
    assert chosen.searched == chosen.read == "访客 Wi-Fi 密码是多少？"
    # Far less answerable than as written, or with no passage in common, it stays as typed.
    assert (
        choose("密码是多少？", short, found.__getitem__, FollowupConfig(continue_margin=0.1)).searched
        == "密码是多少？"
    )
    elsewhere = {
        **found,
        "怎么连接访客 Wi-Fi？": Retrieval([rules], Signals(0.5, 0.1, 0.5, 0.0, 0.0), {}, 0.9),
    }
    assert choose("密码是多少？", short, elsewhere.__getitem__, FollowupConfig()).searched == "密码是多少？"
    # A new topic: the passage the old topic leads back to does not hold the turn's own words (报销).
    new_topic = Candidate(
        "访客 Wi-Fi 报销多久到账？", "报销多久到账？", "short", "rules", previous="怎么连接访客 Wi-Fi？"
    )
    found["报销多久到账？"] = Retrieval([rules, wifi], Signals(0.5, 0.1, 0.5, 0.0, 0.0), {}, 0.95)
    found["访客 Wi-Fi 报销多久到账？"] = Retrieval([wifi, rules], Signals(0.5, 0.1, 0.5, 0.0, 0.0), {}, 0.9)
    assert (
        choose("报销多久到账？", new_topic, found.__getitem__, FollowupConfig()).searched == "报销多久到账？"
    )


def test_a_question_that_stands_on_its_own_is_searched_once_as_written() -> None:
    whole = Candidate("笔记本电脑报销款多久到账？", "报销款多久到账？", "none", "rules")
    chosen, searched = _choose("报销款多久到账？", whole, {"报销款多久到账？": 0.9})
    assert chosen.searched == "报销款多久到账？" and searched == ["报销款多久到账？"]


def test_a_follow_up_the_documents_cannot_answer_is_judged_on_what_was_searched() -> None:
    pointing = Candidate("笔记本电脑的保修期是多久？", "笔记本电脑的保修期是多久？", "points-back", "rules")
    chosen, _ = _choose(
        "它的保修期是多久？", pointing, {"它的保修期是多久？": 0.2, "笔记本电脑的保修期是多久？": 0.1}
    )
    assert chosen.searched == "笔记本电脑的保修期是多久？" and chosen.found.answerability == 0.1


class _Failing(ScriptedModel):
    def generate(self, messages, params):
        self.prompts.append(messages)
        raise ConnectionError("the server went away")


class _Slow(ScriptedModel):
    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.release = threading.Event()

    def generate(self, messages, params):
        self.release.wait(10)
        return super().generate(messages, params)


def test_the_model_rewrite_prompt_is_sent_and_its_reply_used() -> None:
    model = ScriptedModel("问题：笔记本电脑在哪里申请更换？\n")
    config = FollowupConfig(max_new_tokens=32)
    assert model_rewrite(model, "在哪里申请？", LAPTOP, config) == "笔记本电脑在哪里申请更换？"
    system, user = model.prompts[0]
    assert system.content == REWRITE_SYSTEM and "笔记本电脑多久可以更换？" in user.content
    assert user.content.endswith("在哪里申请？")


def test_a_failing_or_slow_model_gives_no_rewrite() -> None:
    assert model_rewrite(_Failing("x"), "在哪里申请？", LAPTOP, FollowupConfig()) is None
    slow = _Slow("笔记本电脑在哪里申请？")
    assert model_rewrite(slow, "在哪里申请？", LAPTOP, FollowupConfig(timeout_s=0.2)) is None
    slow.release.set()


def _service(
    tmp_path: Path, model, config: FollowupConfig, searched: list[str], term_counts=None
) -> KnowledgeService:
    """Return the service with `config`, answering with `model` over a search that records its queries."""

    def retrieve(kb: str, query: str, options) -> Retrieval:
        searched.append(query)
        return _found(None)  # no calibration: a follow-up that points back searches its rewrite

    service = KnowledgeService(load_settings(data_dir=tmp_path, llm=LLMConfig(followup=config)))
    service.retrieve = retrieve
    service.term_counts = term_counts or (lambda kb, terms: dict.fromkeys(terms, 0))
    service.answerer = Answerer(PromptConfig(), GenerationParams(max_new_tokens=16), model=model)
    return service


@pytest.mark.parametrize("model", [_Failing("x"), _Slow("x")], ids=["error", "timeout"])
def test_the_answerer_falls_back_to_the_rules_and_times_the_rewrite(model, tmp_path: Path) -> None:
    searched: list[str] = []
    qa = _service(tmp_path, model, FollowupConfig(timeout_s=0.3), searched)
    answer = qa.ask("kb", "那餐补呢？", history=TRAVEL).read()
    # the previous question is searched first: its chunks say what it was about (see `rule_rewrite`)
    assert searched == ["差旅住宿标准是多少？", "差旅住宿标准餐补呢？"]
    assert answer.searched_question == "差旅住宿标准餐补呢？"
    assert answer.timings.rewrite_ms > 0
    if isinstance(model, _Slow):
        assert answer.timings.rewrite_ms >= 300
        model.release.set()


def test_the_answerer_asks_the_knowledge_base_which_terms_are_rarest(tmp_path: Path) -> None:
    asked: list[tuple[str, list[str]]] = []

    def term_counts(kb: str, terms) -> dict[str, int]:
        asked.append((kb, list(terms)))
        return {t: 1 if t == "expense" else 5 for t in terms}

    searched: list[str] = []
    qa = _service(tmp_path, _Failing("x"), FollowupConfig(), searched, term_counts)
    claim = _after("How do I submit an expense claim today?")
    answer = qa.ask("claims", "How long does it take?", history=claim).read()
    assert asked and asked[0][0] == "claims"
    # the rarest, then the first of the equally common, in their order
    assert answer.searched_question == "How long does submit expense take?" == searched[-1]
    assert searched == ["How do I submit an expense claim today?", "How long does submit expense take?"]


class _Replaying(ScriptedModel):
    """Gives back a recorded generation, to see what `model_rewrite` makes of it."""

    def __init__(self, generation) -> None:
        super().__init__(generation.text)
        self.generation = generation

    def generate(self, messages, params):
        return self.generation


def test_a_tiny_local_model_rewrites_and_its_output_is_searched(tiny_lm_dir: Path, tmp_path: Path) -> None:
    model = load_chat_model(LLMConfig(backend="transformers", model=str(tiny_lm_dir), device="cpu"))
    rewrites = []
    generate = model.generate

    def recording(messages, params):
        generation = generate(messages, params)
        if messages[0].content == REWRITE_SYSTEM:
            assert params.max_new_tokens == 24 and "笔记本电脑多久可以更换？" in messages[1].content
            rewrites.append(generation)
        return generation

    model.generate = recording
    searched: list[str] = []
    qa = _service(tmp_path, model, FollowupConfig(max_new_tokens=24, timeout_s=60), searched)
    answer = qa.ask("kb", "那在哪里申请呢？", history=LAPTOP).read()
    assert len(rewrites) == 1
    # A random model's reply is used when it is a finished line, else the rules' rewrite is.
    usable = model_rewrite(_Replaying(rewrites[0]), "那在哪里申请呢？", LAPTOP, FollowupConfig())
    expected = usable or rule_rewrite("那在哪里申请呢？", LAPTOP).searched
    assert answer.searched_question == expected == searched[-1]
    assert len(searched) == (1 if usable else 2)  # the rules search the previous question too
    assert answer.timings.rewrite_ms > 0
