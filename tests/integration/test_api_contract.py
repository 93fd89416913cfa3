"""The running API keeps its OpenAPI document: schemathesis sends generated requests (valid and
invalid ones, with and without a key) to a real `captioner api` with a real worker behind it, and
every answer must be documented (status, content type, headers, body schema) and none may be a 5xx.
Then `schemathesis run` itself, every check on (auth, positive and negative data, ...), its example,
coverage and fuzzing phases, against the API as `make run` configures it and with keys."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
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


# Every check schemathesis has is on. Two settings say what no JSON Schema can:
# - a body the schema allows may still not be a decodable image in an accepted format: the document
#   answers that 422 invalid_image or 415 unsupported_media_type, so positive data may get those too;
# - a batch answers 200 with one verdict per image, however bad an image is (docs/api.md, Batches): an
#   item that breaks the schema gets its own 4xx inside the 200, so the batch route is not held to a 4xx
#   for invalid data. The single route is, and every other check holds for the batch route too.
SCHEMATHESIS_CONFIG = """
[checks]
enabled = true

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "415", "422", "429", "5xx"]

[[operations]]
include-path = "/api/v1/predictions:batch"
checks.negative_data_rejection.enabled = false
"""
RUN_TIMEOUT_S = 600


@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
@pytest.mark.parametrize("keys", [False, True], ids=["as-make-run-runs-it", "with-keys"])
def test_schemathesis_run_with_every_check_passes(
    start_worker: StartWorker, start_api: StartApi, tmp_path: Path, keys: bool
) -> None:
    start_worker()
    api = start_api(CAPTIONER_API_REQUEST_TIMEOUT_S="60", **({"CAPTIONER_API_KEYS": KEY} if keys else {}))
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    headers = ["--header", f"Authorization: Bearer {KEY}"] if keys else []

    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
         "--seed", "1", "--max-examples", "100", "--workers", "1", "--request-timeout", "60",
         "--continue-on-failure", *headers, api.url + "/api/v1/openapi.json"],
        cwd=tmp_path,  # what it caches stays out of the repository
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )  # fmt: skip

    print(run.stdout[-2000:])
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-2000:]
