"""The words a text is cut into, whole: each character in exactly one word, in order."""

from __future__ import annotations

from retrieval.lexical import words
from retrieval.text_rules import fold


def test_words_cover_the_folded_text_and_never_split_a_known_word() -> None:
    text = "多倫多大學位於哪裡？ The T-92 gun."
    cut = words(text)
    assert "".join(cut) == fold(text)
    assert cut[:2] == ["多伦多", "大学"]  # the question word 多大 inside it is no word of its own
    # jieba's new-word guessing is off: the particle 有 is not glued to 歌 (歌有 of 的歌有哪些).
    assert "有" in words("梅艳芳的歌有哪些？")
