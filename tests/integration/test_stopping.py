"""SIGTERM with caption requests in flight, against a real broker, API process and worker process: every
request the API took in gets an HTTP answer (its caption or its 504 while the drain lasts, a 503 at the
drain bound), and the API exits within that bound and its closing steps."""

from __future__ import annotations

import base64
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartApi, StartWorker
from tests.support.images import make_image_bytes
from tests.support.processes import ApiProcess
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IN_FLIGHT = 24
# Long enough for a worker started after the signal to load its model and join the group on a busy
# machine; what the test checks is that the API waits for it, not how fast it is.
REQUEST_TIMEOUT_S = 60
# After the drain: the last answers written, then the Kafka clients closed (producer_api.app).
CLOSING_S = 20


def in_flight(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "captioner_api_in_flight":
                return float(sample.value)
    return 0.0


def listening(url: str) -> bool:
    try:
        requests.get(url + "/healthz", timeout=5)
    except requests.ConnectionError:
        return False
    return True


def post(url: str, seed: int) -> requests.Response:
    image = base64.b64encode(make_image_bytes("PNG", seed=seed)).decode()
    return requests.post(f"{url}/api/v1/predictions", json={"image": image}, timeout=REQUEST_TIMEOUT_S * 3)


def requests_in_flight(api: ApiProcess, callers: ThreadPoolExecutor) -> list[Future[requests.Response]]:
    calls = [callers.submit(post, api.url, seed) for seed in range(IN_FLIGHT)]
    wait_until(
        lambda: in_flight(api.url) == IN_FLIGHT,
        timeout_s=60,
        message=lambda: f"{in_flight(api.url)} of {IN_FLIGHT} requests in flight",
    )
    return calls


def test_sigterm_answers_every_request_in_flight_then_exits(
    start_api: StartApi, start_worker: StartWorker
) -> None:
    api = start_api(wait_for_worker=False, CAPTIONER_API_REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S))
    with ThreadPoolExecutor(IN_FLIGHT) as callers:
        calls = requests_in_flight(api, callers)

        api.popen.terminate()  # SIGTERM
        wait_until(lambda: not listening(api.url), timeout_s=30, message="the API still takes connections")
        start_worker()  # the jobs wait in the request topic; their answers reach a draining API
        answers = [call.result() for call in calls]  # a connection closed without an answer raises

    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) <= {200, 504}, [answer.text for answer in answers]
    assert 200 in statuses, statuses  # the reply listener was still open for them
    assert api.wait_exit(timeout_s=REQUEST_TIMEOUT_S + CLOSING_S) == 0
    log = api.log()
    assert f"draining {IN_FLIGHT} requests in flight" in log
    assert "drained: every request in flight was answered" in log


def test_requests_still_in_flight_at_the_drain_bound_are_answered_503(start_api: StartApi) -> None:
    """No worker ever answers: at CAPTIONER_API_SHUTDOWN_TIMEOUT_S each request gets a 503, none is cut."""
    bound_s = 1
    api = start_api(
        wait_for_worker=False,
        CAPTIONER_API_REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S),
        CAPTIONER_API_SHUTDOWN_TIMEOUT_S=str(bound_s),
    )
    with ThreadPoolExecutor(IN_FLIGHT) as callers:
        calls = requests_in_flight(api, callers)

        api.popen.terminate()  # SIGTERM
        answers = [call.result() for call in calls]  # a connection closed without an answer raises

    assert {answer.status_code for answer in answers} == {503}
    assert {answer.json()["error"]["code"] for answer in answers} == {"shutting_down"}
    assert {answer.headers["Connection"] for answer in answers} == {"close"}
    assert api.wait_exit(timeout_s=bound_s + CLOSING_S) == 0
    assert f"{IN_FLIGHT} requests still in flight at {bound_s} s were answered 503" in api.log()
