"""The demo page's HTTP surface: its files, their content types, cache headers and Content Security Policy.
What the page does in a browser is tests/producer_api/test_demo_page.py."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from tests.producer_api.conftest import ApiUnderTest, Response, StartApi, assert_plain_error


class PageLinks(HTMLParser):
    """What a page loads (src/href) and what would run or style inline."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        self.links += [value for name, value in attrs if name in ("src", "href") and value]
        if tag == "script" and "src" not in names:
            self.inline.append("an inline <script>")
        if tag == "style" or "style" in names:
            self.inline.append(f"inline style on <{tag}>")
        self.inline += [f"{name} handler on <{tag}>" for name in names if name.startswith("on")]


async def get(api: ApiUnderTest, path: str, **headers: str) -> Response:
    async with api.client.get(path, headers=headers) as response:
        headers = {name.lower(): value for name, value in response.headers.items()}
        return Response(response.status, headers, await response.read())


def page_links(html: bytes) -> PageLinks:
    parser = PageLinks()
    parser.feed(html.decode())
    return parser


def assert_locked_down(response: Response, content_type: str) -> None:
    assert response.status == 200, response
    assert response.headers["content-type"] == f"{content_type}; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["etag"].startswith('"')


async def test_the_page_and_its_assets_come_with_their_types_and_policy(serve_api: StartApi) -> None:
    api = await serve_api()

    page = await get(api, "/")
    assets = [link for link in page_links(page.body).links if not link.startswith("data:")]

    assert_locked_down(page, "text/html")
    assert sorted(assets) == ["/static/demo.css", "/static/demo.js"]
    assert_locked_down(await get(api, "/static/demo.css"), "text/css")
    assert_locked_down(await get(api, "/static/demo.js"), "text/javascript")
    for path in ("/static/", "/static/index.html", "/index.html", "/static/../app.py"):
        assert_plain_error(await get(api, path), 404)  # only the page's own files are served


async def test_the_page_runs_nothing_inline_and_names_no_other_origin(serve_api: StartApi) -> None:
    api = await serve_api()

    html = await get(api, "/")
    script = (await get(api, "/static/demo.js")).body.decode()

    assert html.status == 200, html
    page = page_links(html.body)
    assert page.inline == []
    assert all(link.startswith(("/", "data:")) and not link.startswith("//") for link in page.links)
    assert "http:" not in script and "https:" not in script and "innerHTML" not in script


@pytest.mark.parametrize("path", ["/", "/static/demo.js", "/static/demo.css"])
async def test_an_unchanged_file_is_answered_304(serve_api: StartApi, path: str) -> None:
    api = await serve_api()
    etag = (await get(api, path)).headers["etag"]

    again = await get(api, path, **{"If-None-Match": etag})

    assert again.status == 304
    assert again.body == b""
    assert again.headers["etag"] == etag
