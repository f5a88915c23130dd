"""The `openai` backend over several replicas: real fake servers under uvicorn, one made to fail or absent."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from openai_server import Controls, FakeOpenAIServer

from llm import openai_backend
from llm.config import OpenAIConfig
from llm.errors import ModelBusy, ModelUnavailable
from llm.openai_backend import OpenAIChatModel
from llm.replicas import Replica, ReplicaSet
from llm.types import GenerationParams, Message

QUESTION = [Message("user", "how many days of annual leave")]
REPLY = "served-model heard: how many days of annual leave"

MakeModel = Callable[..., OpenAIChatModel]


class ReplicaServer(FakeOpenAIServer):
    """The fake server plus vLLM's `GET /v1/models`, counting the health checks it answers."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0
        self.check_status = 200

    def _app(self) -> FastAPI:
        app = super()._app()

        @app.get("/v1/models")
        async def models() -> Any:
            self.checks += 1
            data = [{"id": name, "object": "model", "created": 0, "owned_by": "test"} for name in ("m",)]
            return JSONResponse({"object": "list", "data": data}, status_code=self.check_status)

        return app


@pytest.fixture(scope="module")
def servers() -> Iterator[list[ReplicaServer]]:
    """Three fake replicas for the module."""
    started = [ReplicaServer() for _ in range(3)]
    for server in started:
        server.start()
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def fresh(servers: list[ReplicaServer]) -> list[ReplicaServer]:
    """The replicas with fresh controls and counters for this test."""
    for server in servers:
        server.controls = Controls()
        server.checks, server.check_status = 0, 200
    return servers


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A URL where nothing listens: a bound socket that never listens refuses connections."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{closed.getsockname()[1]}/v1"


class Clock:
    """The replicas' clock in these tests: it moves only when told, so a cooldown ends when a test says."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The clock of every model the test makes (the backend's replica set is made with it)."""
    clock = Clock()

    class ClockedReplicaSet(ReplicaSet):
        def __init__(self, replicas: list[Replica[Any]], cooldown_s: float) -> None:
            super().__init__(replicas, cooldown_s, clock)

    monkeypatch.setattr(openai_backend, "ReplicaSet", ClockedReplicaSet)
    return clock


@pytest.fixture
def make_model(clock: Clock) -> Iterator[MakeModel]:
    """A factory of models over the given replica URLs, on the test's clock; all closed afterwards."""
    models: list[OpenAIChatModel] = []

    def make(urls: list[str], **config: Any) -> OpenAIChatModel:
        config = {"base_urls": urls, "timeout_s": 10.0, "unhealthy_cooldown_s": 30.0, **config}
        models.append(OpenAIChatModel(OpenAIConfig(**config), "served-model"))
        return models[-1]

    yield make
    for model in models:
        model.close()


def counts(servers: list[ReplicaServer]) -> list[int]:
    """Return how many chat requests each server has seen."""
    return [len(server.controls.requests) for server in servers]


def ask(model: OpenAIChatModel, streamed: bool = False) -> str:
    """Return the model's reply to QUESTION, generated or streamed."""
    if streamed:
        return "".join(model.stream(QUESTION, GenerationParams()))
    return model.generate(QUESTION, GenerationParams()).text


def test_requests_alternate_between_healthy_replicas(
    make_model: MakeModel, fresh: list[ReplicaServer]
) -> None:
    model = make_model([server.base_url for server in fresh])

    replies = [ask(model, streamed=i % 2 == 1) for i in range(9)]

    assert replies == [REPLY] * 9
    assert counts(fresh) == [3, 3, 3]
    assert [server.checks for server in fresh] == [0, 0, 0]  # healthy replicas are not probed


def test_a_failing_replica_is_skipped_during_its_cooldown_and_used_again_after(
    make_model: MakeModel, fresh: list[ReplicaServer], clock: Clock
) -> None:
    first, second = fresh[:2]
    first.controls.fail_next = 1000
    model = make_model([first.base_url, second.base_url], unhealthy_cooldown_s=0.5)

    assert [ask(model) for _ in range(6)] == [REPLY] * 6
    assert counts([first, second]) == [1, 6]  # one 500, not retried; then left alone

    first.controls.fail_next = 0
    clock.now += 0.6  # past the cooldown
    assert [ask(model) for _ in range(4)] == [REPLY] * 4
    assert first.checks == 1  # checked once with GET /models before it got a request again
    assert counts([first, second]) == [1 + 2, 6 + 2]


def test_a_replica_failing_its_health_check_stays_out(
    make_model: MakeModel, fresh: list[ReplicaServer], clock: Clock
) -> None:
    first, second = fresh[:2]
    first.controls.fail_next = 1
    model = make_model([first.base_url, second.base_url], unhealthy_cooldown_s=0.3)
    assert ask(model) == REPLY
    first.check_status = 503

    clock.now += 0.35  # past the cooldown
    assert [ask(model) for _ in range(3)] == [REPLY] * 3

    assert first.checks == 1
    assert counts([first, second]) == [1, 4]


def test_without_health_checks_the_trial_is_a_real_request(
    make_model: MakeModel, fresh: list[ReplicaServer], clock: Clock
) -> None:
    first, second = fresh[:2]
    first.controls.fail_next = 1
    model = make_model([first.base_url, second.base_url], unhealthy_cooldown_s=0.2, health_check_timeout_s=0)
    assert ask(model) == REPLY

    clock.now += 0.25  # past the cooldown
    assert [ask(model) for _ in range(2)] == [REPLY] * 2
    assert first.checks == 0
    tried = counts([first, second])
    assert tried[0] >= 2 and sum(tried) == 4  # the failed one and its trial, not a check, came back


@pytest.mark.parametrize("streamed", [False, True])
def test_a_replica_that_is_down_is_failed_over(
    make_model: MakeModel, fresh: list[ReplicaServer], dead_url: str, streamed: bool
) -> None:
    model = make_model([dead_url, fresh[0].base_url])

    replies = [ask(model, streamed) for _ in range(4)]

    assert replies == [REPLY] * 4
    assert counts(fresh[:1]) == [4]


def test_a_stream_that_stalls_before_its_first_delta_is_failed_over_without_repeating(
    make_model: MakeModel, fresh: list[ReplicaServer]
) -> None:
    slow, fast = fresh[:2]
    slow.controls.delta_delay_s = 1.0
    model = make_model([slow.base_url, fast.base_url], timeout_s=0.3)

    stream = model.stream(QUESTION, GenerationParams())
    deltas = list(stream)

    assert "".join(deltas) == REPLY
    assert stream.generation is not None and stream.generation.text == REPLY
    assert counts([slow, fast]) == [1, 1]


def test_a_stream_that_fails_after_its_first_delta_is_an_error_not_a_repeat(
    make_model: MakeModel, fresh: list[ReplicaServer]
) -> None:
    first, second = fresh[:2]
    first.controls.delta_delay_s = 0.05
    words = " ".join(f"word{i}" for i in range(100))
    model = make_model([first.base_url, second.base_url], timeout_s=0.3)
    stream = model.stream([Message("user", words)], GenerationParams())
    received = next(stream)
    first.controls.delta_delay_s = 1.0  # the next deltas stall past the timeout

    with pytest.raises(ModelUnavailable, match="no reply within"):
        for delta in stream:
            received += delta

    # What arrived is a true beginning of the one reply (never restarted on the other replica), cut short.
    full = f"served-model heard: {words}"
    assert received and full.startswith(received) and received != full
    assert counts([first, second]) == [1, 0]


@pytest.mark.parametrize("streamed", [False, True])
def test_when_every_replica_is_down_the_error_names_each(
    make_model: MakeModel, fresh: list[ReplicaServer], dead_url: str, streamed: bool
) -> None:
    failing = fresh[0]
    failing.controls.fail_next = 1000
    model = make_model([dead_url, failing.base_url])

    for _ in range(2):  # the second time both are cooling down and still tried, as a last resort
        with pytest.raises(ModelUnavailable, match="none of the 2 model servers answered") as raised:
            ask(model, streamed)
        message = str(raised.value)
        assert f"cannot reach the model server at {dead_url}" in message
        assert f"the model server at {failing.base_url}" in message
    assert failing.checks == 1  # the last resort was checked before it got a request


def test_busy_replicas_are_failed_over_and_all_busy_is_busy(
    make_model: MakeModel, fresh: list[ReplicaServer]
) -> None:
    first, second = fresh[:2]
    first.controls.fail_next, first.controls.fail_status = 1, 429
    model = make_model([first.base_url, second.base_url])
    assert [ask(model) for _ in range(3)] == [REPLY] * 3
    assert counts([first, second]) == [2, 2]  # busy is not down: its next turn came back to it

    for server in (first, second):
        server.controls.fail_next, server.controls.fail_status = 1, 429
    with pytest.raises(ModelBusy, match="HTTP 429"):
        ask(model)


def test_many_threads_get_answers_split_evenly(make_model: MakeModel, fresh: list[ReplicaServer]) -> None:
    model = make_model([server.base_url for server in fresh])
    errors: list[BaseException] = []
    replies: list[str] = []
    lock = threading.Lock()

    def work(streamed: bool) -> None:
        for _ in range(15):
            try:
                reply = ask(model, streamed)
            except BaseException as error:  # noqa: BLE001 - collected for the assertion below
                errors.append(error)
                continue
            with lock:
                replies.append(reply)

    threads = [threading.Thread(target=work, args=(i % 2 == 1,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert replies == [REPLY] * 120
    assert counts(fresh) == [40, 40, 40]


def test_a_single_base_url_keeps_the_clients_retries(
    make_model: MakeModel, fresh: list[ReplicaServer]
) -> None:
    only = fresh[0]
    only.controls.fail_next = 2
    model = OpenAIChatModel(OpenAIConfig(base_url=only.base_url, max_retries=2), "served-model")
    try:
        assert ask(model) == REPLY
        assert counts([only]) == [3]
        assert only.checks == 0
    finally:
        model.close()
