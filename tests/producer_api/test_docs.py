"""The OpenAPI document and its page: served, valid, and covering every route and error code."""

from __future__ import annotations

import re
import tomllib

import pytest
import schemathesis
from aiohttp import web

import producer_api.errors
from core import errors as core_errors
from core.errors import CaptionerError
from producer_api.docs import openapi_document
from tests.producer_api.conftest import StartApi
from tests.support.repo import REPO


def error_codes() -> set[str]:
    """Every code the API's error family answers with, plus aiohttp's own 404 and 405."""
    found = {"not_found", "method_not_allowed"}
    for module in (producer_api.errors, core_errors):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, CaptionerError):
                found.add(value.code)
    return found


async def test_the_document_is_served_as_openapi_3_1(serve_api: StartApi) -> None:
    api = await serve_api()

    async with api.client.get("/api/v1/openapi.json") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        document = await response.json()

    assert document == openapi_document()
    assert document["openapi"].startswith("3.1.")
    operations = list(schemathesis.openapi.from_dict(document).get_all_operations())
    assert operations and all(operation.ok() for operation in operations)


async def test_every_route_is_documented_and_every_documented_route_exists(serve_api: StartApi) -> None:
    api = await serve_api()
    app: web.Application = api.app
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(method, path) for path, item in openapi_document()["paths"].items() for method in item}

    assert served == documented


def test_every_error_code_is_in_the_documented_enum() -> None:
    enum = set(openapi_document()["components"]["schemas"]["ErrorCode"]["enum"])

    assert error_codes() <= enum


async def test_the_docs_page_renders_the_document_without_a_cdn(serve_api: StartApi) -> None:
    api = await serve_api()

    async with api.client.get("/api/v1/docs") as page:
        html = await page.text()
        assert (page.status, page.content_type) == (200, "text/html")
    async with api.client.get("/api/v1/docs.js") as script_response:
        script = await script_response.text()
        assert (script_response.status, script_response.content_type) == (200, "text/javascript")

    assert '<script src="docs.js">' in html
    assert 'fetch("openapi.json")' in script
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "the page loads nothing from elsewhere"
    assert "innerHTML" not in script


def test_the_document_and_page_ship_in_the_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())

    assert project["tool"]["setuptools"]["package-data"]["producer_api"] == ["openapi.json", "static/*"]


@pytest.mark.parametrize("path", ["/api/v1/docs", "/api/v1/docs.js", "/api/v1/openapi.json"])
async def test_an_unchanged_docs_file_is_answered_304_with_the_docs_policy(
    serve_api: StartApi, path: str
) -> None:
    api = await serve_api()
    async with api.client.get(path) as first:
        etag = first.headers["ETag"]
        assert first.status == 200
        assert first.headers["Cache-Control"] == "no-cache"

    async with api.client.get(path, headers={"If-None-Match": etag}) as again:
        assert again.status == 304
        assert await again.read() == b""
        assert again.headers["ETag"] == etag
        assert again.headers["Content-Security-Policy"].startswith("default-src 'none'; script-src 'self'")
        assert again.headers["X-Content-Type-Options"] == "nosniff"
