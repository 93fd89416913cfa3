"""A seeded fuzz of the payload readers: whatever the body, the answer is 200 or a plain JSON 4xx."""

from __future__ import annotations

import base64
import json
import random

from tests.producer_api.conftest import StartApi, assert_plain_error
from tests.support.images import make_image_bytes

PNG = make_image_bytes("PNG", width=24, height=16)
JPEG = make_image_bytes("JPEG", width=24, height=16)
CONTENT_TYPES = [
    "application/json",
    "multipart/form-data; boundary=zz",
    "multipart/form-data",
    "image/png",
    "image/jpeg",
    "application/octet-stream",
]


def seed_bodies() -> list[tuple[bytes, str]]:
    image = base64.b64encode(PNG).decode()
    return [
        (json.dumps({"image": image}).encode(), "application/json"),
        (json.dumps({"image": "data:image/png;base64," + image}).encode(), "application/json"),
        (
            b'--zz\r\nContent-Disposition: form-data; name="image"\r\n\r\n' + JPEG + b"\r\n--zz--\r\n",
            CONTENT_TYPES[1],
        ),
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
    ]


def mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 8)):
        choice = rng.randrange(6)
        position = rng.randrange(len(data) + 1)
        if choice == 0 and data:  # flip a byte
            data[min(position, len(data) - 1)] = rng.randrange(256)
        elif choice == 1:  # truncate
            del data[position:]
        elif choice == 2:  # insert structure that parsers choke on
            data[position:position] = rng.choice(
                [
                    b"[" * 5000,
                    b"{" * 3000,
                    b"9" * 20000,
                    b"1e99999",
                    b"\\ud800",
                    b"\xff\xfe",
                    b"\r\n--zz\r\n",
                    b'"',
                    b"\x00",
                ]
            )
        elif choice == 3:  # duplicate a slice
            data[position:position] = data[position : position + rng.randrange(1, 200)]
        elif choice == 4:  # random bytes
            data[position:position] = rng.randbytes(rng.randrange(1, 64))
        elif data:  # drop a slice
            del data[position : position + rng.randrange(1, 64)]
    return bytes(data)


def fuzz_cases(count: int, seed: int = 9) -> list[tuple[bytes, str]]:
    rng = random.Random(seed)
    seeds = seed_bodies()
    cases = []
    for index in range(count):
        body, content_type = rng.choice(seeds)
        body = rng.randbytes(rng.randrange(0, 2000)) if index % 10 == 0 else mutate(rng, body)
        if rng.random() < 0.2:
            content_type = rng.choice(CONTENT_TYPES)
        cases.append((body, content_type))
    return cases


async def test_three_hundred_mutated_bodies_never_get_a_5xx(serve_api: StartApi) -> None:
    api = await serve_api(max_image_bytes=256 * 1024)
    statuses = []
    for body, content_type in fuzz_cases(300):
        response = await api.post(body, content_type)
        statuses.append(response.status)
        if response.status != 200:
            assert 400 <= response.status < 500, (response.status, response.body[:300], body[:80])
            assert_plain_error(response)
    assert (api.in_flight, api.buffered_bytes) == (0, 0)
    assert statuses.count(200) < len(statuses)  # the mutations reached the error paths
