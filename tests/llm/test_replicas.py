"""The replica set's order of attempts: round-robin over the healthy, cooldowns, trials, last resorts."""

from __future__ import annotations

import threading

import pytest

from llm.replicas import Replica, ReplicaSet


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_set(*urls: str, cooldown_s: float = 10.0) -> tuple[ReplicaSet[None], Clock]:
    """Return a replica set of `urls` with no clients, and its clock."""
    clock = Clock()
    return ReplicaSet([Replica(url, None) for url in urls], cooldown_s, clock), clock


def order(replicas: ReplicaSet[None]) -> list[tuple[str, bool]]:
    """Return the URLs of one request's plan, each with whether it is to be checked first."""
    return [(attempt.replica.url, attempt.check) for attempt in replicas.plan()]


def test_requests_start_at_each_healthy_replica_in_turn() -> None:
    replicas, _ = make_set("a", "b", "c")

    firsts = [order(replicas)[0][0] for _ in range(6)]

    assert firsts == ["a", "b", "c", "a", "b", "c"]
    assert order(replicas) == [("a", False), ("b", False), ("c", False)]


def test_a_failed_replica_is_skipped_until_its_cooldown_ends_then_tried_first_once() -> None:
    replicas, clock = make_set("a", "b", "c")
    b = replicas.replicas[1]
    replicas.failed(b)

    for _ in range(4):
        plan = order(replicas)
        assert plan[-1] == ("b", True)  # a last resort only
        assert {url for url, _ in plan[:2]} == {"a", "c"}
    assert [order(replicas)[0][0] for _ in range(4)] == ["a", "c", "a", "c"]

    clock.now += 10.0
    assert order(replicas)[0] == ("b", True)
    # Claimed by that request: the next ones see it cooling down again until it answers.
    assert order(replicas)[-1] == ("b", True)
    replicas.succeeded(b)
    assert ("b", False) in order(replicas)


def test_replicas_cooling_down_come_last_soonest_first() -> None:
    replicas, clock = make_set("a", "b", "c")
    replicas.failed(replicas.replicas[2])
    clock.now += 1
    replicas.failed(replicas.replicas[0])

    assert order(replicas) == [("b", False), ("c", True), ("a", True)]
    replicas.failed(replicas.replicas[1])
    assert order(replicas) == [("c", True), ("a", True), ("b", True)]


def test_a_single_replica_is_always_tried_unchecked() -> None:
    replicas, _ = make_set("only")
    replicas.failed(replicas.replicas[0])

    assert order(replicas) == [("only", False)]


def test_an_empty_set_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ReplicaSet([], 1.0)


def test_plans_from_many_threads_share_the_turns_fairly() -> None:
    replicas, _ = make_set("a", "b", "c")
    firsts: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(300):
            first = replicas.plan()[0].replica.url
            with lock:
                firsts.append(first)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [firsts.count(url) for url in "abc"] == [800, 800, 800]
