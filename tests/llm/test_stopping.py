"""The reply filter: a stop string is never emitted, wherever the deltas happen to split the output."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llm.stopping import ReplyFilter

STOPS = ["<|user|>", "Observation:", "问题："]


def feed_in_pieces(
    output: str, cuts: list[int], stop: list[str], prefix: str = ""
) -> tuple[str, ReplyFilter]:
    reply = ReplyFilter(stop, prefix)
    points = sorted({min(c, len(output)) for c in cuts} | {0, len(output)})
    emitted = "".join(reply.feed(output[a:b]) for a, b in zip(points, points[1:], strict=False))
    return emitted + reply.flush(), reply


@given(
    st.text(alphabet="ab<|user>问题：\n Obsrvatin:", max_size=60),
    st.lists(st.integers(min_value=0, max_value=60), max_size=12),
)
def test_any_split_gives_the_text_before_the_first_stop(output: str, cuts: list[int]) -> None:
    text, reply = feed_in_pieces(output, cuts, STOPS)
    first = min((i for i in (output.find(s) for s in STOPS) if i >= 0), default=len(output))
    assert text == output[:first] == reply.text
    assert reply.stopped == (first < len(output))


@given(st.text(alphabet="\nab ", max_size=20), st.lists(st.integers(min_value=0, max_value=20), max_size=6))
def test_the_reply_prefix_is_stripped_once(output: str, cuts: list[int]) -> None:
    text, _ = feed_in_pieces(output, cuts, [], prefix="\n")
    assert text == output.removeprefix("\n")


def test_a_held_back_tail_is_released_when_it_is_no_stop() -> None:
    reply = ReplyFilter(["<|user|>"])
    assert reply.feed("答案是<|us") == "答案是"
    assert reply.feed("ed") == "<|used"
    assert reply.feed("<|user|>后面") == "" and reply.stopped
    assert reply.text == "答案是<|used"
