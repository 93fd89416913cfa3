"""The prediction endpoint against hostile input: admission, limits, timeouts, plain JSON errors."""

from __future__ import annotations

import base64
import json

import pytest
from PIL import Image

from schemas import ReplyError
from tests.producer_api.conftest import (
    LIMIT,
    StartApi,
    assert_plain_error,
    in_flight_gauge,
    request_head,
)
from tests.support.images import encode, make_image_bytes
from tests.support.waiting import wait_until_async

PNG = make_image_bytes("PNG")


def as_json(document: object) -> bytes:
    return json.dumps(document).encode()


def multipart(*parts: tuple[str | None, bytes], boundary: str = "b0undary") -> tuple[bytes, str]:
    chunks = []
    for name, content in parts:
        disposition = f'Content-Disposition: form-data; name="{name}"' if name else "X-Nothing: 1"
        chunks.append(f"--{boundary}\r\n{disposition}\r\n\r\n".encode() + content + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def test_a_full_instance_answers_429_before_reading_the_body(serve_api: StartApi) -> None:
    api = await serve_api(max_in_flight=1)
    gauge = in_flight_gauge()
    stalled = await api.open_raw(request_head("image/png", len(PNG)), PNG[:10])
    # Its handler runs and waits for the body.
    await wait_until_async(lambda: in_flight_gauge() == gauge + 1, message="the handler never ran")

    # Only the head is sent: the answer comes though the server has none of the body.
    waiting = await api.open_raw(request_head("image/png", len(PNG)))
    response = await waiting.response()

    assert_plain_error(response, 429, "overloaded")
    assert response.headers["retry-after"].isdigit()
    await waiting.close()
    await stalled.send(PNG[10:])
    assert (await stalled.response()).status == 200
    await stalled.close()
    assert (api.in_flight, api.buffered_bytes) == (0, 0)


async def test_the_byte_budget_refuses_bodies_it_cannot_hold(serve_api: StartApi) -> None:
    api = await serve_api(max_in_flight=100, max_buffered_bytes=100_000)
    stalled = await api.open_raw(request_head("image/png", 60_000), b"x" * 10)
    await wait_until_async(
        lambda: api.buffered_bytes == 60_000, message="the stalled body's bytes were never reserved"
    )

    refused = await api.open_raw(request_head("image/png", 60_000))
    response = await refused.response()
    small = await api.post(PNG, "image/png")  # fits in what is left

    assert_plain_error(response, 429, "overloaded")
    assert "retry-after" in response.headers
    assert small.status == 200, small.body
    for connection in (refused, stalled):
        await connection.close()
    await wait_until_async(
        lambda: (api.in_flight, api.buffered_bytes) == (0, 0),
        message=lambda: (api.in_flight, api.buffered_bytes),
    )


async def test_a_trickling_body_gets_408_and_frees_its_slot(serve_api: StartApi) -> None:
    api = await serve_api(max_in_flight=1, body_read_timeout_s=0.3)
    trickle = await api.open_raw(request_head("image/png", len(PNG)), PNG[:10])

    response = await trickle.response()

    assert_plain_error(response, 408, "request_timeout")
    await trickle.close()
    await wait_until_async(lambda: api.in_flight == 0, message="the timed-out request kept its slot")
    assert (await api.post(PNG, "image/png")).status == 200


async def test_a_client_that_hangs_up_mid_body_frees_its_slot(serve_api: StartApi) -> None:
    api = await serve_api(max_in_flight=1)
    gone = await api.open_raw(request_head("image/png", len(PNG)), PNG[:10])
    await wait_until_async(lambda: api.in_flight == 1, message="the request never took its slot")

    await gone.close()

    await wait_until_async(
        lambda: (api.in_flight, api.buffered_bytes) == (0, 0),
        message=lambda: (api.in_flight, api.buffered_bytes),
    )
    assert (await api.post(PNG, "image/png")).status == 200


HOSTILE_JSON = [
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-arrays-100k-deep"),
    pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, id="nested-objects-50k-deep"),
    pytest.param(b'{"image": 1e999999}', id="huge-float"),
    pytest.param(b'{"image": "x", "n": ' + b"9" * 1_000_000 + b"}", id="int-of-a-million-digits"),
    pytest.param(b'{"image": NaN}', id="nan"),
    pytest.param(b"\xff\xfe{}", id="not-utf8"),
    pytest.param(b'{"image": "\xc3\x28"}', id="invalid-utf8-in-string"),
    pytest.param(b'"just a string"', id="not-an-object"),
    pytest.param(b"", id="empty"),
    pytest.param(as_json({"image": "%%% not base64 %%%"}), id="bad-base64"),
    pytest.param(as_json({"image": "\ud800"}), id="lone-surrogate"),
    pytest.param(as_json({"image": [base64.b64encode(PNG).decode()]}), id="image-not-a-string"),
    pytest.param(
        b'{"image": "%s", "image": "%s"}' % (base64.b64encode(PNG), base64.b64encode(PNG)),
        id="duplicate-keys",
    ),
    pytest.param(as_json({"image": base64.b64encode(PNG).decode(), "x": [[]] * 5000}), id="many-values"),
]


@pytest.mark.parametrize("body", HOSTILE_JSON)
async def test_hostile_json_is_a_plain_400(serve_api: StartApi, body: bytes) -> None:
    api = await serve_api(max_image_bytes=2 * 1024 * 1024)

    response = await api.post(body, "application/json")

    assert_plain_error(response, 400, "malformed_request")
    assert api.publisher.published == []


async def test_multipart_without_an_image_part_is_400(serve_api: StartApi) -> None:
    api = await serve_api()
    for parts in [[("picture", PNG)], [(None, PNG)], []]:
        body, content_type = multipart(*parts)
        assert_plain_error(await api.post(body, content_type), 400, "malformed_request")
    assert_plain_error(await api.post(b"not multipart", "multipart/form-data"), 400, "malformed_request")


async def test_multipart_reads_only_the_first_parts(serve_api: StartApi) -> None:
    api = await serve_api()
    body, content_type = multipart(*[(f"f{index}", b"") for index in range(1000)], ("image", PNG))

    response = await api.post(body, content_type)

    assert_plain_error(response, 400, "malformed_request")
    assert api.publisher.published == []


async def test_multipart_with_the_image_is_captioned(serve_api: StartApi) -> None:
    api = await serve_api()
    body, content_type = multipart(("note", b"hello"), ("image", PNG))

    response = await api.post(body, content_type)

    assert response.status == 200, response.body
    assert api.publisher.published[0].image == PNG


async def test_a_huge_non_image_part_is_bounded_by_the_body_limit(serve_api: StartApi) -> None:
    api = await serve_api()
    body, content_type = multipart(("junk", b"j" * (LIMIT * 3)), ("image", PNG))

    async def chunks():  # type: ignore[no-untyped-def]  # no Content-Length: chunked
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    async with api.client.post(
        "/api/v1/predictions", data=chunks(), headers={"Content-Type": content_type}
    ) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "payload_too_large"


BAD_IMAGES = [
    pytest.param(b"x" * (LIMIT + 1), "image/jpeg", 413, "payload_too_large", id="raw-over-limit"),
    pytest.param(
        as_json({"image": base64.b64encode(b"x" * (LIMIT + 1)).decode()}),
        "application/json",
        413,
        "payload_too_large",
        id="json-over-limit",
    ),
    pytest.param(b"hello", "text/plain", 415, "unsupported_media_type", id="text-plain"),
    pytest.param(make_image_bytes("ICO"), "image/x-icon", 415, "unsupported_media_type", id="ico"),
    pytest.param(
        b"\x00\x00\x00\x18ftypheic" + b"\x00" * 200, "image/heic", 415, "unsupported_media_type", id="heic"
    ),
    pytest.param(b"\xff\xd8\xff garbage", "image/jpeg", 422, "invalid_image", id="garbage-jpeg"),
    pytest.param(
        as_json({"image": base64.b64encode(b"hello world").decode()}),
        "application/json",
        422,
        "invalid_image",
        id="base64-not-an-image",
    ),
    pytest.param(
        encode(Image.new("RGB", (1200, 1000)), "PNG"), "image/png", 422, "image_too_large", id="pixels"
    ),
    pytest.param(b"", "image/png", 400, "malformed_request", id="empty-raw-body"),
]


@pytest.mark.parametrize(("body", "content_type", "status", "code"), BAD_IMAGES)
async def test_bad_images_get_plain_json_errors(
    serve_api: StartApi, body: bytes, content_type: str, status: int, code: str
) -> None:
    api = await serve_api()

    response = await api.post(body, content_type)

    assert_plain_error(response, status, code)
    assert (api.in_flight, api.buffered_bytes) == (0, 0)


async def test_413_comes_from_the_declared_length_without_reading_the_body(serve_api: StartApi) -> None:
    api = await serve_api()
    connection = await api.open_raw(request_head("image/png", LIMIT * 100))

    assert_plain_error(await connection.response(), 413, "payload_too_large")
    await connection.close()
    assert (api.in_flight, api.buffered_bytes) == (0, 0)


WORKER_FAILURES = [
    pytest.param("invalid_image", 422, id="invalid-image"),
    pytest.param("image_too_large", 422, id="image-too-large"),
    pytest.param("unsupported_media_type", 415, id="unsupported"),
    pytest.param("invalid_request", 400, id="invalid-request"),
    pytest.param("model_exploded", 422, id="other-permanent"),
]


@pytest.mark.parametrize(("code", "status"), WORKER_FAILURES)
async def test_worker_failures_map_to_their_status_without_internals(
    serve_api: StartApi, code: str, status: int
) -> None:
    api = await serve_api()
    internals = 'Traceback (most recent call last):\n  File "/work/x.py"\nValueError: <object at 0x7f>'
    api.publisher.answer = ReplyError(code, internals if code == "model_exploded" else "bad image", False)

    response = await api.post(PNG, "image/png")

    assert_plain_error(response, status)
    assert response.json()["error"]["code"] in (code, "caption_failed")
    assert response.json()["error"]["id"] == api.publisher.published[0].correlation_id
