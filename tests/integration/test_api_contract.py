"""The running API keeps its OpenAPI document: schemathesis sends generated requests (valid and
invalid ones, with and without a key) to a real `captioner api` with a real worker behind it, and
every answer must be documented (status, content type, headers, body schema) and none may be a 5xx."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import StartApi, StartWorker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "contract-test-key-6d1f0c-0123456789abcdef"
AUTHORIZED = {"Authorization": f"Bearer {KEY}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# (generation mode, headers, most examples per operation): schema-valid bodies with a key, invalid ones
# with a key, and valid ones without a key (each must be a documented 401 on the protected routes).
RUNS = [
    (GenerationMode.POSITIVE, AUTHORIZED, 260),
    (GenerationMode.NEGATIVE, AUTHORIZED, 220),
    (GenerationMode.POSITIVE, {}, 40),
]
MIN_CASES = 1000


def run_cases(
    operation: Any,
    strategy: st.SearchStrategy[Any],
    headers: dict[str, str],
    max_examples: int,
    url: str,
    statuses: Counter[tuple[str, int]],
) -> None:
    @settings(
        max_examples=max_examples,
        derandomize=True,  # the same cases on every run
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: Any) -> None:
        response = case.call(base_url=url, headers=headers, timeout=60)
        statuses[(operation.label, response.status_code)] += 1
        case.validate_response(response, checks=CHECKS)

    with contextlib.suppress(Unsatisfiable):  # nothing invalid to send where there is no input at all
        check()


# Generating the cases costs more than answering them: ~0.05 s of CPU each, 3-4 minutes on a busy 2-core box.
@pytest.mark.timeout(900)
def test_every_answer_matches_the_document(start_worker: StartWorker, start_api: StartApi) -> None:
    start_worker()
    api = start_api(CAPTIONER_API_KEYS=KEY, CAPTIONER_API_REQUEST_TIMEOUT_S="60")
    document = requests.get(api.url + "/api/v1/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    statuses: Counter[tuple[str, int]] = Counter()

    for result in schema.get_all_operations():
        operation = result.ok()
        for strategy in schema.get_strategies_from_examples(operation):  # the document's own examples
            run_cases(operation, strategy, AUTHORIZED, 5, api.url, statuses)
        for mode, headers, max_examples in RUNS:
            started, before = time.monotonic(), sum(statuses.values())
            strategy = operation.as_strategy(generation_mode=mode)
            run_cases(operation, strategy, headers, max_examples, api.url, statuses)
            ran = sum(statuses.values()) - before
            took = time.monotonic() - started
            print(f"{operation.label} {mode.value} key={bool(headers)}: {ran} cases in {took:.1f} s")

    print(sorted(statuses.items()))
    assert sum(statuses.values()) >= MIN_CASES, statuses
    for route in ("POST /api/v1/predictions", "POST /api/v1/predictions:batch"):
        assert statuses[(route, 200)] > 0, f"no case of {route} was captioned"
        assert statuses[(route, 401)] > 0, f"no case of {route} went without a key"
