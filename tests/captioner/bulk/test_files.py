"""Reading one image file: bounded, and only a regular file (a FIFO or a device would never end)."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from captioner.bulk.files import ImageFile, read_image
from captioner.bulk.results import Result
from tests.support.waiting import wait_until


def test_a_regular_file_is_read_with_its_content_type(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(b"png bytes")

    assert read_image(path, max_bytes=100) == ImageFile(str(path), b"png bytes", "image/png")


def test_a_fifo_fails_at_once_instead_of_blocking_the_run(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    outcome: list[ImageFile | Result] = []
    reader = threading.Thread(target=lambda: outcome.append(read_image(fifo, max_bytes=100)), daemon=True)
    reader.start()
    try:
        wait_until(lambda: outcome, timeout_s=10, message="reading a FIFO blocked")
    finally:
        _release_a_blocked_reader(fifo)
        reader.join(10)

    assert outcome == [Result.failed(str(fifo), error="unreadable", message="not a regular file")]


def test_a_device_is_not_read(tmp_path: Path) -> None:
    result = read_image(Path("/dev/zero"), max_bytes=100)

    assert isinstance(result, Result) and result.message == "not a regular file"


def _release_a_blocked_reader(fifo: Path) -> None:
    """Code that blocks in open() on the FIFO gets EOF once a writer opens and closes it."""
    with contextlib.suppress(OSError):  # no reader waits on it: nothing to release
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
