"""Schemathesis fuzzes every operation of the served /openapi.json; no input may produce a 5xx.

Hypothesis drives schemathesis' strategies directly (its pytest fixture loader does not support this pytest)."""

from __future__ import annotations

from itertools import product

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from conftest import running_server

EXAMPLES_PER_OPERATION = 100


@pytest.fixture(scope="module")
def fuzz_server(model_dir):
    # A short context keeps each generated request cheap (the fuzzer picks large max_tokens freely).
    with running_server(model_dir, max_model_len=64, num_kv_blocks=64, request_timeout=5.0) as srv:
        yield srv


def test_no_server_errors(fuzz_server) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/predict", "/v1/models"}
    seen: dict[str, set[int]] = {}

    for operation, mode in product(operations, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):
        if mode is GenerationMode.NEGATIVE and not operation.method.upper() == "POST":
            continue  # nothing to break in a GET without parameters

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def fuzz(case) -> None:
            response = case.call(base_url=fuzz_server.url, timeout=30)
            seen.setdefault(operation.path, set()).add(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

        fuzz()
    # The fuzzer reached the handlers, not only the validation layer.
    assert 200 in seen["/v1/completions"] and 400 in seen["/v1/completions"], seen
