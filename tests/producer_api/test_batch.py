"""POST /api/v1/predictions:batch in process: one job per image, results in order, errors per item,
the batch's own faults as 4xx, and the byte budget covering the whole body."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from producer_api.payload import JSON_BATCH_HOLD_FACTOR
from schemas import ReplyError
from tests.producer_api.conftest import (
    LIMIT,
    ApiUnderTest,
    Response,
    StartApi,
    assert_plain_error,
)
from tests.support.images import make_image_bytes
from tests.support.waiting import wait_until_async as wait_until

BATCH = "/api/v1/predictions:batch"
IMAGES = [make_image_bytes("PNG", width=40 + 8 * index, height=40, seed=index) for index in range(4)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def json_batch(*images: object) -> bytes:
    return json.dumps({"images": [{"image": image} for image in images]}).encode()


def multipart(*parts: tuple[str, bytes], boundary: str = "b4tch") -> tuple[bytes, str]:
    chunks = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + content + b"\r\n"
        for name, content in parts
    ]
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def post_batch(api: ApiUnderTest, body: bytes, content_type: str = "application/json") -> Response:
    async with api.client.post(BATCH, data=body, headers={"Content-Type": content_type}) as response:
        return Response(response.status, dict(response.headers), await response.read())


def results(response: Response) -> list[dict[str, Any]]:
    assert response.status == 200, response.body
    found: list[dict[str, Any]] = response.json()["results"]
    return found


def title_of(image: bytes) -> str:
    return f"a picture of {len(image)} bytes"


async def test_each_image_is_its_own_job_and_results_keep_the_input_order(serve_api: StartApi) -> None:
    api = await serve_api()
    api.publisher.held = []
    sending = asyncio.create_task(post_batch(api, json_batch(*map(b64, IMAGES))))

    # Every job is published before any is answered: the items do not wait for each other.
    await wait_until(lambda: len(api.publisher.held or []) == len(IMAGES))
    api.publisher.pending.deliver(list(reversed(api.publisher.held or [])))
    found = results(await sending)

    assert [result["title"] for result in found] == [title_of(image) for image in IMAGES]
    assert {result["status"] for result in found} == {200}
    assert len({result["id"] for result in found}) == len(IMAGES)
    assert sorted(job.image for job in api.publisher.published) == sorted(IMAGES)
    assert (api.in_flight, api.buffered_bytes) == (0, 0)


async def test_items_fail_on_their_own_and_the_batch_is_still_a_200(serve_api: StartApi) -> None:
    api = await serve_api()
    too_big = b64(b"x" * (LIMIT + 1))
    body = json.dumps(
        {
            "images": [
                {"image": b64(IMAGES[0])},
                {"image": "%%%"},
                {"picture": "x"},
                {"image": too_big},
                {"image": b64(b"not an image at all")},
                "just a string",
                {"image": b64(IMAGES[1])},
            ]
        }
    ).encode()

    found = results(await post_batch(api, body))

    assert [result["status"] for result in found] == [200, 400, 400, 413, 422, 400, 200]
    codes = [result.get("error", {}).get("code") for result in found]
    assert codes == [
        None,
        "malformed_request",
        "malformed_request",
        "payload_too_large",
        "invalid_image",
        "malformed_request",
        None,
    ]
    assert [found[0]["title"], found[6]["title"]] == [title_of(IMAGES[0]), title_of(IMAGES[1])]
    for failed in found[1:6]:
        assert_plain_error(Response(200, {"Content-Type": "application/json"}, json.dumps(failed).encode()))
    assert len(api.publisher.published) == 2


async def test_worker_failures_are_per_item(serve_api: StartApi) -> None:
    api = await serve_api()
    api.publisher.answer = ReplyError("invalid_image", "cannot decode", False)

    found = results(await post_batch(api, json_batch(b64(IMAGES[0]), b64(IMAGES[1]))))

    assert [(result["status"], result["error"]["code"]) for result in found] == [(422, "invalid_image")] * 2
    # Items are published concurrently, so match each result to its job by the image it carried.
    job_of_image = {job.image: job.correlation_id for job in api.publisher.published}
    assert [result["error"]["id"] for result in found] == [job_of_image[IMAGES[0]], job_of_image[IMAGES[1]]]


async def test_a_multipart_batch_takes_every_image_part_in_order(serve_api: StartApi) -> None:
    api = await serve_api()
    body, content_type = multipart(
        ("image", IMAGES[2]), ("note", b"skipped"), ("image", IMAGES[0]), ("image", b"junk")
    )

    found = results(await post_batch(api, body, content_type))

    assert [result["status"] for result in found] == [200, 200, 422]
    assert [found[0]["title"], found[1]["title"]] == [title_of(IMAGES[2]), title_of(IMAGES[0])]


@pytest.mark.parametrize("kind", ["json", "multipart"])
async def test_more_items_than_allowed_is_413_and_nothing_published(serve_api: StartApi, kind: str) -> None:
    api = await serve_api(max_batch_items=3)
    images = [IMAGES[0]] * 4
    if kind == "json":
        body, content_type = json_batch(*map(b64, images)), "application/json"
    else:
        body, content_type = multipart(*[("image", image) for image in images])

    response = await post_batch(api, body, content_type)

    assert_plain_error(response, 413, "payload_too_large")
    assert response.json()["error"]["limit"] == 3
    assert api.publisher.published == []


MALFORMED = [
    pytest.param(b"not json", "application/json", 400, id="not-json"),
    pytest.param(b'{"images": []}', "application/json", 400, id="no-images"),
    pytest.param(b'{"images": "x"}', "application/json", 400, id="images-not-a-list"),
    pytest.param(b'{"image": "aGk="}', "application/json", 400, id="single-shape"),
    pytest.param(b"[" * 10_000 + b"]" * 10_000, "application/json", 400, id="deep-arrays"),
    pytest.param(multipart(("note", b"x"))[0], multipart(("note", b"x"))[1], 400, id="no-image-part"),
    pytest.param(IMAGES[0], "image/png", 415, id="raw-image"),
    pytest.param(b"x", "text/plain", 415, id="text"),
]


@pytest.mark.parametrize(("body", "content_type", "status"), MALFORMED)
async def test_a_malformed_batch_is_a_plain_4xx(
    serve_api: StartApi, body: bytes, content_type: str, status: int
) -> None:
    api = await serve_api()

    assert_plain_error(await post_batch(api, body, content_type), status)
    assert api.publisher.published == []


async def test_the_whole_body_is_bounded_and_reserved_before_it_is_read(serve_api: StartApi) -> None:
    api = await serve_api(max_batch_bytes=200_000, max_buffered_bytes=1_200_000)
    head = f"POST {BATCH} HTTP/1.1\nHost: t\nContent-Type: application/json\nContent-Length: {{}}\n"

    over = await api.open_raw(head.format(200_001))
    refused = await over.response()
    stalled = await api.open_raw(head.format(150_000), b'{"images": [')
    await wait_until(lambda: api.buffered_bytes == 150_000 * JSON_BATCH_HOLD_FACTOR)
    second = await api.open_raw(head.format(150_001))  # more than the budget has left
    overloaded = await second.response()

    assert_plain_error(refused, 413, "payload_too_large")
    assert_plain_error(overloaded, 429, "overloaded")
    for connection in (over, stalled, second):
        await connection.close()
    await wait_until(lambda: (api.in_flight, api.buffered_bytes) == (0, 0))


@pytest.mark.parametrize(
    ("content_type", "held_per_body_byte"),
    [
        pytest.param("application/json", 4, id="json"),  # bytes, text, base64 strings, images
        pytest.param("multipart/form-data; boundary=b4tch", 2, id="multipart"),  # bytes, images
    ],
)
async def test_a_batch_reserves_what_parsing_its_body_holds(
    serve_api: StartApi, content_type: str, held_per_body_byte: int
) -> None:
    api = await serve_api(max_batch_bytes=200_000)
    head = f"POST {BATCH} HTTP/1.1\nHost: t\nContent-Type: {content_type}\nContent-Length: 100000\n"

    stalled = await api.open_raw(head)
    await wait_until(lambda: api.in_flight == 1)

    assert api.buffered_bytes >= 100_000 * held_per_body_byte
    await stalled.close()
    await wait_until(lambda: (api.in_flight, api.buffered_bytes) == (0, 0))
