"""CPU time of reading multipart bodies: the API's parser (producer_api.payload, over the bytes already read)
against aiohttp's own MultipartReader over the same bytes, side by side in one run.

    python -m bench.multipart [--rounds R]

aiohttp's reader is asynchronous, so it would parse on the event loop; the API's runs in its request
threads. Each figure is the median over rounds of the wall time to take every `image` part out of a body;
the two parsers alternate round by round, so a loaded machine slows both alike and their ratio is the
figure to read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable

from aiohttp import MultipartReader
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader
from multidict import CIMultiDict

from producer_api.payload import images_from_multipart_batch

BOUNDARY = "bench-boundary"
READ_CHUNK_BYTES = 256 * 1024
# (what the body holds, images and each one's size): one photo, the largest single image, a full batch.
BODIES = {
    "1 image of 300 KB": (1, 300_000),
    "1 image of 10 MB": (1, 10_000_000),
    "32 images of 2 MB": (32, 2_000_000),
}


def form(images: list[bytes]) -> bytes:
    delimiter = b"--" + BOUNDARY.encode()
    parts = [
        delimiter
        + b'\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        + image
        + b"\r\n"
        for image in images
    ]
    return b"".join(parts) + delimiter + b"--\r\n"


def by_the_api(body: bytes) -> list[bytes]:
    found = images_from_multipart_batch(body, BOUNDARY.encode(), len(body), len(body))
    return [item for item in found if isinstance(item, bytes)]


async def _by_aiohttp(body: bytes) -> list[bytes]:
    loop = asyncio.get_running_loop()
    stream = StreamReader(BaseProtocol(loop), len(body) + 1, loop=loop)  # never paused: all of it is here
    stream.feed_data(body)
    stream.feed_eof()
    reader = MultipartReader(
        CIMultiDict({"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}), stream
    )
    images = []
    async for part in reader:
        content = bytearray()
        while chunk := await part.read_chunk(READ_CHUNK_BYTES):  # type: ignore[union-attr]
            content.extend(chunk)
        images.append(bytes(content))
    return images


def by_aiohttp(body: bytes) -> list[bytes]:
    return asyncio.run(_by_aiohttp(body))


def timed(parse: Callable[[bytes], list[bytes]], body: bytes, expected: list[bytes]) -> float:
    started = time.perf_counter()
    images = parse(body)
    elapsed = time.perf_counter() - started
    assert images == expected, "the parsers disagree"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    for name, (count, size) in BODIES.items():
        images = [os.urandom(size) for _ in range(count)]
        body = form(images)
        api, aiohttp = [], []
        for _ in range(rounds):
            api.append(timed(by_the_api, body, images))
            aiohttp.append(timed(by_aiohttp, body, images))
        api_ms, aiohttp_ms = statistics.median(api) * 1000, statistics.median(aiohttp) * 1000
        print(
            f"{name}: the API's parser {api_ms:.1f} ms, aiohttp's MultipartReader {aiohttp_ms:.1f} ms "
            f"({aiohttp_ms / api_ms:.0f}x)"
        )


if __name__ == "__main__":
    main()
