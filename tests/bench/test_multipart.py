"""bench.multipart times two parsers on the same bodies: they must read the same images from them."""

from __future__ import annotations

import os

from bench.multipart import by_aiohttp, by_the_api, form


def test_both_parsers_read_every_image_of_a_body() -> None:
    images = [os.urandom(size) for size in (1, 1000, 300_000)]
    body = form(images)

    assert by_the_api(body) == images
    assert by_aiohttp(body) == images
