"""The demo page in headless Chromium against a real API, broker and worker: a picture gets its caption,
the recent list keeps it, a bad file gets a plain message, and the page asks nothing of other origins."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from tests.conftest import StartApi, StartWorker
from tests.support.images import make_image_bytes, reference_captioner

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREDICT = "/api/v1/predictions"
CAPTION_WAIT_MS = 60_000  # the first caption includes the worker's first batch


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    yield context.new_page()
    context.close()


@dataclass
class PageWatch:
    """Every URL the page requested, and every script error or console error it showed."""

    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)


def watch(page: Page) -> PageWatch:
    seen = PageWatch()
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    page.on("console", seen.on_console)
    return seen


def test_a_picture_gets_its_caption_and_a_bad_file_a_plain_message(
    start_worker: StartWorker,
    start_api: StartApi,
    tiny_model_dir: Path,
    page: Page,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    start_worker()
    api = start_api()
    picture = tmp_path / "picture.png"
    picture.write_bytes(make_image_bytes("PNG", seed=7))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"these bytes are no picture at all")
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list")
    seen = watch(page)
    file_input = page.get_by_label("Choose an image")

    opened = page.goto(api.url + "/")
    assert opened is not None and opened.ok, opened and opened.status
    file_input.set_input_files(picture)

    title = reference_captioner(tiny_model_dir).caption(picture.read_bytes())
    assert title
    expect(page.locator("#caption")).to_have_text(title, timeout=CAPTION_WAIT_MS)
    expect(page.locator("#timing")).to_contain_text(" ms")
    expect(page.get_by_role("img", name="Preview of picture.png")).to_be_visible()
    recent = page.locator("#recent li")
    expect(recent).to_have_count(1)
    expect(recent.first).to_contain_text(title)
    page.screenshot(path=tmp_path / "demo-captioned.png", full_page=True)

    # With a key entered, the upload carries it. Bytes that claim to be a PNG get the server's own message.
    page.get_by_text("API key", exact=True).click()
    page.get_by_label("API key, if this server asks for one").fill("demo-key")
    with page.expect_request(lambda request: request.url.endswith(PREDICT)) as sent:
        file_input.set_input_files(broken)
    assert sent.value.headers["authorization"] == "Bearer demo-key"
    server_says = requests.post(
        api.url + PREDICT, data=broken.read_bytes(), headers={"Content-Type": "image/png"}, timeout=30
    ).json()["error"]["message"]
    expect(page.get_by_role("alert")).to_contain_text(f"Could not caption “broken.png”: {server_says}")
    expect(page.locator("#caption")).to_be_empty()

    # A file the browser knows is text is refused before it is sent.
    file_input.set_input_files(notes)
    expect(page.get_by_role("alert")).to_contain_text("“notes.txt” is not an image")
    expect(recent).to_have_count(1)
    screenshot = tmp_path / "demo-page.png"
    page.screenshot(path=screenshot, full_page=True)

    assert all(url.startswith((api.url + "/", "blob:", "data:")) for url in seen.requests), seen.requests
    assert sum(url.endswith(PREDICT) for url in seen.requests) == 2, seen.requests
    # The broken PNG's 422 is logged by Chromium as a failed resource; anything else is a problem.
    assert [text for text in seen.errors if "422" not in text] == [], seen.errors
    with capsys.disabled():
        print(f"\ndemo page screenshots: {screenshot} and {tmp_path / 'demo-captioned.png'}")
