"""Schemathesis against the running HTTP function: no 5xx, every error is JSON."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from functions.http_api import OPENAPI_PATH
from tests.integration.conftest import LiveStack

pytestmark = pytest.mark.integration

schema = schemathesis.openapi.from_path(str(OPENAPI_PATH))
CASES: dict[str, int] = {}
EXAMPLES_PER_OPERATION = 200
MINIMUM_CASES = 500
# Answered by the HTTP server before our code runs (gunicorn locally, Google's front
# end in production): a generated empty Content-Length got gunicorn's HTML 400.
FRAMING_HEADERS = {"content-length", "transfer-encoding", "connection", "host"}


@pytest.fixture(scope="module")
def authenticated(stack: LiveStack) -> dict[str, Any]:
    return {"base_url": stack.api, "headers": stack.headers()}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_server_errors_and_json_errors(case: Any, authenticated: dict[str, Any]) -> None:
    headers = dict(authenticated["headers"])
    headers.update(
        {k: v for k, v in (case.headers or {}).items() if k.lower() not in FRAMING_HEADERS}
    )
    response = case.call(base_url=authenticated["base_url"], headers=headers, timeout=30)
    CASES[case.operation.label] = CASES.get(case.operation.label, 0) + 1
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        # Schemathesis gives headers lower-cased, each as a list of values.
        content_type = "".join(response.headers.get("content-type", []))
        assert content_type.startswith("application/json"), (response.status_code, response.text)
        body = response.json()
        assert isinstance(body["error"], str) and isinstance(body["message"], str)


def test_enough_cases_were_generated() -> None:
    # Runs after the parametrized test above (same module, file order).
    assert sum(CASES.values()) >= MINIMUM_CASES, CASES
