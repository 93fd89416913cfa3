"""The error paths the hostile-input tests do not reach: routes, the broker, the worker's answers, the
deadline and the unexpected. Each answer is the one JSON error family, with nothing from inside."""

from __future__ import annotations

import pytest

from producer_api.errors import BrokerUnavailableError
from schemas import CaptionReply, CaptionRequest, ReplyError, ReplyStatus
from tests.producer_api.conftest import (
    PREDICT,
    ApiUnderTest,
    Response,
    StartApi,
    assert_plain_error,
    assert_server_unnamed,
)
from tests.support.images import make_image_bytes

PNG = make_image_bytes("PNG")
# What a worker or a library may say, which a caller must never see.
INTERNALS = 'Traceback (most recent call last):\n  File "/work/x.py"\nValueError: <object at 0x7f>'


async def call(api: ApiUnderTest, path: str, method: str = "GET") -> Response:
    async with api.client.request(method, path) as response:
        return Response(response.status, dict(response.headers), await response.read())


async def test_an_unknown_path_is_a_json_404(serve_api: StartApi) -> None:
    api = await serve_api()

    response = await call(api, "/api/v1/nothing-here")

    assert_plain_error(response, 404, "not_found")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_a_wrong_method_is_a_json_405_that_names_the_allowed_one(
    serve_api: StartApi, method: str
) -> None:
    api = await serve_api()

    response = await call(api, PREDICT, method)

    assert_plain_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "POST"


async def test_a_broker_that_does_not_take_the_job_is_a_503(serve_api: StartApi) -> None:
    api = await serve_api()
    api.publisher.refusal = BrokerUnavailableError("the job was not delivered to Kafka", detail=INTERNALS)

    response = await api.post(PNG, "image/png")

    assert_plain_error(response, 503, "broker_unavailable")
    assert (api.in_flight, api.buffered_bytes) == (0, 0)


async def test_a_job_the_broker_never_acknowledged_is_a_503_without_its_words(serve_api: StartApi) -> None:
    """The reply's future fails with the delivery: the request does not wait out its timeout."""
    api = await serve_api()
    api.publisher.undelivered = BrokerUnavailableError("the job was not delivered to Kafka", detail=INTERNALS)

    response = await api.post(PNG, "image/png")

    assert_plain_error(response, 503, "broker_unavailable")
    assert INTERNALS not in response.body.decode()
    assert (api.in_flight, api.buffered_bytes) == (0, 0)


async def test_retries_that_ran_out_are_a_503_without_the_workers_words(serve_api: StartApi) -> None:
    api = await serve_api()
    api.publisher.answer = ReplyError("inference_failed", INTERNALS, True)

    response = await api.post(PNG, "image/png")

    assert_plain_error(response, 503, "caption_unavailable")
    error = response.json()["error"]
    assert error["reason"] == "inference_failed"
    assert error["id"] == api.publisher.published[0].correlation_id


async def test_a_failed_reply_without_an_error_is_a_plain_failure(serve_api: StartApi) -> None:
    api = await serve_api()
    api.publisher.replies = lambda job: [CaptionReply(job.correlation_id, ReplyStatus.FAILED, "m", "w")]

    response = await api.post(PNG, "image/png")

    assert_plain_error(response, 422, "caption_failed")


async def test_no_reply_by_the_deadline_is_a_504_that_says_nothing_was_retrying(serve_api: StartApi) -> None:
    api = await serve_api(request_timeout_s=0.3)
    api.publisher.replies = lambda _job: []

    response = await api.post(PNG, "image/png")

    assert_plain_error(response, 504, "timeout")
    error = response.json()["error"]
    assert error["retrying"] is False
    assert error["id"] == api.publisher.published[0].correlation_id
    assert (api.in_flight, api.buffered_bytes) == (0, 0)


def retrying_notice(job: CaptionRequest) -> list[CaptionReply]:
    error = ReplyError("inference_failed", INTERNALS, True)
    return [CaptionReply(job.correlation_id, ReplyStatus.RETRYING, "m", "w", error=error, attempt=2)]


async def test_a_job_being_retried_at_the_deadline_is_a_504_that_says_so(serve_api: StartApi) -> None:
    api = await serve_api(request_timeout_s=0.3)
    api.publisher.replies = retrying_notice

    response = await api.post(PNG, "image/png")

    assert_plain_error(response, 504, "timeout")
    error = response.json()["error"]
    assert error["retrying"] is True
    assert error["attempt"] == 2
    assert error["reason"] == "inference_failed"
    assert "retried" in error["message"] and "inference_failed" in error["message"]
    assert error["id"] == api.publisher.published[0].correlation_id


async def test_a_retrying_notice_then_a_caption_is_a_200(serve_api: StartApi) -> None:
    api = await serve_api(request_timeout_s=5)
    api.publisher.replies = lambda job: [
        *retrying_notice(job),
        CaptionReply(job.correlation_id, ReplyStatus.SUCCEEDED, "m", "w", title="at last", attempt=2),
    ]

    response = await api.post(PNG, "image/png")

    assert response.status == 200, response.body
    assert response.json()["title"] == "at last"


class Exploded(Exception):
    def __repr__(self) -> str:
        return f"<Exploded object at 0x7f00 in {INTERNALS}>"


@pytest.mark.parametrize(
    "raised",
    [
        pytest.param(Exploded(INTERNALS), id="unexpected-exception"),
        pytest.param(KeyError("/work/secret/path"), id="key-error"),
    ],
)
async def test_an_unexpected_exception_is_a_json_500_without_a_trace(
    serve_api: StartApi, raised: Exception
) -> None:
    api = await serve_api()
    api.publisher.refusal = raised

    response = await api.post(PNG, "image/png")

    assert_plain_error(response, 500, "internal_error")
    assert (api.in_flight, api.buffered_bytes) == (0, 0)


async def test_malformed_json_says_where_but_not_in_the_parsers_words(serve_api: StartApi) -> None:
    api = await serve_api()

    response = await api.post(b'{"image": "aGk=",\n}', "application/json")

    assert_plain_error(response, 400, "malformed_request")
    assert response.json()["error"]["message"] == "the body is not valid JSON (at line 2, column 1)"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/healthz"),
        ("GET", "/readyz"),  # 503: no Kafka in process
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/static/demo.js"),
        ("GET", "/api/v1/nothing-here"),
        ("DELETE", "/healthz"),
        ("POST", PREDICT),
    ],
)
async def test_no_answer_names_the_server_software(serve_api: StartApi, method: str, path: str) -> None:
    api = await serve_api()

    async with api.client.request(method, path, data=PNG, headers={"Content-Type": "image/png"}) as answer:
        response = Response(answer.status, dict(answer.headers), await answer.read())

    assert_server_unnamed(response)


@pytest.mark.parametrize(
    "head",
    [
        pytest.param("G\x01T / HTTP/1.1\nHost: test\n", id="bad-method"),
        pytest.param("GET / HTTP/1.1\nHost: test\nBad Header\n", id="bad-header"),
        pytest.param(f"GET /{'x' * 9000} HTTP/1.1\nHost: test\n", id="line-too-long"),
        pytest.param("POST /api/v1/predictions HTTP/1.1\nHost: test\nContent-Length: x\n", id="bad-length"),
    ],
)
async def test_a_request_aiohttp_cannot_parse_gets_the_plain_json_error(
    serve_api: StartApi, head: str
) -> None:
    api = await serve_api()
    connection = await api.open_raw(head)

    response = await connection.response()
    await connection.close()

    assert_plain_error(response, 400, "malformed_request")
    assert response.json()["error"]["message"] == "the request is not valid HTTP"
