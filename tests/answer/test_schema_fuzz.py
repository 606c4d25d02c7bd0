"""Schema fuzzing (schemathesis over every operation of the OpenAPI schema): never a server error."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from answer.app import create_app
from tests.answer.hardening import (
    ALICE_KEY,
)


@pytest.fixture(scope="module")
def api_schema(refusing_service):
    """The service's own OpenAPI schema, called over ASGI."""
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(refusing_service))


# every operation in the schema (the first test fails when one is added and not listed here)
FUZZED = [
    ("POST", "/v1/hr/answer"), ("POST", "/v1/chat"), ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"), ("GET", "/v1/me"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
    ("GET", "/v1/ops/ready"), ("GET", "/v1/status"),
]


def test_the_fuzzed_operations_are_every_operation_in_the_schema(api_schema):
    assert {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()} == set(FUZZED)


@pytest.mark.parametrize(("method", "path"), FUZZED)
def test_no_generated_request_gets_a_server_error(api_schema, method, path):
    """Valid and invalid requests generated from the schema (schemathesis strategies driven by
    Hypothesis directly: schemathesis' own pytest loader, `from_fixture`, breaks on pytest 9.2)."""
    operation = api_schema[path][method]
    strategy = (operation.as_strategy(schemathesis.GenerationMode.POSITIVE)
                | operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))
    credential = {"Authorization": f"Bearer {ALICE_KEY}", "X-API-Key": ALICE_KEY}

    # about half the requests carry a valid credential, so they reach past auth; the others keep
    # the generated Authorization / X-API-Key headers, so credential parsing is fuzzed too
    @given(case=strategy, authorized=st.booleans())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    def fuzz(case, authorized):
        case.call_and_validate(headers=credential if authorized else None, checks=[not_a_server_error])

    fuzz()
