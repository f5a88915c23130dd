"""Example questions from headings: questions first, one document after another, numbering dropped."""

from __future__ import annotations

from app.examples import example_questions

HEADINGS = [
    (1, ("IT 服务台常见问题",)),
    (1, ("IT 服务台常见问题", "账号与密码", "如何重置域账号密码？")),
    (1, ("IT 服务台常见问题", "服务时间")),
    (2, ("星河X1 产品说明", "2.1 智能降噪")),
    (2, ("星河X1 产品说明", "3 技术规格")),
    (3, ("Travel Policy", "Hotel limits")),
    (3, ("Travel Policy", "VPN access")),
    (3, ("Travel Policy", "Hotel limits")),  # the same heading in a later chunk
    (4, ("Handbook",)),  # a document with no sections: its title is all there is
    (5, ("Travel Policy", "x")),  # too short to ask
]


def test_questions_come_from_each_document_in_turn_with_questions_first() -> None:
    assert example_questions(HEADINGS, 4) == [
        "如何重置域账号密码？",
        "智能降噪？",
        "Hotel limits?",
        "Handbook?",
    ]


def test_every_heading_is_asked_once_and_titles_of_documents_with_sections_are_not() -> None:
    every = example_questions(HEADINGS, 20)
    assert every == [
        "如何重置域账号密码？",
        "智能降噪？",
        "Hotel limits?",
        "Handbook?",
        "服务时间？",
        "技术规格？",
        "VPN access?",
    ]
    assert example_questions([], 4) == []
