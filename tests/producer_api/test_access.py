"""Who may call what: optional API keys (401 without one; probes, metrics and docs stay open), and
/metrics on a port of its own."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from producer_api.serving import SERVER_NAME
from tests.producer_api.conftest import PREDICT, ApiUnderTest, Response, StartApi, assert_plain_error
from tests.support.images import make_image_bytes
from tests.support.services import free_port

PNG = make_image_bytes("PNG")
FIRST_KEY = "first-key-0123456789-abcdefghijklmn"
SECOND_KEY = "second-key-abcdefghij-0123456789xyz"
KEYS = f"{FIRST_KEY},{SECOND_KEY}"
OPEN_ROUTES = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/v1/openapi.json",
    "/api/v1/docs",
    "/api/v1/docs.js",
    # the demo page, so that a browser can load what asks for the key
    "/",
    "/static/demo.js",
    "/static/demo.css",
]


async def predict(api: ApiUnderTest, **headers: str) -> Response:
    async with api.client.post(
        PREDICT, data=PNG, headers={"Content-Type": "image/png", **headers}
    ) as response:
        return Response(response.status, dict(response.headers), await response.read())


async def get(api: ApiUnderTest, path: str) -> int:
    async with api.client.get(path) as response:
        return response.status


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-key"),
        pytest.param({"Authorization": "Bearer wrong-key"}, id="wrong-bearer"),
        pytest.param({"X-API-Key": FIRST_KEY[:-1]}, id="key-prefix"),
        pytest.param({"Authorization": "Basic Zmlyc3Qta2V5"}, id="other-scheme"),
        pytest.param({"Authorization": "Bearer "}, id="empty-bearer"),
    ],
)
async def test_without_a_valid_key_the_answer_is_401_before_the_body_counts(
    serve_api: StartApi, headers: dict[str, str]
) -> None:
    api = await serve_api(keys=KEYS)

    response = await predict(api, **headers)

    assert_plain_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.publisher.published == []
    assert (api.in_flight, api.buffered_bytes) == (0, 0)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Authorization": f"Bearer {FIRST_KEY}"}, id="bearer"),
        pytest.param({"Authorization": f"bearer {SECOND_KEY}"}, id="bearer-lowercase-second-key"),
        pytest.param({"X-API-Key": SECOND_KEY}, id="x-api-key"),
    ],
)
async def test_either_header_with_any_configured_key_is_let_in(
    serve_api: StartApi, headers: dict[str, str]
) -> None:
    api = await serve_api(keys=KEYS)
    assert (await predict(api)).status == 401

    response = await predict(api, **headers)

    assert response.status == 200, response.body


async def test_keys_come_from_a_file_too(serve_api: StartApi, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    file_keys = ("file-key-one-0123456789abcdefghijk", "file-key-two-0123456789abcdefghijk")
    keys_file.write_text(f"# operators\n{file_keys[0]}\n\n  {file_keys[1]}  \n")
    api = await serve_api(keys=FIRST_KEY, keys_file=keys_file)

    statuses = [(await predict(api, **{"X-API-Key": key})).status for key in (*file_keys, FIRST_KEY)]

    assert statuses == [200, 200, 200]
    assert (await predict(api, **{"X-API-Key": "# operators"})).status == 401


async def test_every_other_route_needs_the_key_too(serve_api: StartApi) -> None:
    api = await serve_api(keys=KEYS)

    async with api.client.post("/api/v1/predictions:batch", json={"images": []}) as response:
        assert response.status == 401
    assert await get(api, "/api/v1/not-a-route") == 401  # no route list for callers without a key


@pytest.mark.parametrize("path", OPEN_ROUTES)
async def test_probes_metrics_and_docs_stay_open(serve_api: StartApi, path: str) -> None:
    api = await serve_api(keys=KEYS)

    assert (await predict(api)).status == 401

    # /readyz answers 503 here: in process there is no Kafka; what matters is that it is not a 401.
    assert await get(api, path) in (200, 503)


async def test_auth_is_on_when_keys_are_configured_and_off_when_none_is_or_it_is_turned_off(
    serve_api: StartApi,
) -> None:
    without_keys, turned_off, with_keys, required = (
        await serve_api(),
        await serve_api(auth="off"),
        await serve_api(keys=KEYS),
        await serve_api(keys=KEYS, auth="required"),
    )

    statuses = [(await predict(api)).status for api in (without_keys, turned_off, with_keys, required)]

    assert statuses == [200, 200, 401, 401]


async def test_keys_are_never_logged(serve_api: StartApi, caplog: pytest.LogCaptureFixture) -> None:
    api = await serve_api(keys=KEYS)
    caplog.set_level(logging.DEBUG)

    refused = await predict(api, Authorization="Bearer a-wrong-key-that-must-not-leak")
    admitted = await predict(api, Authorization=f"Bearer {FIRST_KEY}")

    assert (refused.status, admitted.status) == (401, 200)

    for secret in ("a-wrong-key-that-must-not-leak", FIRST_KEY, SECOND_KEY):
        assert secret not in caplog.text


async def test_metrics_can_move_to_their_own_port(serve_api: StartApi) -> None:
    port = free_port()
    api = await serve_api(metrics_port=port, keys=KEYS)

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert "captioner_api_in_flight" in await response.text()
        assert response.headers["Server"] == SERVER_NAME
    async with api.client.get("/metrics", headers={"X-API-Key": FIRST_KEY}) as response:
        assert response.status == 404


async def test_moved_metrics_are_not_open_on_the_api_port(serve_api: StartApi) -> None:
    api = await serve_api(metrics_port=free_port(), keys=KEYS)

    # Like any unknown path: a caller without a key cannot tell /metrics from a route that never was.
    assert [await get(api, path) for path in ("/metrics", "/not-a-route")] == [401, 401]
