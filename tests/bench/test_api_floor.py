"""The bare aiohttp server under the API's CPU figure: it answers as the load client expects, and its CPU
time per request is measured under the same open loop."""

from __future__ import annotations

import math
import urllib.request

from bench.api_floor import bare_server, measure_api_floor
from bench.images import make_image
from bench.load import answered, load_client


def test_the_bare_server_answers_what_the_load_client_reads() -> None:
    with bare_server() as server:
        request = urllib.request.Request(server.url, data=b"\xff\xd8 any body", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()

    outcome = answered(body, due=0.0, sent=0.0, done=0.0)
    assert outcome.ok and outcome.cached is False and outcome.words == 3


def test_its_cpu_time_per_request_is_measured_under_an_open_loop() -> None:
    with load_client() as client:
        floor = measure_api_floor(client, make_image(320, 240, seed=0), duration_s=1.0, rate=50.0)

    assert math.isfinite(floor) and floor > 0
