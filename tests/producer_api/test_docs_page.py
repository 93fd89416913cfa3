"""/api/v1/docs in headless Chromium: the page renders the descriptions' Markdown (bold, code, lists,
links), and nothing a description holds becomes markup: HTML stays text, and a link goes only to an
http(s) URL, this origin or a fragment. The page's three files are served as the API serves them, under
its Content Security Policy."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Route

from producer_api.docs import (
    DOCS_PATH,
    DOCS_SCRIPT_PATH,
    DOCS_SECURITY_HEADERS,
    OPENAPI_PATH,
    openapi_document,
)

pytestmark = pytest.mark.slow

ORIGIN = "http://captioner.test"
HOSTILE = (
    '**Bold** and `code` <img src=x onerror="window.pwned=1"><script>window.pwned=1</script> '
    "<b>not bold</b> [fine](https://example.org/a) [same origin](/healthz) [here](#schema-ErrorCode) "
    "[script](javascript:window.pwned=1) [other host](//evil.example/x) [slashes](/\\evil.example/x) "
    "[data](data:text/html,<script>window.pwned=1</script>)\n\n- one *item*\n- another"
)


def serve(page: Page, document: dict[str, Any]) -> list[str]:
    """The page's files from the package, the document given; returns the script errors seen."""
    files = {
        DOCS_PATH: (resources.files("producer_api").joinpath("static/docs.html").read_bytes(), "text/html"),
        DOCS_SCRIPT_PATH: (
            resources.files("producer_api").joinpath("static/docs.js").read_bytes(),
            "text/javascript",
        ),
        OPENAPI_PATH: (json.dumps(document).encode(), "application/json"),
    }

    def fulfil(route: Route) -> None:
        path = route.request.url.removeprefix(ORIGIN)
        if path not in files:
            route.fulfill(status=404, body=b"")
            return
        body, content_type = files[path]
        route.fulfill(status=200, body=body, content_type=content_type, headers=DOCS_SECURITY_HEADERS)

    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.route(f"{ORIGIN}/**", fulfil)
    page.goto(ORIGIN + DOCS_PATH)
    page.wait_for_selector("section.op")
    return errors


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    yield context.new_page()
    context.close()


def test_the_descriptions_markdown_is_rendered(page: Page) -> None:
    errors = serve(page, openapi_document())

    intro = page.locator("#doc > .md").first
    assert intro.locator("strong", has_text="Errors").count() == 1
    assert intro.locator("code", has_text="ErrorCode").count() == 1
    assert "**" not in page.inner_text("#doc")
    operations = sum(len(item) for item in openapi_document()["paths"].values())
    assert page.locator("section.op").count() == operations
    assert not errors


def test_nothing_in_a_description_becomes_markup_or_a_foreign_link(page: Page) -> None:
    document = copy.deepcopy(openapi_document())
    document["info"]["description"] = HOSTILE
    document["paths"]["/healthz"]["get"]["description"] = HOSTILE
    document["paths"]["/healthz"]["get"]["responses"]["200"]["description"] = HOSTILE

    errors = serve(page, document)

    text = page.inner_text("#doc")
    assert '<img src=x onerror="window.pwned=1">' in text and "<b>not bold</b>" in text
    assert page.locator("#doc img, #doc script, #doc b").count() == 0
    assert page.evaluate("window.pwned") is None
    hrefs = set(page.eval_on_selector_all("#doc .md a", "links => links.map(a => a.getAttribute('href'))"))
    assert hrefs == {"https://example.org/a", "/healthz", "#schema-ErrorCode"}
    assert page.locator("#doc .md strong", has_text="Bold").count() == 3
    assert page.locator("#doc .md li em", has_text="item").count() == 3
    assert not errors
