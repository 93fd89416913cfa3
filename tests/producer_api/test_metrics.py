"""The API's request metrics: labelled by the route that matched, never by the URL a client sent, so hostile
paths and methods cannot multiply the series."""

from __future__ import annotations

import random
import string

from prometheus_client import REGISTRY

from producer_api.metrics import UNMATCHED_ROUTE
from tests.producer_api.conftest import PREDICT, StartApi
from tests.support.images import make_image_bytes

PATH_CHARS = string.ascii_letters + string.digits + "-._~%!$&'()*+,;=:@/"


def request_series() -> dict[tuple[str, str, str], float]:
    return {
        (sample.labels["route"], sample.labels["method"], sample.labels["status"]): sample.value
        for family in REGISTRY.collect()
        if family.name == "captioner_api_requests"
        for sample in family.samples
        if sample.name == "captioner_api_requests_total"
    }


def hostile_path(rng: random.Random) -> str:
    """Any path but one starting with "//", which a client takes for a URL with a host."""
    return "/x" + "".join(rng.choice(PATH_CHARS) for _ in range(rng.randrange(0, 200)))


async def test_a_thousand_random_paths_make_only_the_unmatched_route(serve_api: StartApi) -> None:
    api = await serve_api()
    rng = random.Random(12)
    before = request_series()

    for _ in range(1000):
        async with api.client.get(hostile_path(rng)) as response:
            await response.read()

    after = request_series()
    new_routes = {route for route, _, _ in after.keys() - before.keys()}
    assert new_routes <= {UNMATCHED_ROUTE}
    unmatched = sum(value for (route, _, _), value in after.items() if route == UNMATCHED_ROUTE)
    unmatched_before = sum(value for (route, _, _), value in before.items() if route == UNMATCHED_ROUTE)
    assert unmatched - unmatched_before == 1000
    routes = {route.resource.canonical for route in api.app.router.routes() if route.resource is not None}
    assert {route for route, _, _ in after} <= routes | {UNMATCHED_ROUTE}


async def test_an_unusual_method_is_counted_as_other(serve_api: StartApi) -> None:
    """The HTTP parser refuses methods it does not know (400, before any handler); WebDAV's it passes on."""
    api = await serve_api()

    async with api.client.request("PROPFIND", "/healthz") as response:
        assert response.status == 405

    assert request_series().get((UNMATCHED_ROUTE, "other", "405"), 0) >= 1
    assert not any(method == "PROPFIND" for _, method, _ in request_series())


async def test_a_caption_request_is_counted_with_its_route_status_and_latency(serve_api: StartApi) -> None:
    api = await serve_api()
    before = request_series().get((PREDICT, "POST", "200"), 0)
    latency_before = REGISTRY.get_sample_value("captioner_api_request_seconds_count", {"route": PREDICT}) or 0

    response = await api.post(make_image_bytes("PNG"), "image/png")

    assert response.status == 200
    assert request_series()[(PREDICT, "POST", "200")] == before + 1
    assert REGISTRY.get_sample_value("captioner_api_request_seconds_count", {"route": PREDICT}) == (
        latency_before + 1
    )
