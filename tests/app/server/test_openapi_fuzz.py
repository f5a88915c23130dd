"""Schemathesis fuzzes every operation of the OpenAPI schema against the in-process app: no 5xx."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.slow

MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
MAX_EXAMPLES = 50  # per operation; the module stays under a minute on two cores

DOCS = {
    "leave.md": "# 年假\n\n员工入职满一年后每年享有十天带薪年假。\n",
    "vpn.md": "# VPN\n\nConnect to the VPN with the company laptop; the user name is your badge number.\n",
}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> schemathesis.BaseSchema:
    """The app's schema, loaded from the app itself over a data directory with knowledge base `demo`."""
    from app.server import create_app
    from app.services import KnowledgeService
    from app.settings import load_settings

    root = tmp_path_factory.mktemp("fuzz")
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    with pytest.MonkeyPatch.context() as env:
        for name in [name for name in os.environ if name.startswith("KBQA_")]:
            env.delenv(name)
        app_settings = load_settings(data_dir=root / "data")
    report = KnowledgeService(app_settings).ingest("demo", [Path(docs)])
    assert not report.failures
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(app_settings))
    # The app's lifespan, started by the first request and kept running between requests, only starts the
    # models' loading: fuzz once they are loaded, or every route that needs one answers 503 `loading`.
    ready = schema["/readyz"]["GET"]
    deadline = time.monotonic() + 300
    while ready.Case().call().status_code != 200:
        assert time.monotonic() < deadline, "the models did not load within 300 s"
        time.sleep(0.2)
    return schema


def cases_of(operation: schemathesis.APIOperation) -> st.SearchStrategy[schemathesis.Case]:
    """Return valid and invalid requests to the operation; half of them name knowledge base `demo` and its
    first document, which random names would never hit (except for deletes, which would end the run's use
    of it)."""
    strategies = [operation.as_strategy(mode) for mode in MODES]
    if "{kb}" in operation.path and operation.method.upper() != "DELETE":
        pinned = {"kb": "demo", **({"document_id": 1} if "{document_id}" in operation.path else {})}
        strategies += [operation.as_strategy(mode, path_parameters=pinned) for mode in MODES]
    return st.one_of(strategies)


# One test walks the operations itself: schemathesis's pytest integration (`@schema.parametrize()` on a
# fixture's schema) needs a private attribute pytest 9 no longer has.
def test_no_request_gets_a_server_error(api_schema: schemathesis.BaseSchema) -> None:
    failures = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=cases_of(operation))
        @settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: schemathesis.Case) -> None:
            try:
                case.call_and_validate(checks=[not_a_server_error])
            except Exception as error:
                # In process, an unhandled error reaches the caller instead of its 500 response.
                raise AssertionError(f"{case.as_curl_command()}\n{type(error).__name__}: {error}") from error

        try:
            call()
        except Exception as error:  # every operation runs; the report names each one that failed
            found = error.exceptions if isinstance(error, BaseExceptionGroup) else [error]
            failures += [f"{operation.label}: {failure}" for failure in found]
    assert not failures, "\n\n".join(failures)
